"""hero_gym/WebShopBrowser-v0 in real headless Chromium: same observations and rewards as the text
mode for the same action sequences; XSS; a killed or hung browser (or chromedriver) makes the step
fail within the time-outs, and the env carries on in a new browser on the same page.

One browser and one server serve all sequences (module fixture). Skipped only when Chromium or
chromedriver is not installed (``apt-get install chromium chromium-driver``).
"""

import os
import signal
import time

import pytest

import hero_gym
from hero_gym.envs.webshop.browser import BrowserUnavailable, find_browser
from hero_gym.envs.webshop.env import WebShopEnv
from hero_gym.envs.webshop.expert import ExpertAgent, RandomAgent

try:
    find_browser()
    _MISSING = None
except BrowserUnavailable as e:
    _MISSING = str(e)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(_MISSING is not None, reason=f"Chromium/chromedriver not installed: {_MISSING}")]


@pytest.fixture(scope="module")
def envs():
    from hero_gym.envs.webshop.browser import WebShopBrowserEnv

    browser = WebShopBrowserEnv(split="test")
    text = WebShopEnv(split="test")
    yield browser, text
    browser.close()
    text.close()
    assert browser.open_resources() == []


def _key(out):
    obs, r, term, trunc, info = out
    return (obs, r, term, trunc, info["available_actions"], info["action_error"], info.get("page"),
            info.get("success"))


def _compare(browser, text, task_index, actions=None, agent=None, mode="text"):
    """Run the same actions in both envs; return the number of steps compared."""
    browser.observation_mode = text.observation_mode = mode
    ob, ib = browser.reset(options={"task_index": task_index})
    ot, it = text.reset(options={"task_index": task_index})
    assert ob == ot and ib["available_actions"] == it["available_actions"]
    assert ib["tools"] == it["tools"]
    if agent is not None:
        agent.reset(it)
    steps, done, i = 0, False, 0
    while not done:
        if agent is not None:
            action = agent.act(ot, it)
        elif i < len(actions):
            action = actions[i]
        else:
            break
        i += 1
        out_b, out_t = browser.step(action), text.step(action)
        assert _key(out_b) == _key(out_t), (task_index, action)
        assert out_b[4]["tools"] == out_t[4]["tools"]
        if out_t[2]:
            assert out_b[4]["reward_info"] == out_t[4]["reward_info"]
        ot, it = out_t[0], out_t[4]
        done = out_t[2] or out_t[3]
        steps += 1
    return steps


HANDWRITTEN = [
    ["search[shampoo]", "click[next >]", "click[next >]", "click[< prev]", "click[back to search]",
     "search[red lipstick]", "click[back to search]"],
    ["click[buy now]", "search[]", "hello", "search[coffee] search[tea]", "search[organic coffee beans]",
     "click[nope]", "click[Next >]"],
    ["search[<script>alert(1)</script>]", "click[back to search]", "search[\"quoted\" & <b>bold</b>]"],
    ["search[wireless headphones]", "click[__first__]", "click[description]", "click[< prev]",
     "click[features]", "click[back to search]"],
    ["search[office chair modern]", "click[__first__]", "click[reviews]", "click[< prev]", "click[< prev]",
     "click[__first__]", "click[buy now]"],
    ["search[sneakers men size large]", "click[__first__]", "click[__option__]", "click[__option__]",
     "click[buy now]"],
]


def _resolve(text, actions, task_index):
    """Replace __first__ / __option__ with concrete buttons by dry-running the text env."""
    text.observation_mode = "text"
    text.reset(options={"task_index": task_index})
    out_actions = []
    info = {"available_actions": {"clickables": []}}
    for a in actions:
        cl = info["available_actions"]["clickables"]
        if a == "click[__first__]":
            a = f"click[{[c for c in cl if c not in ('back to search', '< prev', 'next >')][0]}]"
        elif a == "click[__option__]":
            opts = [c for c in cl if c not in ("back to search", "< prev", "description", "features", "reviews",
                                               "buy now")]
            a = f"click[{opts[-1] if opts else 'description'}]"
        out_actions.append(a)
        *_, term, trunc, info = text.step(a)
        if term or trunc:
            break
    return out_actions


def test_browser_matches_text_mode_on_many_sequences(envs):
    browser, text = envs
    sequences = 0
    steps = 0
    for k in range(8):                     # expert episodes (purchases with reward)
        steps += _compare(browser, text, k, agent=ExpertAgent())
        sequences += 1
    for k in range(8):                     # random agents (wrong products, partial rewards, budget)
        steps += _compare(browser, text, 20 + k, agent=RandomAgent(k))
        sequences += 1
    for k, actions in enumerate(HANDWRITTEN):
        steps += _compare(browser, text, 40 + k, actions=_resolve(text, actions, 40 + k))
        sequences += 1
    for k in range(2):                     # text_rich mode too
        steps += _compare(browser, text, 60 + k, agent=ExpertAgent(), mode="text_rich")
        sequences += 1
    assert sequences >= 20 and steps >= 100


def test_browser_expert_gets_reward_one(envs):
    browser, _ = envs
    browser.observation_mode = "text"
    agent = ExpertAgent()
    obs, info = browser.reset(options={"task_index": 0})
    agent.reset(info)
    done = False
    while not done:
        obs, r, term, trunc, info = browser.step(agent.act(obs, info))
        done = term or trunc
    assert term and r == 1.0 and info["success"] and info["reward_info"]["reward"] == 1.0


