"""Conformance beyond gold replays: perturbed gold sequences on all official tasks.

Expected values never come from our implementation. They come from
(a) the conformance recordings (observations and final records produced by v1's own code), and
(b) rules read off v1's tool code, stated next to each family:
    * reads never write (v1's read tools only index ``data``);
    * a write's second, immediate repetition gives a result fixed by v1's checks (table below);
    * writes touching disjoint records commute (v1's reward hashes the whole database);
    * unknown ids give v1's fixed error texts.
Families: extra reads, duplicated writes, reordered writes, dropped writes, unknown ids for every
read tool (and every write tool), and env-level behaviour (empty message, unknown tool).
"""

import json
from functools import lru_cache
from pathlib import Path

import pytest

from _tau_common import DATA_DIR, needs_official

pytestmark = needs_official

CASES = [("retail", "test"), ("retail", "train"), ("retail", "dev"), ("airline", "test")]
IDS = [f"{d}_{s}" for d, s in CASES]

READS = {"retail": {"find_user_id_by_email", "find_user_id_by_name_zip", "get_order_details",
                    "get_product_details", "get_user_details", "list_all_product_types", "calculate", "think"},
         "airline": {"get_reservation_details", "get_user_details", "list_all_airports", "search_direct_flight",
                     "search_onestop_flight", "calculate", "think"}}


def _tools(domain):
    from hero_gym.envs.tau_bench.tools_airline import AIRLINE_TOOL_MAP
    from hero_gym.envs.tau_bench.tools_retail import RETAIL_TOOL_MAP
    return RETAIL_TOOL_MAP if domain == "retail" else AIRLINE_TOOL_MAP


@lru_cache(maxsize=None)
def _recordings(domain, split):
    with open(Path(DATA_DIR) / "conformance" / f"{domain}_{split}.json") as f:
        return json.load(f)


def _episodes(domain, split):
    """(dataset, task, recorded steps, recorded changed records) for every task of the split."""
    from hero_gym.envs.tau_bench.data import load_official
    ds = load_official(domain, DATA_DIR)
    for task, rec in zip(ds.tasks[split], _recordings(domain, split)):
        steps = [a for a in task.actions if a.name != "transfer_to_human_agents"]
        yield ds, task, list(zip(steps, rec["steps"])), rec["changed"]


def _final_differs(ds, db, changed):
    """Records where ``db`` differs from v1's recorded final state: a recorded record in v1's
    canonical form; any other record must still equal (==) the initial one. (The recordings list
    only records that changed by ``==``, so an int balance rewritten as the equal float is not
    listed; this is the conformance test's comparison.)"""
    from hero_gym.envs.tau_bench.data import canonical
    touched = db.touched()
    keys = {(t, k) for t, recs in changed.items() for k in recs} | set(touched)
    bad = []
    for t, k in keys:
        mine = touched[(t, k)] if (t, k) in touched else ds.tables[t].get(k)
        if k in changed.get(t, {}):
            if canonical(mine) != canonical(changed[t][k]):
                bad.append(f"{t}/{k}")
        elif mine != ds.tables[t].get(k):
            bad.append(f"{t}/{k}")
    return bad


def _is_write(domain, name):
    return name not in READS[domain]


# ----------------------------------------------------------------------------- extra reads
def _extra_read(domain, task, kwargs):
    """A read about the same record a write targets (v1: reads only index the data)."""
    if domain == "retail":
        if "order_id" in kwargs:
            return "get_order_details", {"order_id": kwargs["order_id"]}
        return "get_user_details", {"user_id": task.user_id}
    if "reservation_id" in kwargs:
        return "get_reservation_details", {"reservation_id": kwargs["reservation_id"]}
    return "get_user_details", {"user_id": task.user_id}


@pytest.mark.parametrize("domain,split", CASES, ids=IDS)
def test_extra_reads_change_nothing(domain, split):
    """Before and after every gold write, read the record it targets and list the catalogue: every
    gold observation and the final records are still v1's recorded ones."""
    from hero_gym.envs.tau_bench.common import run_tool
    tools = _tools(domain)
    listing = "list_all_product_types" if domain == "retail" else "list_all_airports"
    problems = []
    for ds, task, steps, changed in _episodes(domain, split):
        db = ds.new_db()
        for action, rec in steps:
            if _is_write(domain, action.name):
                name, kw = _extra_read(domain, task, action.kwargs)
                run_tool(tools, db, name, kw)
                run_tool(tools, db, listing, {})
            if run_tool(tools, db, action.name, action.kwargs) != rec["observation"]:
                problems.append(f"{task.task_id} {action.name}")
            if _is_write(domain, action.name):
                run_tool(tools, db, *_extra_read(domain, task, action.kwargs))
        problems += [f"{task.task_id} {r}" for r in _final_differs(ds, db, changed)]
    assert not problems, problems[:10]


