import math

import pytest

from hero_gym.records import SCHEMA_VERSION, Episode, Turn, load_jsonl, save_jsonl


def make_episode(i=0):
    turns = [
        Turn(index=0, action_text='<tool_call>{"name": "lookup"}</tool_call>', parsed_action={"name": "lookup", "arguments": {"key": "é✓"}, "id": None},
             observation="865", reward=0.0, info={"nested": {"a": [1, 2.5, None]}},
             context_token_ids=[1, 2, 3], action_token_ids=[7, 8, 9], action_logprobs=[-0.1, -1e-9, -math.pi],
             timings={"generate_s": 0.25}),
        Turn(index=1, action_text="bye", parsed_action={"message": "bye"}, observation="ok", observation_role="user",
             reward=1.0 / 3.0, terminated=True),
    ]
    return Episode(env_id="hero_gym/Lookup-v0", seed=i, task_id="lookup-1", system_prompt="sys",
                   initial_observation="What?", tools=[{"type": "function", "function": {"name": "lookup"}}],
                   turns=turns, total_reward=1.0 / 3.0, success=False, metadata={"k": "v"})


def test_jsonl_round_trip_is_lossless(tmp_path):
    eps = [make_episode(i) for i in range(3)]
    path = tmp_path / "eps.jsonl"
    save_jsonl(eps[:2], path)
    save_jsonl(eps[2:], path, append=True)
    back = load_jsonl(path)
    assert back == eps
    assert back[0].turns[0].action_logprobs[2] == -math.pi
    assert back[0].turns[0].tool_call.arguments == {"key": "é✓"}
    assert back[0].turns[1].tool_call is None
    assert back[0].schema_version == SCHEMA_VERSION


def test_episode_status_properties():
    ep = make_episode()
    assert ep.terminated and not ep.truncated and ep.num_turns == 2


def test_torn_last_line_is_skipped_but_corruption_elsewhere_fails(tmp_path):
    path = tmp_path / "eps.jsonl"
    save_jsonl([make_episode(0), make_episode(1)], path)
    with path.open("a") as f:
        f.write('{"schema_version": 1, "env_id": "x", "initial_ob')
    assert len(load_jsonl(path)) == 2
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", lines[1]]) + "\n")
    with pytest.raises(ValueError):
        load_jsonl(path)


def test_wrong_schema_version_is_refused(tmp_path):
    path = tmp_path / "eps.jsonl"
    path.write_text(make_episode().model_copy(update={"schema_version": 99}).model_dump_json() + "\n")
    with pytest.raises(ValueError, match="schema_version 99"):
        load_jsonl(path)
