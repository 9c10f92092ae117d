"""TRL's real ``GRPOTrainer`` with :func:`hero_gym.adapters.trl.environment_factory` (tiny model, CPU)."""

from __future__ import annotations

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")
pytest.importorskip("datasets")

from transformers.utils import get_json_schema  # noqa: E402

import hero_gym  # noqa: E402
from hero_gym.adapters.trl import environment_factory, env_reward, schema_to_annotation, task_dataset  # noqa: E402
from hero_gym.agents.models import tiny_model  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")



def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                max_completion_length=32, max_steps=1, logging_steps=1, report_to="none", save_strategy="no",
                learning_rate=1e-4, temperature=0.3, seed=0, bf16=False, disable_tqdm=True,
                max_tool_calling_iterations=2, shuffle_dataset=False)
    base.update(kw)
    return trl.GRPOConfig(**base)


def _teach(trainer, messages, completion, steps=80):
    """Make the tiny model emit ``completion`` after ``messages`` rendered exactly as TRL renders them (with the
    env's tools), so that the rollouts make real tool calls the env scores."""
    tok = trainer.processing_class
    p_ids = tok.apply_chat_template(messages, tools=trainer.tools, chat_template=trainer.chat_template,
                                    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + c_ids])
    targets = torch.tensor(c_ids)
    model = trainer.model
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        # logits only where the completion is predicted (the full-vocabulary head dominates the cost)
        hidden = model.model(input_ids=ids).last_hidden_state[0, len(p_ids) - 1:-1]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"the tiny model did not learn the completion (loss {loss.item():.3f})"
    return len(c_ids)


def test_grpo_step_on_lookup_logs_the_env_rewards(tool_tokenizer, tmp_path):
    factory = environment_factory("hero_gym/Lookup-v0")
    data = task_dataset("hero_gym/Lookup-v0", task_indices=[0, 1])
    trainer = trl.GRPOTrainer(model=tiny_model(tool_tokenizer, seed=0), processing_class=tool_tokenizer,
                              args=_config(tmp_path), train_dataset=data, environment_factory=factory)
    assert {t.__name__ for t in trainer.tools} == {"lookup", "answer", "respond"}
    probe = factory()
    first = probe.reset(**data[0])
    code = probe.env.unwrapped.table[probe.env.unwrapped._item]
    call = json.dumps({"name": "answer", "arguments": {"code": code}})
    n_tokens = _teach(trainer, [*data[0]["prompt"][:-1], {"role": "user", "content": first}],
                      f"<tool_call>\n{call}\n</tool_call><|im_end|>")
    assert n_tokens <= trainer.args.max_completion_length
    trainer.train()
    assert trainer.state.global_step == 1

    envs = trainer.environments
    assert len(envs) == 4 and all(type(e) is factory for e in envs)
    env_rewards = [e.reward for e in envs]
    logged = trainer._logs["rewards"][factory.__name__]
    assert list(logged) == pytest.approx(env_rewards)
    # the task-0 rollouts answered the taught code (reward 1), the task-1 rollouts the same code (reward 0)
    assert sorted(env_rewards) == [0.0, 0.0, 1.0, 1.0]
    for e in envs:
        last = e.infos[-1]
        assert e.done and last["parsed_action"]["name"] == "answer"
        table, item = e.env.unwrapped.table, e.env.unwrapped._item
        assert e.reward == float(last["parsed_action"]["arguments"]["code"] == table[item])
    row = next(r for r in trainer.state.log_history if f"rewards/{factory.__name__}/mean" in r)
    assert row[f"rewards/{factory.__name__}/mean"] == pytest.approx(sum(env_rewards) / 4)
    assert row["reward"] == pytest.approx(sum(env_rewards) / 4)


def test_tau_tools_in_trl_schema_have_the_right_types(tool_tokenizer, tmp_path):
    factory = environment_factory("hero_gym/TauRetail-v0", data="generated")
    data = task_dataset("hero_gym/TauRetail-v0", task_indices=[0, 1], data="generated")
    trainer = trl.GRPOTrainer(model=tiny_model(tool_tokenizer, seed=1), processing_class=tool_tokenizer,
                              args=_config(tmp_path), train_dataset=data, environment_factory=factory)
    schemas = {s["function"]["name"]: s["function"] for s in (get_json_schema(t) for t in trainer.tools)}
    env = hero_gym.make("hero_gym/TauRetail-v0", data="generated")
    env.reset(options={"task_index": 0})
    specs = env.unwrapped.tools()
    assert set(schemas) == {s.name for s in specs} | {"respond"}
    checked = 0
    for spec in specs:
        got = schemas[spec.name]["parameters"]
        want = spec.parameters
        assert set(got.get("required", [])) == set(want.get("required", []))
        for pname, pschema in want.get("properties", {}).items():
            g = got["properties"][pname]
            assert g["type"] == pschema["type"], (spec.name, pname)
            if "enum" in pschema:
                assert g["enum"] == pschema["enum"]
            if pschema["type"] == "array":
                assert g["items"]["type"] == pschema["items"]["type"]
            checked += 1
    assert checked > 20
    # the schema reaches the rendered prompt the model sees
    text = tool_tokenizer.apply_chat_template(data[0]["prompt"], tools=trainer.tools, tokenize=False)
    assert '"name": "exchange_delivered_order_items"' in text and '"item_ids"' in text
    assert schemas["exchange_delivered_order_items"]["parameters"]["properties"]["item_ids"] == \
        {"type": "array", "items": {"type": "string"}, "description": specs[[s.name for s in specs].index(
            "exchange_delivered_order_items")].parameters["properties"]["item_ids"]["description"]}