# ------------------------------------------------------------------------ duplicated writes
def _advance_reservation_id(rid):
    # v1: HATHAT, else HATHAU, else HATHAV (reused from the fourth booking on)
    return {"HATHAT": "HATHAU", "HATHAU": "HATHAV", "HATHAV": "HATHAV"}[rid]


def _expected_repeat(domain, ds, name, kwargs, first_obs):
    """v1's observation for an immediate second identical call, derived from v1's checks.
    Returns None where v1's code does not fix it without more state."""
    if domain == "retail":
        fixed = {
            # after a cancel the status is "cancelled": the pending check fails
            "cancel_pending_order": "Error: non-pending order cannot be cancelled",
            # after an item change the status is "pending (item modified)"
            "modify_pending_order_items": "Error: non-pending order cannot be modified",
            # after a return/exchange request the status is no longer "delivered"
            "return_delivered_order_items": "Error: non-delivered order cannot be returned",
            "exchange_delivered_order_items": "Error: non-delivered order cannot be exchanged",
            # the history now holds the original payment, a payment and a refund
            "modify_pending_order_payment": "Error: there should be exactly one payment for a pending order",
        }
        if name in fixed:
            return fixed[name]
        # address writes: the status/user is unchanged and the same address is written again
        return first_obs
    if name == "cancel_reservation":
        # v1 appends the negation of every history entry again (including the refunds just added)
        res = json.loads(first_obs)
        res["payment_history"] = res["payment_history"] + [
            {"payment_id": p["payment_id"], "amount": -p["amount"]} for p in res["payment_history"]]
        return json.dumps(res)
    if name in ("update_reservation_baggages", "update_reservation_flights", "update_reservation_passengers"):
        # the price difference is now 0: nothing is appended to the history, the same values are written
        return first_obs
    if name == "send_certificate":
        for a, b in (("3221322", "3221323"), ("3221323", "3221324")):
            if f"certificate_{a} " in first_obs:
                return first_obs.replace(f"certificate_{a} ", f"certificate_{b} ")
        return "None"
    if name == "book_reservation":
        methods = ds.tables["users"].get(kwargs["user_id"])["payment_methods"]
        spent = {}
        for pm in kwargs["payment_methods"]:
            spent[pm["payment_id"]] = spent.get(pm["payment_id"], 0) + pm["amount"]
        for pm in kwargs["payment_methods"]:
            m = methods[pm["payment_id"]]
            if m["source"] == "certificate":      # used certificates are deleted from the profile
                return f"Error: payment method {pm['payment_id']} not found"
            if m["source"] == "gift_card" and m["amount"] - spent[pm["payment_id"]] < pm["amount"]:
                return f"Error: not enough balance in payment method {pm['payment_id']}"
        res = json.loads(first_obs)
        res["reservation_id"] = _advance_reservation_id(res["reservation_id"])
        return json.dumps(res)
    return None


@pytest.mark.parametrize("domain,split", CASES, ids=IDS)
def test_duplicated_writes_give_v1_results(domain, split):
    from hero_gym.envs.tau_bench.common import run_tool
    tools = _tools(domain)
    problems, n = [], 0
    for ds, task, steps, _ in _episodes(domain, split):
        for i, (action, rec) in enumerate(steps):
            if not _is_write(domain, action.name) or rec["observation"].startswith("Error"):
                continue
            if action.name == "book_reservation" and any(
                    a.name == "book_reservation" for a, _ in steps[:i]):
                continue   # the gift-card arithmetic above assumes the first booking of the task
            db = ds.new_db()
            for a, _ in steps[:i + 1]:
                run_tool(tools, db, a.name, a.kwargs)
            want = _expected_repeat(domain, ds, action.name, action.kwargs, rec["observation"])
            got = run_tool(tools, db, action.name, action.kwargs)
            n += 1
            if want is not None and got != want:
                problems.append(f"{task.task_id} step {i} {action.name}: {got[:120]!r} != {want[:120]!r}")
    assert n > 0
    assert not problems, problems[:10]


# ------------------------------------------------------------------------- reordered writes
def _touches(domain, ds, name, kw):
    """The records a write may change, read off v1's tool code."""
    if domain == "retail":
        if name == "modify_user_address":
            return {("users", kw["user_id"])}
        order = ds.tables["orders"].get(kw["order_id"])
        out = {("orders", kw["order_id"])}
        if name in ("cancel_pending_order", "modify_pending_order_items", "modify_pending_order_payment"):
            out.add(("users", order["user_id"]))     # gift-card balances
        return out
    if name == "book_reservation":
        return {("reservations", "new"), ("users", kw["user_id"])}
    if name == "send_certificate":
        return {("users", kw["user_id"])}
    res = ds.tables["reservations"].get(kw["reservation_id"])
    return {("reservations", kw["reservation_id"]), ("users", res["user_id"] if res else "?")}


