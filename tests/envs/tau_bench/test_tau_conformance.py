"""Conformance: our tools vs the recorded v1 reference on all 685 official tasks.

For every task, replay the gold calls (transfers skipped, as in the recordings) and compare
(1) each observation string with the recorded one, and (2) the final database with the recorded
``changed`` records: a recorded record must equal ours (v1 canonical form: key order ignored,
list order / int-vs-float / float digits significant); a record we touched that is not recorded
must still equal the initial one.
"""

import json
from pathlib import Path

import pytest

from _tau_common import needs_official

pytestmark = needs_official

CASES = [("retail", "test", 115), ("retail", "train", 500), ("retail", "dev", 20), ("airline", "test", 50)]


def _tools(domain):
    from hero_gym.envs.tau_bench.tools_airline import AIRLINE_TOOL_MAP
    from hero_gym.envs.tau_bench.tools_retail import RETAIL_TOOL_MAP
    return RETAIL_TOOL_MAP if domain == "retail" else AIRLINE_TOOL_MAP


@pytest.mark.parametrize("domain,split,n", CASES, ids=[f"{d}_{s}" for d, s, _ in CASES])
def test_conformance(data_dir, domain, split, n):
    from hero_gym.envs.tau_bench.common import run_tool
    from hero_gym.envs.tau_bench.data import canonical, load_official

    ds = load_official(domain, data_dir)
    tools = _tools(domain)
    with open(Path(data_dir) / "conformance" / f"{domain}_{split}.json") as f:
        recs = json.load(f)
    tasks = ds.tasks[split]
    assert len(tasks) == len(recs) == n
    db = ds.new_db()
    problems = []
    n_steps = 0
    for task, rec in zip(tasks, recs):
        assert rec["task_index"] == task.index
        db.reset()
        steps = [a for a in task.actions if a.name != "transfer_to_human_agents"]
        assert len(steps) == len(rec["steps"]), task.task_id
        for a, st in zip(steps, rec["steps"]):
            assert a.name == st["name"]
            obs = run_tool(tools, db, a.name, a.kwargs)
            n_steps += 1
            if obs != st["observation"]:
                problems.append(f"{task.task_id} {a.name}: got {obs[:200]!r} expected {st['observation'][:200]!r}")
        expected = rec["changed"]
        touched = db.touched()
        keys = {(t, k) for t, recs_t in expected.items() for k in recs_t} | set(touched)
        for t, k in keys:
            mine = touched[(t, k)] if (t, k) in touched else ds.tables[t].get(k)
            if k in expected.get(t, {}):
                if canonical(mine) != canonical(expected[t][k]):
                    problems.append(f"{task.task_id} {t}/{k}: record differs")
            elif mine != ds.tables[t].get(k):
                problems.append(f"{task.task_id} {t}/{k}: changed but not recorded as changed")
    assert not problems, f"{len(problems)} conformance problems:\n" + "\n".join(problems[:20])
    assert n_steps > 0


def test_replays_never_touch_the_shared_base(data_dir):
    """Copy-on-write: after replaying every official task (and grading it) the shared base tables
    are exactly the files on disk."""
    from hero_gym.envs.tau_bench.data import DOMAIN_TABLES, load_official
    from hero_gym.envs.tau_bench.reward import compute_reward, replay

    for domain in ("retail", "airline"):
        ds = load_official(domain, data_dir)
        tools = _tools(domain)
        for split, tasks in ds.tasks.items():
            for task in tasks:
                db, _ = replay(ds, tools, task)
                compute_reward(ds, tools, task, db, [])
        for table in DOMAIN_TABLES[domain]:
            with open(Path(data_dir) / domain / f"{table}.json") as f:
                assert ds.tables[table] == json.load(f), (domain, table)
