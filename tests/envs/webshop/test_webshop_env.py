"""hero_gym/WebShop-v0: pages, actions, errors, observation modes, determinism, agents."""

import re

import pytest

import hero_gym
from hero_gym.envs.webshop.env import WebShopEnv
from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent, evaluate, run_episode
from hero_gym.tools import ToolCall


@pytest.fixture
def env():
    e = WebShopEnv(split="test")
    yield e
    e.close()


def goal_with_options(env):
    for i, gi in enumerate(env.catalog.splits["test"]):
        g = env.catalog.goals[gi]
        if g.options and g.asin in env.catalog.index.search(g.instruction)[:10]:
            return i, g
    raise AssertionError("no suitable goal")


def test_search_page_and_tools(env):
    obs, info = env.reset(seed=0)
    assert obs.startswith("WebShop [SEP] Instruction: [SEP] ") and obs.endswith(" [SEP] Search")
    assert info["task"]["instruction"] in obs
    assert info["available_actions"] == {"has_search_bar": True, "clickables": []}
    assert [t["function"]["name"] for t in info["tools"]] == ["search"]
    assert env.default_parser == "bracket" and env.allow_text_messages is False and env.max_turns == 15
    assert info["system_prompt"] and "search[" in info["system_prompt"]
    assert info["data"] == {"source": "generated", "num_products": 1000, "path": None, "catalog_seed": 0,
                            "human_goals": False}


def test_full_flow_with_pages_and_reward(env):
    i, g = goal_with_options(env)
    env.reset(options={"task_index": i})
    obs, r, term, trunc, info = env.step(f"search[{g.instruction}]")
    assert info["page"] == "results" and not term
    assert "Page 1 (Total results: 50)" in obs and "Next >" in obs and "< Prev" not in obs
    clickables = info["available_actions"]["clickables"]
    assert clickables[:2] == ["back to search", "next >"] and len(clickables) == 12
    assert {t["function"]["name"] for t in info["tools"]} == {"click"}
    obs, *_, info = env.step("click[next >]")
    assert "Page 2 (Total results: 50)" in obs and "< prev" in info["available_actions"]["clickables"]
    obs, *_, info = env.step("click[< prev]")
    assert "Page 1 " in obs
    # ASINs are shown upper-case and clicked lower-case; the click is case-insensitive
    obs, *_, info = env.step(f"click[{g.asin}]")
    assert info["page"] == "item" and f"Price: " in obs and obs.endswith("Buy Now")
    p = env.catalog.product(g.asin)
    assert p.title in obs
    for sub, text in (("description", p.description), ("features", p.bullets[0])):
        obs, *_, info = env.step(f"click[{sub}]")
        assert info["page"] == "sub" and text in obs
        obs, *_, info = env.step("click[< prev]")
        assert info["page"] == "item"
    for _, v in g.options:
        obs, *_, info = env.step(f"click[{v}]")
    rich_env = env  # selected values stay clickable
    assert all(v in info["available_actions"]["clickables"] for _, v in g.options)
    obs, r, term, trunc, info = env.step("click[buy now]")
    assert term and not trunc and r == 1.0 and info["success"] and info["score"] == 100.0
    assert info["reward_info"]["goal_asin"] == g.asin and obs.startswith("Thank you for shopping with us!")
    with pytest.raises(RuntimeError):
        rich_env.step("click[back to search]")


def test_back_to_search_and_partial_reward(env):
    i, g = goal_with_options(env)
    env.reset(options={"task_index": i})
    env.step(f"search[{g.instruction}]")
    obs, *_, info = env.step("click[back to search]")
    assert info["page"] == "search" and info["available_actions"]["has_search_bar"]
    env.step(f"search[{g.instruction}]")
    env.step(f"click[{g.asin.lower()}]")
    obs, r, term, trunc, info = env.step("click[buy now]")   # no options chosen
    n = len(g.attributes) + len(g.options) + 1
    assert term and r == pytest.approx((n - len(g.options)) / n) and not info["success"]


def test_invalid_actions_keep_the_page(env):
    obs0, info = env.reset(seed=3)
    cases = ["click[buy now]", "search[]", "search[   ]", "buy[it]", "hello there", "", "search[a] click[b]",
             "click[", "<tool_call>{bad json</tool_call>", "search[" + "x" * 5000 + "]"]
    for k, bad in enumerate(cases):
        obs, r, term, trunc, info = env.step(bad)
        if bad.startswith("search[" + "x"):
            assert info["action_error"] is None and info["page"] == "results"
            env.step("click[back to search]")
            continue
        assert obs.startswith("Error:") and info["action_error"]["kind"] in {
            "parse", "no_action", "unknown_tool", "invalid_arguments", "too_many_calls"}, (bad, info)
        assert r == 0.0 and not term
    assert env.turn == len(cases) + 1
    env.reset(seed=3)
    env.step("search[shampoo]")
    obs, r, term, trunc, info = env.step("click[not a button]")
    assert obs.startswith("Error: There is no button 'not a button'")
    assert info["action_error"]["kind"] == "invalid_arguments" and info["page"] == "results"
    obs, *_, info = env.step(ToolCall(name="click", arguments={"target": 42}))
    assert info["action_error"]["kind"] == "invalid_arguments"
    # the page did not change: back to search still works from the results page
    assert env.step("click[Back To Search]")[4]["page"] == "search"