@pytest.mark.parametrize("domain,split", CASES, ids=IDS)
def test_reordered_disjoint_writes_commute(domain, split):
    """Swap two adjacent gold writes that touch disjoint records: v1's observations and final
    records are unchanged."""
    from hero_gym.envs.tau_bench.common import run_tool
    tools = _tools(domain)
    problems, n = [], 0
    for ds, task, steps, changed in _episodes(domain, split):
        for i in range(len(steps) - 1):
            (a, ra), (b, rb) = steps[i], steps[i + 1]
            if not (_is_write(domain, a.name) and _is_write(domain, b.name)):
                continue
            if _touches(domain, ds, a.name, a.kwargs) & _touches(domain, ds, b.name, b.kwargs):
                continue
            order = steps[:i] + [steps[i + 1], steps[i]] + steps[i + 2:]
            db = ds.new_db()
            n += 1
            for act, rec in order:
                if run_tool(tools, db, act.name, act.kwargs) != rec["observation"]:
                    problems.append(f"{task.task_id} swap {i}: {act.name}")
            problems += [f"{task.task_id} swap {i}: {r}" for r in _final_differs(ds, db, changed)]
    assert not problems, problems[:10]
    if domain == "retail" and split == "train":
        assert n > 0


# --------------------------------------------------------------------------- dropped writes
@pytest.mark.parametrize("domain,split", CASES, ids=IDS)
def test_dropped_last_write_loses_the_reward(domain, split):
    """Drop the last gold write that changed a record (v1 recorded it as changed): the earlier
    observations are v1's and the final database no longer equals the gold one (reward 0)."""
    from hero_gym.envs.tau_bench.common import run_tool
    from hero_gym.envs.tau_bench.reward import compute_reward
    tools = _tools(domain)
    problems, n = [], 0
    for ds, task, steps, changed in _episodes(domain, split):
        writes = [i for i, (a, r) in enumerate(steps)
                  if _is_write(domain, a.name) and not r["observation"].startswith("Error")]
        if not writes or not changed:
            continue
        drop = writes[-1]
        db = ds.new_db()
        for j, (a, rec) in enumerate(steps):
            if j == drop:
                continue
            obs = run_tool(tools, db, a.name, a.kwargs)
            if j < drop and obs != rec["observation"]:
                problems.append(f"{task.task_id} {a.name}")
        n += 1
        if not _final_differs(ds, db, changed):
            problems.append(f"{task.task_id}: dropping step {drop} left the recorded final state")
        if compute_reward(ds, tools, task, db, list(task.outputs)).reward != 0.0:
            problems.append(f"{task.task_id}: reward not 0 after dropping step {drop}")
    assert n > 0
    assert not problems, problems[:10]


# ------------------------------------------------------------------------------ unknown ids
UNKNOWN = {
    "retail": [
        ("get_user_details", {"user_id": "nobody_0000"}, "Error: user not found"),
        ("get_order_details", {"order_id": "#W0000000"}, "Error: order not found"),
        ("get_product_details", {"product_id": "0"}, "Error: product not found"),
        ("find_user_id_by_email", {"email": "nobody@example.com"}, "Error: user not found"),
        ("find_user_id_by_name_zip", {"first_name": "No", "last_name": "Body", "zip": "00000"},
         "Error: user not found"),
        ("cancel_pending_order", {"order_id": "#W0000000", "reason": "no longer needed"}, "Error: order not found"),
        ("modify_pending_order_address", {"order_id": "#W0000000", "address1": "a", "address2": "b", "city": "c",
                                          "state": "d", "country": "e", "zip": "f"}, "Error: order not found"),
        ("modify_pending_order_items", {"order_id": "#W0000000", "item_ids": [], "new_item_ids": [],
                                        "payment_method_id": "x"}, "Error: order not found"),
        ("modify_pending_order_payment", {"order_id": "#W0000000", "payment_method_id": "x"},
         "Error: order not found"),
        ("return_delivered_order_items", {"order_id": "#W0000000", "item_ids": [], "payment_method_id": "x"},
         "Error: order not found"),
        ("exchange_delivered_order_items", {"order_id": "#W0000000", "item_ids": [], "new_item_ids": [],
                                            "payment_method_id": "x"}, "Error: order not found"),
        ("modify_user_address", {"user_id": "nobody_0000", "address1": "a", "address2": "b", "city": "c",
                                 "state": "d", "country": "e", "zip": "f"}, "Error: user not found"),
    ],
    "airline": [
        ("get_user_details", {"user_id": "nobody_0000"}, "Error: user not found"),
        ("get_reservation_details", {"reservation_id": "ZZZZZZ"}, "Error: user not found"),   # sic (v1)
        ("search_direct_flight", {"origin": "XXX", "destination": "JFK", "date": "2024-05-20"}, "[]"),
        ("search_onestop_flight", {"origin": "XXX", "destination": "JFK", "date": "2024-05-20"}, "[]"),
        ("search_direct_flight", {"origin": "JFK", "destination": "SEA", "date": "2030-01-01"}, "[]"),
        ("cancel_reservation", {"reservation_id": "ZZZZZZ"}, "Error: reservation not found"),
        ("update_reservation_baggages", {"reservation_id": "ZZZZZZ", "total_baggages": 1, "nonfree_baggages": 0,
                                         "payment_id": "x"}, "Error: reservation not found"),
        ("update_reservation_flights", {"reservation_id": "ZZZZZZ", "cabin": "economy", "flights": [],
                                        "payment_id": "x"}, "Error: reservation not found"),
        ("update_reservation_passengers", {"reservation_id": "ZZZZZZ", "passengers": []},
         "Error: reservation not found"),
        ("send_certificate", {"user_id": "nobody_0000", "amount": 100}, "Error: user not found"),
        ("book_reservation", {"user_id": "nobody_0000", "origin": "JFK", "destination": "SEA",
                              "flight_type": "one_way", "cabin": "economy", "flights": [], "passengers": [],
                              "payment_methods": [], "total_baggages": 0, "nonfree_baggages": 0,
                              "insurance": "no"}, "Error: user not found"),
    ],
}
UNKNOWN_CASES = [(d, n, kw, want) for d, rows in UNKNOWN.items() for n, kw, want in rows]