def test_xss_search_in_the_browser(envs):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    browser, _ = envs
    browser.observation_mode = "text"
    browser.reset(options={"task_index": 1})
    payload = "<script>alert(1)</script>"
    obs, *_ , info = browser.step(f"search[{payload}]")
    assert info["action_error"] is None and info["page"] == "results"
    driver = browser._driver
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text
    assert driver.find_element(By.CLASS_NAME, "query").text == f"Results for: {payload}"
    assert not driver.find_elements(By.TAG_NAME, "script")


def _alive(pids):
    import psutil

    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            pass
    return out


def test_killed_browser_is_restarted_on_the_same_page_and_the_step_fails(envs):
    browser, text = envs
    browser.observation_mode = text.observation_mode = "text"
    browser.reset(options={"task_index": 2})
    text.reset(options={"task_index": 2})
    before = browser.step("search[shampoo]")
    assert _key(before) == _key(text.step("search[shampoo]"))
    pids = browser.browser_pids()
    assert len(pids) >= 2
    restarts = browser.browser_restarts
    for pid in pids[1:]:                   # kill the browser processes (not chromedriver) mid-episode
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t = time.monotonic()
    obs, r, term, trunc, info = browser.step("click[next >]")
    assert time.monotonic() - t < 60
    assert obs.startswith("Error: the browser failed") and "restarted on the same page" in obs
    assert not term and r == 0.0 and info["browser_error"]
    assert info["action_error"]["kind"] == "browser" and info["page"] == "results"
    assert info["available_actions"] == before[4]["available_actions"]   # the page the agent was on
    # one restart (a second only when a fresh browser misses its time-out on a busy CPU)
    assert restarts + 1 <= browser.browser_restarts <= restarts + 2
    restarts = browser.browser_restarts
    assert _alive(pids) == [] and set(browser.browser_pids()).isdisjoint(pids)
    assert browser.open_resources() == ["chromium", "webshop-server"]
    # the retried action works and agrees with the text env; later episodes need no new restart
    assert _key(browser.step("click[next >]")) == _key(text.step("click[next >]"))
    assert _compare(browser, text, 3, agent=ExpertAgent()) >= 3
    assert browser.browser_restarts == restarts


def test_hung_browser_times_out_and_is_replaced():
    """A browser (and then chromedriver) that stops answering (SIGSTOP): the step returns within the
    command time-outs, the frozen processes are killed, the episode goes on in a new browser."""
    from hero_gym.envs.webshop.browser import WebShopBrowserEnv

    env = WebShopBrowserEnv(split="test", num_products=100, timeout=3)
    try:
        env.reset(options={"task_index": 0})
        env.step("search[shampoo]")
        for frozen in ("browser", "chromedriver"):
            pids = env.browser_pids()
            for pid in (pids[1:] if frozen == "browser" else pids):
                os.kill(pid, signal.SIGSTOP)
            t = time.monotonic()
            obs, r, term, trunc, info = env.step("click[back to search]")
            # command time-out + up to two browser starts
            assert time.monotonic() - t < 3 + 10 + 2 * 30, frozen
            assert not term and info["action_error"]["kind"] == "browser", (frozen, obs)
            assert "Timeout" in info["browser_error"] or "timed out" in info["browser_error"], info["browser_error"]
            assert _alive(pids) == [], frozen
        obs, *_, info = env.step("click[back to search]")
        assert info["action_error"] is None and info["page"] == "search"
    finally:
        env.close()
    assert env.open_resources() == [] and env.browser_pids() == []


def test_browser_that_cannot_restart_ends_the_episode_cleanly():
    from hero_gym.envs.webshop.browser import BrowserUnavailable, WebShopBrowserEnv

    env = WebShopBrowserEnv(split="test", num_products=100, timeout=5)
    try:
        env.reset(options={"task_index": 0})
        pids = env.browser_pids()
        env.chromium_path = "/nonexistent/chromium"      # the restart will fail
        os.kill(pids[1], signal.SIGKILL)
        obs, r, term, trunc, info = env.step("search[shampoo]")
        assert term and r == 0.0 and "could not be restarted" in obs and info["browser_error"]
        assert _alive(pids) == [] and env.open_resources() == ["webshop-server"]
        with pytest.raises(BrowserUnavailable):
            env.reset(options={"task_index": 0})
    finally:
        env.close()
    assert env.open_resources() == []


def test_browser_env_passes_check_env():
    env = hero_gym.make("hero_gym/WebShopBrowser-v0", split="test")
    hero_gym.check_env(env)
    assert env.unwrapped.open_resources() == []


def test_browser_html_mode_is_the_live_page(envs):
    browser, _ = envs
    browser.observation_mode = "html"
    try:
        obs, info = browser.reset(options={"task_index": 4})
        assert 'id="search_input"' in obs and 'data-page="search"' in obs
        obs, *_, info = browser.step("search[bluetooth speaker]")
        assert 'data-page="results"' in obs and info["available_actions"]["clickables"][0] == "back to search"
    finally:
        browser.observation_mode = "text"
