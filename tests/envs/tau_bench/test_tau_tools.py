"""Tool details the conformance recordings do not cover: error paths, schemas, calculate, and the
v1 behaviours of bad arguments. Every expected string below is read off v1's tool code (facts:
texts, id sequences) or Python's own wording of the error v1's code raises for that input."""

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


def test_calculate_errors_are_v1_eval_texts():
    # v1 evaluates with eval(): a syntax error names the file "<string>"; "()" is a tuple float() rejects;
    # a non-string expression fails in the character check (iterating an int).
    assert calculate(None, "(") == "Error: '(' was never closed (<string>, line 1)"
    assert calculate(None, "()") == "Error: float() argument must be a string or a real number, not 'tuple'"
    assert run_tool(RETAIL_TOOL_MAP, None, "calculate", {"expression": [[]]}) == \
        "Error: 'in <string>' requires string as left operand, not list"
    assert run_tool(RETAIL_TOOL_MAP, None, "calculate", {"expression": ["1"]}) == \
        "Error: eval() arg 1 must be a string, bytes or code object"
    assert run_tool(RETAIL_TOOL_MAP, None, "calculate", {"expression": 5}) == "Error: 'int' object is not iterable"


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
    # v1: returns say "some item not found", exchanges and item changes name the item
    assert run("return_delivered_order_items", order_id=delivered["order_id"], item_ids=["nope"],
               payment_method_id=pm) == "Error: some item not found"
    assert run("exchange_delivered_order_items", order_id=delivered["order_id"], item_ids=["nope"],
               new_item_ids=["x"], payment_method_id=pm) == "Error: nope not found"
    assert run("exchange_delivered_order_items", order_id=delivered["order_id"], item_ids=[item],
               new_item_ids=[], payment_method_id=pm) == "Error: the number of items to be exchanged should match"
    assert run("exchange_delivered_order_items", order_id=delivered["order_id"], item_ids=[item],
               new_item_ids=["0000000000"], payment_method_id=pm) == "Error: new item 0000000000 not found or available"
    assert run("modify_pending_order_payment", order_id=pending["order_id"],
               payment_method_id=pending["payment_history"][0]["payment_method_id"]) == \
        "Error: the new payment method should be different from the current one"
    assert run("get_user_details", user_id="nobody") == "Error: user not found"
    assert run("no_such_tool") == "Unknown action no_such_tool"
    assert run("get_order_details", order_id="#W1", extra=1) == \
        "Error: GetOrderDetails.invoke() got an unexpected keyword argument 'extra'"
    assert run("get_order_details", order_id=["#W1"]) == "Error: unhashable type: 'list'"   # v1: dict lookup
    assert run("get_order_details", order_id=7) == "Error: order not found"
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
    assert run("send_certificate", user_id=uid, amount=100) == \
        f"Certificate certificate_3221322 added to user {uid} with amount 100."
    assert run("send_certificate", user_id=uid, amount=100).startswith("Certificate certificate_3221323 ")
    assert run("send_certificate", user_id=uid, amount=100).startswith("Certificate certificate_3221324 ")
    assert run("send_certificate", user_id=uid, amount=100) == "None"   # v1 returns nothing the 4th time
    assert "certificate_3221325" not in db.users[uid]["payment_methods"]
    assert json.loads(run("get_user_details", user_id=uid))["payment_methods"]["certificate_3221322"]["amount"] == 100
    assert run("book_reservation", user_id=uid, origin="JFK", destination="SEA", flight_type="one_way",
               cabin="economy", flights=[{"flight_number": "HAT999", "date": "2024-05-20"}], passengers=[],
               payment_methods=[], total_baggages=0, nonfree_baggages=0, insurance="no") == \
        "Error: flight HAT999 not found"