@pytest.mark.parametrize("domain,name,kwargs,want", UNKNOWN_CASES,
                         ids=[f"{d}-{n}-{i}" for i, (d, n, _, _) in enumerate(UNKNOWN_CASES)])
def test_unknown_ids(domain, name, kwargs, want):
    from hero_gym.envs.tau_bench.common import run_tool
    from hero_gym.envs.tau_bench.data import load_official
    db = load_official(domain, DATA_DIR).new_db()
    assert run_tool(_tools(domain), db, name, kwargs) == want
    assert db.touched() == {}


def test_every_read_tool_with_an_id_is_covered():
    from hero_gym.envs.tau_bench.common import TRANSFER_TOOL
    for domain in ("retail", "airline"):
        covered = {n for n, _, _ in UNKNOWN[domain]}
        id_tools = {t for t, tool in _tools(domain).items() if tool.parameters and t not in
                    ("calculate", "think", TRANSFER_TOOL)}
        assert id_tools <= covered, id_tools - covered


# ------------------------------------------------------------------------------ env level
def test_env_empty_message_is_a_turn_to_the_user():
    """v1 sends any ``respond`` content to the user, including an empty one."""
    import hero_gym
    from hero_gym.core import TextMessage
    env = hero_gym.make("hero_gym/TauRetail-v0", data="official", data_dir=DATA_DIR)
    env.reset(seed=0, options={"task_index": 0, "split": "test"})
    for action in ("", TextMessage("")):
        obs, reward, term, trunc, info = env.step(action)
        assert info["observation_role"] == "user" and info["action_error"] is None
        assert info["parsed_action"] == {"message": ""}


def test_env_bad_calls_give_v1_observations_and_are_flagged():
    import hero_gym
    from hero_gym.tools import ToolCall
    env = hero_gym.make("hero_gym/TauAirline-v0", data="official", data_dir=DATA_DIR)
    env.reset(seed=0, options={"task_index": 0})
    obs, *_, info = env.step(ToolCall(name="delete_everything", arguments={}))
    assert obs == "Unknown action delete_everything" and info["action_error"]["kind"] == "unknown_tool"
    obs, *_, info = env.step(ToolCall(name="get_user_details", arguments={}))
    assert obs == "Error: GetUserDetails.invoke() missing 1 required positional argument: 'user_id'"
    assert info["action_error"]["kind"] == "invalid_arguments"
    # a wrong type that v1's code accepts is accepted: an amount given as a string
    uid = env.unwrapped.task.user_id
    obs, *_, info = env.step(ToolCall(name="send_certificate", arguments={"user_id": uid, "amount": "50"}))
    assert obs == f"Certificate certificate_3221322 added to user {uid} with amount 50."
    assert info["action_error"] is None
    # an enum value v1 does not check: an unknown cabin fails only when a seat count is looked up
    obs, *_ = env.step(ToolCall(name="update_reservation_flights", arguments={
        "reservation_id": "NO6JO3", "cabin": "first", "flights": [{"flight_number": "HAT001", "date": "2024-05-20"}],
        "payment_id": "x"}))
    assert obs.startswith("Error: ")
