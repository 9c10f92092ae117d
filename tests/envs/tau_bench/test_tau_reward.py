"""v1 reward: do-nothing counts, wrong arguments, missing outputs, strict mode, no DB mutation."""

import copy

import pytest

from _tau_common import needs_official
from hero_gym.envs.tau_bench.data import Action, Task
from hero_gym.envs.tau_bench.reward import compute_reward, gold_result, output_found
from hero_gym.envs.tau_bench.tools_airline import AIRLINE_TOOL_MAP
from hero_gym.envs.tau_bench.tools_retail import RETAIL_TOOL_MAP
from hero_gym.envs.tau_bench.common import run_tool


def _do_nothing_successes(ds, tools, split):
    db = ds.new_db()
    return [t.index for t in ds.tasks[split] if compute_reward(ds, tools, t, db, []).reward == 1.0]


@needs_official
def test_do_nothing_counts_match_the_readme(retail_ds, airline_ds):
    retail = _do_nothing_successes(retail_ds, RETAIL_TOOL_MAP, "test")
    airline = _do_nothing_successes(airline_ds, AIRLINE_TOOL_MAP, "test")
    assert len(retail) == 7 and len(retail_ds.tasks["test"]) == 115
    assert len(airline) == 19 and len(airline_ds.tasks["test"]) == 50
    # those are exactly the tasks with no required change and no required output
    for ds, tools, idx in ((retail_ds, RETAIL_TOOL_MAP, retail), (airline_ds, AIRLINE_TOOL_MAP, airline)):
        for t in ds.tasks["test"]:
            trivial = not gold_result(ds, tools, t).changes_db and not t.outputs
            assert (t.index in idx) == trivial, t.task_id


def _replay_with(ds, tools, task, actions):
    db = ds.new_db()
    for a in actions:
        if a.name != "transfer_to_human_agents":
            run_tool(tools, db, a.name, a.kwargs)
    return db


@needs_official
def test_gold_replay_scores_one_and_a_wrong_write_argument_scores_zero(retail_ds, airline_ds):
    checked = 0
    for ds, tools in ((retail_ds, RETAIL_TOOL_MAP), (airline_ds, AIRLINE_TOOL_MAP)):
        for task in ds.tasks["test"]:
            db = _replay_with(ds, tools, task, task.actions)
            assert compute_reward(ds, tools, task, db, list(task.outputs)).reward == 1.0, task.task_id
            # corrupt one argument of the last successful write -> reward 0
            gold = gold_result(ds, tools, task)
            writes = [i for i, a in enumerate(task.actions)
                      if tools[a.name].writes and a.name != "transfer_to_human_agents"]
            if not gold.changes_db or not writes:
                continue
            i = writes[-1]
            a = task.actions[i]
            kw = copy.deepcopy(a.kwargs)
            if "reason" in kw:
                kw["reason"] = "ordered by mistake" if kw["reason"] == "no longer needed" else "no longer needed"
            elif "address1" in kw:
                kw["address1"] = kw["address1"] + " X"
            elif "item_ids" in kw and "new_item_ids" not in kw:
                continue  # a return's only other argument is the payment id (may fail the same way)
            elif "passengers" in kw and "flights" not in kw:
                kw["passengers"][0]["first_name"] += "x"
            elif "total_baggages" in kw and "flights" not in kw:
                kw["total_baggages"] += 1
            elif "amount" in kw and "user_id" in kw and "flights" not in kw:
                kw["amount"] += 1
            elif "payment_id" in kw and "flights" in kw:
                kw["flights"] = kw["flights"][:-1]
            elif "new_item_ids" in kw:
                kw["new_item_ids"] = kw["new_item_ids"][:-1] + [kw["item_ids"][-1]]   # keep the last item
            else:
                continue
            if kw == a.kwargs:
                continue
            bad = list(task.actions)
            bad[i] = Action(a.name, kw)
            db = _replay_with(ds, tools, task, bad)
            info = compute_reward(ds, tools, task, db, list(task.outputs))
            if gold.observations[len([x for x in task.actions[:i] if x.name != "transfer_to_human_agents"])].startswith("Error"):
                continue
            assert info.reward == 0.0 and not info.db_match, (task.task_id, a.name)
            assert info.mismatched_records
            checked += 1
    assert checked >= 60