def test_v1_arity_errors_name_the_v1_class(rdb):
    run = lambda name, **kw: run_tool(RETAIL_TOOL_MAP, rdb, name, kw)  # noqa: E731
    assert run("get_user_details") == "Error: GetUserDetails.invoke() missing 1 required positional argument: 'user_id'"
    assert run("find_user_id_by_name_zip", zip="1") == ("Error: FindUserIdByNameZip.invoke() missing 2 required "
                                                        "positional arguments: 'first_name' and 'last_name'")
    assert run("modify_user_address", user_id="x") == (
        "Error: ModifyUserAddress.invoke() missing 6 required positional arguments: 'address1', 'address2', "
        "'city', 'state', 'country', and 'zip'")
    # the first unknown keyword is reported before any missing one
    assert run("get_order_details", foo=1, bar=2) == \
        "Error: GetOrderDetails.invoke() got an unexpected keyword argument 'foo'"
    assert run_tool(RETAIL_TOOL_MAP, rdb, "get_user_details", {"user_id": "x", "data": 1}, "retail") == (
        "Error: tau_bench.envs.retail.tools.get_user_details.GetUserDetails.invoke() got multiple values "
        "for keyword argument 'data'")
    assert run("list_all_product_types", x=1) == \
        "Error: ListAllProductTypes.invoke() got an unexpected keyword argument 'x'"
    assert rdb.changed() == {}


def test_v1_parameter_names_and_order():
    """The arity messages depend on v1's parameter order (from v1's ``invoke`` signatures)."""
    assert RETAIL_TOOL_MAP["modify_pending_order_address"].parameters == (
        "order_id", "address1", "address2", "city", "state", "country", "zip")
    assert AIRLINE_TOOL_MAP["book_reservation"].parameters == (
        "user_id", "origin", "destination", "flight_type", "cabin", "flights", "passengers", "payment_methods",
        "total_baggages", "nonfree_baggages", "insurance")
    assert AIRLINE_TOOL_MAP["update_reservation_flights"].parameters == (
        "reservation_id", "cabin", "flights", "payment_id")
    assert RETAIL_TOOL_MAP["return_delivered_order_items"].parameters == ("order_id", "item_ids", "payment_method_id")


def test_retail_wrong_types_follow_v1_code(rdb):
    run = lambda name, **kw: run_tool(RETAIL_TOOL_MAP, rdb, name, kw)  # noqa: E731
    delivered = _order(rdb, "delivered")
    pm = delivered["payment_history"][0]["payment_method_id"]
    # v1 calls email.lower(): a number fails with Python's AttributeError text
    assert run("find_user_id_by_email", email=5) == "Error: 'int' object has no attribute 'lower'"
    # v1 compares the last name only after a first name matched: no first-name match -> not found
    assert run("find_user_id_by_name_zip", first_name="Zzzzzz", last_name=5, zip="1") == "Error: user not found"
    # an int zip never equals a string zip: not found, no error
    user = next(iter(rdb.users.values()))
    assert run("find_user_id_by_name_zip", first_name=user["name"]["first_name"],
               last_name=user["name"]["last_name"], zip=int(user["address"]["zip"])) == "Error: user not found"
    # a string item list is iterated character by character (str.count): a character is not an item
    assert run("return_delivered_order_items", order_id=delivered["order_id"], item_ids="12",
               payment_method_id=pm) == "Error: some item not found"
    # any value can be a missing item, even None (v1 counts it in the request)
    assert run("exchange_delivered_order_items", order_id=delivered["order_id"], item_ids=[None],
               new_item_ids=["x"], payment_method_id=pm) == "Error: None not found"
    assert run("return_delivered_order_items", order_id=delivered["order_id"], item_ids=[None],
               payment_method_id=pm) == "Error: some item not found"
    # an enum value outside the list is v1's own check, not a schema error
    pending = _order(rdb, "pending")
    assert run("cancel_pending_order", order_id=pending["order_id"], reason=["no longer needed"]) == \
        "Error: invalid reason"
    assert rdb.changed() == {}