def test_environment_instances_step_the_env(tool_tokenizer):
    factory = environment_factory("hero_gym/TauRetail-v0", data="generated")
    a, b = factory(), factory()
    obs = a.reset(task_index=3, seed=0)
    ref = hero_gym.make("hero_gym/TauRetail-v0", data="generated")
    ref_obs, _ = ref.reset(seed=0, options={"task_index": 3})
    assert obs == ref_obs and b.env is not a.env
    out = a.find_user_id_by_email(email="nobody@example.com")
    assert out == ref.step(hero_gym.ToolCall(name="find_user_id_by_email",
                                             arguments={"email": "nobody@example.com"}))[0]
    bad = a.get_order_details(order_id=5)            # a wrong type is the env's error, one turn used
    assert bad.startswith("Error") and a.env.unwrapped.turn == 2
    reply = a.respond(content="Hello, how can I help?")
    assert reply == ref.step(hero_gym.TextMessage("Hello, how can I help?"))[0]
    a.transfer_to_human_agents(summary="bye")
    assert a.done and a.get_reward() == a.reward == env_reward([a])[0]
    with pytest.raises(RuntimeError, match="episode has ended"):
        a.think(thought="more")


def test_schema_to_annotation_and_errors():
    from typing import Any, Literal, Union

    assert schema_to_annotation({"type": "string", "enum": ["a", "b"]}) == Literal["a", "b"]
    assert schema_to_annotation({"type": "array", "items": {"type": "integer"}}) == list[int]
    assert schema_to_annotation({"type": ["string", "null"]}) == Union[str, None]
    assert schema_to_annotation({"anyOf": [{"type": "number"}, {"type": "string"}]}) == Union[float, str]
    assert schema_to_annotation({}) is Any
    bad = hero_gym.ToolSpec(name="reset", parameters={"type": "object", "properties": {}})
    with pytest.raises(ValueError, match="clashes"):
        environment_factory("hero_gym/Lookup-v0", tools=[bad])
    dash = hero_gym.ToolSpec(name="go", parameters={"type": "object", "properties": {"item-id": {"type": "string"}}})
    with pytest.raises(ValueError, match="not a Python identifier"):
        environment_factory("hero_gym/Lookup-v0", tools=[dash])
    with pytest.raises(ValueError, match="clashes with a tool"):
        environment_factory("hero_gym/Lookup-v0", message_tool="lookup")
    no_reward = environment_factory("hero_gym/Lookup-v0", owns_reward=False)
    assert not callable(getattr(no_reward, "get_reward"))
    with pytest.raises(ValueError, match="out of range"):
        task_dataset("hero_gym/Lookup-v0", task_indices=[99])
    assert not math.isnan(len(task_dataset("hero_gym/Lookup-v0", repeat=2)))


def test_factory_over_the_env_server_matches_in_process():
    pytest.importorskip("fastapi")
    from hero_gym.serve import start_server

    with start_server("hero_gym/TauRetail-v0", {"data": "generated"}) as handle:
        served = environment_factory("hero_gym/TauRetail-v0", url=handle.url)
        local = environment_factory("hero_gym/TauRetail-v0", data="generated")
        tools = lambda cls: sorted((json.dumps(get_json_schema(getattr(cls(), n)), sort_keys=True)  # noqa: E731
                                    for n in dir(cls) if not n.startswith("_") and n not in ("reset", "get_reward")
                                    and callable(getattr(cls, n))))
        assert tools(served) == tools(local)
        a, b = served(), local()
        assert a.reset(task_index=2, seed=0) == b.reset(task_index=2, seed=0)
        assert a.respond(content="Hi! What can I do?") == b.respond(content="Hi! What can I do?")
        assert a.get_order_details(order_id="#W0000000") == b.get_order_details(order_id="#W0000000")
        assert a.transfer_to_human_agents(summary="x") == b.transfer_to_human_agents(summary="x")
        assert a.done and b.done and a.get_reward() == b.get_reward()
        data = task_dataset("hero_gym/TauRetail-v0", url=handle.url, task_indices=[0, 1])
        assert data["prompt"] == task_dataset("hero_gym/TauRetail-v0", task_indices=[0, 1], data="generated")["prompt"]
        with pytest.raises(ValueError, match="serves 'hero_gym/TauRetail-v0'"):
            environment_factory("hero_gym/Lookup-v0", url=handle.url)
        with pytest.raises(ValueError, match="fixed by the server"):
            environment_factory("hero_gym/TauRetail-v0", url=handle.url, data="generated")
