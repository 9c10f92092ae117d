"""Tool details the conformance recordings do not cover: error paths, schemas, calculate."""

import json

import pytest

from hero_gym.envs.tau_bench.common import calculate, run_tool
from hero_gym.envs.tau_bench.tools_airline import AIRLINE_TOOL_MAP, AIRLINE_TOOLS
from hero_gym.envs.tau_bench.tools_retail import RETAIL_TOOL_MAP, RETAIL_TOOLS


def test_tool_counts():
    assert len(RETAIL_TOOLS) == 16 and len(AIRLINE_TOOLS) == 14


def test_our_schemas_have_the_official_names_and_parameters(data_dir):
    with open(f"{data_dir}/tools_info.json") as f:
        info = json.load(f)
    for domain, tools in (("retail", RETAIL_TOOL_MAP), ("airline", AIRLINE_TOOL_MAP)):
        official = {t["function"]["name"]: t["function"]["parameters"] for t in info[domain]}
        assert set(official) == set(tools)
        for name, params in official.items():
            ours = tools[name].schema["function"]["parameters"]
            assert set(ours["properties"]) == set(params["properties"]), name
            assert set(ours["required"]) == set(params["required"]), name
            for p, spec in params["properties"].items():
                assert ours["properties"][p]["type"] == spec["type"], (name, p)
                assert ours["properties"][p].get("enum") == spec.get("enum"), (name, p)


def test_calculate():
    assert calculate(None, "2 * ((350 - 122) + (499 - 127))") == "1200.0"
    assert calculate(None, "10 / 3") == "3.33"
    assert calculate(None, "import os") == "Error: invalid characters in expression"
    assert calculate(None, "1 / 0") == "Error: division by zero"
    assert calculate(None, "(").startswith("Error:")
    assert calculate(None, "9**9**9**9").startswith("Error:")      # no hang on huge powers
    assert calculate(None, "()").startswith("Error:")


@pytest.fixture(params=["official", "generated"])
def rdb(request):
    """The tools are data-independent: run the error-path tests on both data sources."""
    from _tau_common import DATA_DIR, HAVE_OFFICIAL, SKIP_REASON
    from hero_gym.envs.tau_bench.data import load_official
    from hero_gym.envs.tau_bench.generator import generate_dataset
    if request.param == "official":
        if not HAVE_OFFICIAL:
            pytest.skip(SKIP_REASON)
        return load_official("retail", DATA_DIR).new_db()
    return generate_dataset("retail").new_db()


def _order(db, status):
    return next(o for o in db.orders.values() if o["status"] == status)


def test_retail_error_paths_change_nothing(rdb):
    run = lambda name, **kw: run_tool(RETAIL_TOOL_MAP, rdb, name, kw)  # noqa: E731
    delivered, pending = _order(rdb, "delivered"), _order(rdb, "pending")
    assert run("cancel_pending_order", order_id=delivered["order_id"], reason="no longer needed") == \
        "Error: non-pending order cannot be cancelled"
    assert run("cancel_pending_order", order_id=pending["order_id"], reason="because") == "Error: invalid reason"
    assert run("modify_pending_order_address", order_id=delivered["order_id"], address1="a", address2="",
               city="c", state="s", country="USA", zip="1") == "Error: non-pending order cannot be modified"
    assert run("return_delivered_order_items", order_id=pending["order_id"], item_ids=[],
               payment_method_id="x") == "Error: non-delivered order cannot be returned"
    item = delivered["items"][0]["item_id"]
    pm = delivered["payment_history"][0]["payment_method_id"]
    assert run("return_delivered_order_items", order_id=delivered["order_id"], item_ids=["nope"],
               payment_method_id=pm) == "Error: nope not found"
    assert run("exchange_delivered_order_items", order_id=delivered["order_id"], item_ids=[item],
               new_item_ids=[], payment_method_id=pm) == "Error: the number of items to be exchanged should match"
    assert run("exchange_delivered_order_items", order_id=delivered["order_id"], item_ids=[item],
               new_item_ids=["0000000000"], payment_method_id=pm) == "Error: new item 0000000000 not found or available"
    assert run("modify_pending_order_payment", order_id=pending["order_id"],
               payment_method_id=pending["payment_history"][0]["payment_method_id"]) == \
        "Error: the new payment method should be different from the current one"
    assert run("get_user_details", user_id="nobody") == "Error: user not found"
    assert run("no_such_tool") == "Unknown action no_such_tool"
    assert run("get_order_details", order_id="#W1", extra=1).startswith("Error:")   # unexpected kwarg
    assert run("get_order_details", order_id=["#W1"]) == "Error: order not found"    # wrong type, no crash
    assert run("think", thought="hmm") == ""
    assert run("transfer_to_human_agents", summary="x") == "Transfer successful"
    assert rdb.changed() == {}


def test_retail_cancel_refunds_gift_card_balance(rdb):
    order = next(o for o in rdb.orders.values() if o["status"] == "pending"
                 and o["payment_history"][0]["payment_method_id"].startswith("gift_card"))
    uid, pm = order["user_id"], order["payment_history"][0]["payment_method_id"]
    before = rdb.users[uid]["payment_methods"][pm]["balance"]
    out = json.loads(run_tool(RETAIL_TOOL_MAP, rdb, "cancel_pending_order",
                              {"order_id": order["order_id"], "reason": "no longer needed"}))
    assert out["status"] == "cancelled" and out["payment_history"][-1]["transaction_type"] == "refund"
    amount = order["payment_history"][0]["amount"]
    assert rdb.users[uid]["payment_methods"][pm]["balance"] == round(before + amount, 2)


def test_airline_tools(airline_ds):
    db = airline_ds.new_db()
    run = lambda name, **kw: run_tool(AIRLINE_TOOL_MAP, db, name, kw)  # noqa: E731
    airports = json.loads(run("list_all_airports"))
    codes = {f["origin"] for f in db.flights.values()} | {f["destination"] for f in db.flights.values()}
    assert set(airports) == codes and airports["JFK"] == "New York"
    legs = json.loads(run("search_onestop_flight", origin="JFK", destination="SEA", date="2024-05-20"))
    assert legs and all(a["destination"] == b["origin"] and a["date"] == "2024-05-20" for a, b in legs)
    assert all(a["status"] == b["status"] == "available" for a, b in legs)
    assert run("cancel_reservation", reservation_id="NOPE00") == "Error: reservation not found"
    res = next(iter(db.reservations.values()))
    assert run("update_reservation_passengers", reservation_id=res["reservation_id"], passengers=[]) == \
        "Error: number of passengers does not match"
    uid = res["user_id"]
    assert run("send_certificate", user_id=uid, amount=100).startswith("Certificate certificate_3221322")
    assert run("send_certificate", user_id=uid, amount=100).startswith("Certificate certificate_9350346")
    assert json.loads(run("get_user_details", user_id=uid))["payment_methods"]["certificate_3221322"]["amount"] == 100
    assert run("book_reservation", user_id=uid, origin="JFK", destination="SEA", flight_type="one_way",
               cabin="economy", flights=[{"flight_number": "HAT999", "date": "2024-05-20"}], passengers=[],
               payment_methods=[], total_baggages=0, nonfree_baggages=0, insurance="no") == \
        "Error: flight HAT999 not found"