def test_airline_v1_quirks(airline_ds):
    db = airline_ds.new_db()
    run = lambda name, **kw: run_tool(AIRLINE_TOOL_MAP, db, name, kw)  # noqa: E731
    # v1's text for an unknown reservation is "user not found"
    assert run("get_reservation_details", reservation_id="NOPE00") == "Error: user not found"
    assert run("get_reservation_details", reservation_id=["ZFA04Y"]) == "Error: unhashable type: 'list'"
    uid = "mohamed_silva_9265"
    book = dict(user_id=uid, origin="JFK", destination="SFO", flight_type="one_way",
                flights=[{"flight_number": "HAT023", "date": "2024-05-26"}],
                passengers=[{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}],
                total_baggages=0, nonfree_baggages=0, insurance="no")
    # no cabin check: an unknown cabin fails where v1 looks up the seats (KeyError text), and a
    # booking without flights passes
    assert run("book_reservation", cabin="first", payment_methods=[], **book) == "Error: 'first'"
    # a segment without a flight number fails with v1's KeyError text
    assert run("book_reservation", **{**book, "flights": [{"date": "2024-05-26"}]}, cabin="business",
               payment_methods=[]) == "Error: 'flight_number'"
    # a payment entry without an amount: KeyError 'amount' (v1 reads payment_id, then amount)
    assert run("book_reservation", cabin="business", payment_methods=[{"payment_id": "credit_card_5843230"}],
               **book) == "Error: 'amount'"
    price = db.flights["HAT023"]["dates"]["2024-05-26"]["prices"]["business"]
    pay = [{"payment_id": "credit_card_5843230", "amount": price}]
    ids = []
    for _ in range(4):
        out = json.loads(run("book_reservation", cabin="business", payment_methods=pay, **book))
        ids.append(out["reservation_id"])
    # v1 assumes at most three bookings: the fourth reuses (overwrites) HATHAV
    assert ids == ["HATHAT", "HATHAU", "HATHAV", "HATHAV"]
    assert db.users[uid]["reservations"][-4:] == ["HATHAT", "HATHAU", "HATHAV", "HATHAV"]
    # extra keys of the agent's segment are kept; price/origin/destination are added after them
    out = json.loads(run("book_reservation", cabin="business", payment_methods=pay,
                         **{**book, "flights": [{"date": "2024-05-26", "flight_number": "HAT023", "note": 1}]}))
    assert list(out["flights"][0]) == ["date", "flight_number", "note", "price", "origin", "destination"]
    # the cabin is not validated on bookings without segments either
    out = json.loads(run("book_reservation", cabin="first", payment_methods=[], **{**book, "flights": []}))
    assert out["cabin"] == "first" and out["flights"] == []


def test_airline_onestop_follows_v1(airline_ds):
    """v1: the second leg's date is ``2024-05-{day + 1}`` when the first leg arrives '+1', and the
    second leg's status/seats/prices are copied from the *first* date's entry (hand-read from
    v1's search_onestop_flight; prices below are the official data's)."""
    from hero_gym.envs.tau_bench.tools_airline import v1_next_day
    assert v1_next_day("2024-05-09") == "2024-05-10"
    assert v1_next_day("2024-05-01") == "2024-05-2"          # no zero padding: matches no flight
    db = airline_ds.new_db()
    legs = json.loads(run_tool(AIRLINE_TOOL_MAP, db, "search_onestop_flight",
                               {"origin": "LGA", "destination": "SFO", "date": "2024-05-20"}))
    pair = next(p for p in legs if p[0]["flight_number"] == "HAT002" and p[1]["flight_number"] == "HAT009")
    assert pair[0]["date"] == "2024-05-20" and pair[1]["date"] == "2024-05-21"
    # HAT009's prices on 2024-05-20 (not 05-21, where business is 419)
    assert pair[1]["prices"] == {"basic_economy": 57, "economy": 175, "business": 461}
    # a '+1' first leg on 2024-05-01 never connects (v1 looks up "2024-05-2")
    early = json.loads(run_tool(AIRLINE_TOOL_MAP, db, "search_onestop_flight",
                                {"origin": "LGA", "destination": "SFO", "date": "2024-05-01"}))
    assert all("+1" not in a["scheduled_arrival_time_est"] for a, _ in early)