def test_turn_budget_truncates_without_reward():
    env = WebShopEnv(split="test", max_turns=3)
    env.reset(seed=1)
    out = [env.step("search[shampoo]"), env.step("click[next >]"), env.step("click[next >]")]
    assert [o[3] for o in out] == [False, False, True] and out[-1][1] == 0.0 and not out[-1][2]


def test_observation_modes():
    text, rich, html_env = (WebShopEnv(split="test", observation_mode=m) for m in ("text", "text_rich", "html"))
    for e in (text, rich, html_env):
        e.reset(options={"task_index": 5})
        e.step("search[red lipstick]")
    t_obs = text.step("click[next >]")[0]
    r_obs = rich.step("click[next >]")[0]
    h_obs = html_env.step("click[next >]")[0]
    assert "[button] Back to Search [button_]" in r_obs and "[button] < Prev [button_]" in r_obs
    assert "[SEP]" not in r_obs and len(r_obs.splitlines()) == len(t_obs.split(" [SEP] "))
    assert h_obs.startswith("<!DOCTYPE html>") and 'class="seg btn"' in h_obs and "<script" not in h_obs
    asin = re.findall(r"B0[0-9A-Z]{8}", t_obs)[0]
    item = rich.step(f"click[{asin.lower()}]")[0]
    p = rich.catalog.product(asin)
    if p.options:
        v = p.options[0][1][0]
        item = rich.step(f"click[{v}]")[0]
        assert f"[clicked button] {v} [clicked button_]" in item
    with pytest.raises(ValueError):
        WebShopEnv(observation_mode="pixels")


def test_same_seed_same_episode():
    def play(seed):
        env = WebShopEnv(split="train")
        obs, info = env.reset(seed=seed)
        agent = RandomAgent(seed)
        agent.reset(info)
        trace = [obs]
        done = False
        while not done:
            obs, r, term, trunc, info = env.step(agent.act(obs, info))
            trace.append((obs, r))
            done = term or trunc
        return trace
    assert play(11) == play(11)
    assert play(11)[0] != play(12)[0]


def test_check_env_and_registry():
    env = hero_gym.make("hero_gym/WebShop-v0")
    hero_gym.check_env(env)
    e2 = hero_gym.make("hero_gym/WebShop-v0", observation_mode="text_rich", split="test")
    assert e2.unwrapped.split == "test"


def test_instances_share_catalog_and_index():
    a, b = WebShopEnv(), WebShopEnv(observation_mode="html")
    assert a.catalog is b.catalog and a.catalog.index is b.catalog.index


def test_expert_and_random_agent_scores():
    env = WebShopEnv(split="test")
    expert = evaluate(env, ExpertAgent(), split="test")
    rand = evaluate(env, RandomAgent(0), split="test")
    assert expert["episodes"] == 100 and expert["success_rate"] >= 0.9
    assert rand["mean_reward"] < 0.3 and rand["success_rate"] < 0.1
    assert expert["score"] - rand["score"] > 50
    out = run_episode(env, ExpertAgent(), options={"task_index": 0})
    assert out["actions"][0].startswith("search[") and out["actions"][-1] == "click[buy now]"


def test_malformed_actions_never_crash():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    env = WebShopEnv(split="test", max_turns=1000)
    env.reset(seed=0)
    env.step("search[shampoo]")
    tool_calls = st.builds(ToolCall, name=st.sampled_from(["search", "click", "buy", ""]),
                           arguments=st.dictionaries(st.sampled_from(["query", "target", "x"]),
                                                     st.one_of(st.text(max_size=30), st.integers(), st.none()),
                                                     max_size=2))
    actions = st.one_of(st.text(max_size=60), tool_calls,
                        st.text(max_size=30).map(lambda s: f"click[{s}]"),
                        st.text(max_size=30).map(lambda s: f"search[{s}]"))

    @settings(max_examples=300, deadline=None)
    @given(actions)
    def check(action):
        if env._done:
            env.reset(seed=0)
        obs, r, term, trunc, info = env.step(action)
        assert isinstance(obs, str) and obs
        assert "available_actions" in info and "page" in info
        if info["action_error"] is not None:
            assert obs.startswith("Error:") and r == 0.0 and not term

    check()