@needs_official
def test_missing_output_scores_zero(retail_ds):
    tasks = [t for t in retail_ds.tasks["test"] if t.outputs]
    assert len(tasks) >= 5
    for task in tasks:
        db = _replay_with(retail_ds, RETAIL_TOOL_MAP, task, task.actions)
        full = compute_reward(retail_ds, RETAIL_TOOL_MAP, task, db, ["Result: " + ", ".join(task.outputs)])
        assert full.reward == 1.0 and full.r_outputs == 1.0
        missing = compute_reward(retail_ds, RETAIL_TOOL_MAP, task, db, ["Result: " + " ".join(task.outputs[1:])])
        assert missing.reward == 0.0 and missing.db_match and missing.r_outputs == 0.0
        assert missing.outputs[task.outputs[0]] is False


def test_outputs_check_v1_and_strict():
    # v1: lower-cased substring, commas removed from the message
    assert output_found("1000", ["The total is $1,000."])
    assert output_found("10", ["You have 100 items"])            # v1 substring quirk
    assert not output_found("10", ["You have 100 items"], "strict")
    assert output_found("10", ["You have 10 items."], "strict")
    assert not output_found("10", ["It costs 10.5"], "strict")
    assert output_found("Polyester", ["Made of polyester, nice"], "strict")
    assert not output_found("cotton", ["cottonwood"], "strict")
    assert not output_found("x", [])
    with pytest.raises(ValueError):
        output_found("x", ["x"], "fuzzy")


@needs_official
def test_grading_does_not_mutate_the_episode_db_and_uses_the_cache(retail_ds):
    task = next(t for t in retail_ds.tasks["test"] if gold_result(retail_ds, RETAIL_TOOL_MAP, t).changes_db)
    db = retail_ds.new_db()
    run_tool(RETAIL_TOOL_MAP, db, "modify_user_address", {
        "user_id": task.user_id, "address1": "1 A St", "address2": "", "city": "X", "state": "TX",
        "country": "USA", "zip": "00000"})
    before = copy.deepcopy(db.touched())
    r1 = compute_reward(retail_ds, RETAIL_TOOL_MAP, task, db, [])
    r2 = compute_reward(retail_ds, RETAIL_TOOL_MAP, task, db, [])
    assert db.touched() == before
    assert r1.reward == r2.reward == 0.0
    assert gold_result(retail_ds, RETAIL_TOOL_MAP, task) is gold_result(retail_ds, RETAIL_TOOL_MAP, task)


def test_v1_hash_semantics_int_vs_float_counts(tmp_path):
    """v1 hashes str(to_hashable(db)): 9 and 9.0 differ, dict key order does not."""
    from hero_gym.envs.tau_bench.data import Dataset
    ds = Dataset(domain="retail", source="generated", ident="t", tasks={},
                 tables={"users": {"u": {"payment_methods": {"g": {"source": "gift_card", "balance": 9, "id": "g"}},
                                         "name": {"first_name": "A", "last_name": "B"}}},
                         "orders": {}, "products": {}}, policy="")
    task = Task("t/0", "u", "", (), ())
    db = ds.new_db()
    assert compute_reward(ds, RETAIL_TOOL_MAP, task, db, []).reward == 1.0
    db.users.mut("u")["payment_methods"]["g"]["balance"] = 9.0
    assert compute_reward(ds, RETAIL_TOOL_MAP, task, db, []).reward == 0.0
    rec = db.users.mut("u")
    rec["payment_methods"]["g"]["balance"] = 9
    db.users.put("u", {"name": rec["name"], "payment_methods": rec["payment_methods"]})   # key order swapped
    assert compute_reward(ds, RETAIL_TOOL_MAP, task, db, []).reward == 1.0
