"""Retail tools (16) with Tau-bench v1 semantics.

Written from the tool schemas, the retail policy, the conformance recordings (exact output
strings and changed records for every gold call) and v1's tool code (facts only); conformance
tests check them on all official tasks. Every tool checks first and writes last, through
``Table.mut`` (copy-on-write), so a failing check never changes the database. Outputs are
``json.dumps`` of the affected record. Kept from v1: the checks run in v1's order with v1's texts
(a return of an item not in the order is ``Error: some item not found``, an exchange or item
change names the item: ``Error: <item id> not found``); refunds of a cancelled order and of a
payment-method change go back to a gift card at once when the payment method's *id* contains
``gift_card``; pending-order item changes record the raw float price difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .common import COMMON_TOOLS, Tool, array_param, dumps, fn_schema, get_user_details, has, string_param
from .data import TauDB

CANCEL_REASONS = ("no longer needed", "ordered by mistake")


def _is_gift_card(method: dict[str, Any]) -> bool:
    return method["source"] == "gift_card"


def _missing_item(order: dict[str, Any], item_ids: list[str]) -> tuple[bool, Any]:
    """(True, id) for the first requested id that occurs more often in the request than in the
    order (the id may be any value, even ``None``), else (False, None)."""
    in_order = [it["item_id"] for it in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > in_order.count(item_id):
            return True, item_id
    return False, None


def _order_with_status(db: TauDB, order_id: str, status: str, action: str) -> tuple[Any, str | None]:
    """The order if it exists and has ``status``; else v1's error text, e.g. ``Error: non-pending
    order cannot be cancelled`` for ``status="pending", action="cancelled"``."""
    if not has(db.orders, order_id):
        return None, "Error: order not found"
    order = db.orders[order_id]
    if order["status"] != status:
        return None, f"Error: non-{status} order cannot be {action}"
    return order, None


@dataclass(frozen=True)
class _SwapRule:
    """What differs between an exchange and a pending-order item change (v1's texts and rounding)."""

    status: str            # the order status required
    action: str            # the verb of the status error
    balance_error: str     # the text when a gift card does not cover the difference
    round_diff: bool       # v1 rounds the difference to cents for exchanges only


_EXCHANGE = _SwapRule("delivered", "exchanged",
                      "Error: insufficient gift card balance to pay for the price difference", round_diff=True)
_ITEM_CHANGE = _SwapRule("pending", "modified", "Error: insufficient gift card balance to pay for the new item",
                         round_diff=False)


def _item_swap(db: TauDB, rule: _SwapRule, order_id: str, item_ids: list[str], new_item_ids: list[str],
               payment_method_id: str) -> tuple[Any, Any, str | None]:
    """The checks shared by exchanges (delivered orders) and pending-order item changes, in v1's
    order: the order and its status; the requested items are in the order; the lists have the same
    length; every new item is an available variant of the same product; the payment method exists
    and a gift card covers the price difference. Returns (order, price difference, error)."""
    order, err = _order_with_status(db, order_id, rule.status, rule.action)
    if err:
        return None, None, err
    is_missing, missing = _missing_item(order, item_ids)
    if is_missing:
        return None, None, f"Error: {missing} not found"
    if len(item_ids) != len(new_item_ids):
        return None, None, "Error: the number of items to be exchanged should match"
    diff = 0
    for old_id, new_id in zip(item_ids, new_item_ids):
        item = [it for it in order["items"] if it["item_id"] == old_id][0]
        variants = db.products[item["product_id"]]["variants"]
        if not (new_id in variants and variants[new_id]["available"]):
            return None, None, f"Error: new item {new_id} not found or available"
        diff += variants[new_id]["price"] - item["price"]
    if rule.round_diff:
        diff = round(diff, 2)
    methods = db.users[order["user_id"]]["payment_methods"]
    if payment_method_id not in methods:
        return None, None, "Error: payment method not found"
    method = methods[payment_method_id]
    if _is_gift_card(method) and method["balance"] < diff:
        return None, None, rule.balance_error
    return order, diff, None


def _address(address1: str, address2: str, city: str, state: str, country: str, zip: str) -> dict[str, str]:
    return {"address1": address1, "address2": address2, "city": city, "state": state,
            "country": country, "zip": zip}


# ------------------------------------------------------------------------------- reads
def find_user_id_by_email(db: TauDB, email: str) -> str:
    for user_id, user in db.users.items():
        if user["email"].lower() == email.lower():
            return user_id
    return "Error: user not found"


def find_user_id_by_name_zip(db: TauDB, first_name: str, last_name: str, zip: str) -> str:
    """First name, last name (case-insensitive) and zip (exact), compared lazily in that order as in
    v1 (so a bad last name only fails once some first name matches)."""
    for user_id, user in db.users.items():
        if (user["name"]["first_name"].lower() == first_name.lower()
                and user["name"]["last_name"].lower() == last_name.lower()
                and user["address"]["zip"] == zip):
            return user_id
    return "Error: user not found"


def get_order_details(db: TauDB, order_id: str) -> str:
    if has(db.orders, order_id):
        return dumps(db.orders[order_id])
    return "Error: order not found"


def get_product_details(db: TauDB, product_id: str) -> str:
    if has(db.products, product_id):
        return dumps(db.products[product_id])
    return "Error: product not found"


def list_all_product_types(db: TauDB) -> str:
    """``{product name: product id}`` sorted by name."""
    names = {p["name"]: p["product_id"] for p in db.products.values()}
    return dumps(dict(sorted(names.items())))


# ------------------------------------------------------------------------------ writes
def cancel_pending_order(db: TauDB, order_id: str, reason: str) -> str:
    order, err = _order_with_status(db, order_id, "pending", "cancelled")
    if err:
        return err
    if reason not in CANCEL_REASONS:
        return "Error: invalid reason"
    refunds = [{"transaction_type": "refund", "amount": p["amount"], "payment_method_id": p["payment_method_id"]}
               for p in order["payment_history"]]
    # refunds to a gift card (by id, as in v1) are credited at once (policy: "immediately if gift card")
    gift_refunds = [r for r in refunds if "gift_card" in r["payment_method_id"]]
    if gift_refunds:
        user = db.users.mut(order["user_id"])
        for r in gift_refunds:
            m = user["payment_methods"][r["payment_method_id"]]
            m["balance"] = round(m["balance"] + r["amount"], 2)
    order = db.orders.mut(order_id)
    order["status"] = "cancelled"
    order["cancel_reason"] = reason
    order["payment_history"].extend(refunds)
    return dumps(order)


def exchange_delivered_order_items(db: TauDB, order_id: str, item_ids: list[str], new_item_ids: list[str],
                                   payment_method_id: str) -> str:
    order, diff, err = _item_swap(db, _EXCHANGE, order_id, item_ids, new_item_ids, payment_method_id)
    if err:
        return err
    order = db.orders.mut(order_id)
    order["status"] = "exchange requested"
    order["exchange_items"] = sorted(item_ids)
    order["exchange_new_items"] = sorted(new_item_ids)
    order["exchange_payment_method_id"] = payment_method_id
    order["exchange_price_difference"] = diff
    return dumps(order)


def modify_pending_order_address(db: TauDB, order_id: str, address1: str, address2: str, city: str,
                                 state: str, country: str, zip: str) -> str:
    order, err = _order_with_status(db, order_id, "pending", "modified")
    if err:
        return err
    order = db.orders.mut(order_id)
    order["address"] = _address(address1, address2, city, state, country, zip)
    return dumps(order)


def modify_pending_order_items(db: TauDB, order_id: str, item_ids: list[str], new_item_ids: list[str],
                               payment_method_id: str) -> str:
    order, diff, err = _item_swap(db, _ITEM_CHANGE, order_id, item_ids, new_item_ids, payment_method_id)
    if err:
        return err
    order = db.orders.mut(order_id)
    order["payment_history"].append({
        "transaction_type": "payment" if diff > 0 else "refund",
        "amount": abs(diff),
        "payment_method_id": payment_method_id,
    })
    if _is_gift_card(db.users[order["user_id"]]["payment_methods"][payment_method_id]):
        m = db.users.mut(order["user_id"])["payment_methods"][payment_method_id]
        m["balance"] = round(m["balance"] - diff, 2)
    for old_id, new_id in zip(item_ids, new_item_ids):
        item = [it for it in order["items"] if it["item_id"] == old_id][0]
        variant = db.products[item["product_id"]]["variants"][new_id]
        item["item_id"] = new_id
        item["price"] = variant["price"]
        item["options"] = dict(variant["options"])
    order["status"] = "pending (item modified)"
    return dumps(order)


def modify_pending_order_payment(db: TauDB, order_id: str, payment_method_id: str) -> str:
    order, err = _order_with_status(db, order_id, "pending", "modified")
    if err:
        return err
    methods = db.users[order["user_id"]]["payment_methods"]
    if payment_method_id not in methods:
        return "Error: payment method not found"
    history = order["payment_history"]
    if len(history) > 1 or history[0]["transaction_type"] != "payment":
        return "Error: there should be exactly one payment for a pending order"
    old_id = history[0]["payment_method_id"]
    if old_id == payment_method_id:
        return "Error: the new payment method should be different from the current one"
    amount = history[0]["amount"]
    method = methods[payment_method_id]
    if _is_gift_card(method) and method["balance"] < amount:
        return "Error: insufficient gift card balance to pay for the order"
    order = db.orders.mut(order_id)
    order["payment_history"].extend([
        {"transaction_type": "payment", "amount": amount, "payment_method_id": payment_method_id},
        {"transaction_type": "refund", "amount": amount, "payment_method_id": old_id},
    ])
    refund_to_gift_card = "gift_card" in old_id   # v1 decides by the old method's id
    if _is_gift_card(method) or refund_to_gift_card:
        user = db.users.mut(order["user_id"])
        if _is_gift_card(method):
            m = user["payment_methods"][payment_method_id]
            m["balance"] = round(m["balance"] - amount, 2)
        if refund_to_gift_card:
            m = user["payment_methods"][old_id]
            m["balance"] = round(m["balance"] + amount, 2)
    return dumps(order)


def modify_user_address(db: TauDB, user_id: str, address1: str, address2: str, city: str, state: str,
                        country: str, zip: str) -> str:
    if not has(db.users, user_id):
        return "Error: user not found"
    user = db.users.mut(user_id)
    user["address"] = _address(address1, address2, city, state, country, zip)
    return dumps(user)


def return_delivered_order_items(db: TauDB, order_id: str, item_ids: list[str], payment_method_id: str) -> str:
    order, err = _order_with_status(db, order_id, "delivered", "returned")
    if err:
        return err
    if payment_method_id not in db.users[order["user_id"]]["payment_methods"]:
        return "Error: payment method not found"
    # policy: the refund goes to the original payment method or to an existing gift card
    if "gift_card" not in payment_method_id and payment_method_id != order["payment_history"][0]["payment_method_id"]:
        return "Error: payment method should be either the original payment method or a gift card"
    if _missing_item(order, item_ids)[0]:
        return "Error: some item not found"   # v1 does not name the item here (exchanges do)
    order = db.orders.mut(order_id)
    order["status"] = "return requested"
    order["return_items"] = sorted(item_ids)
    order["return_payment_method_id"] = payment_method_id
    return dumps(order)


# ----------------------------------------------------------------------------- schemas
_ORDER_ID = string_param("The order id, which starts with '#', e.g. '#W0000000'.")
_PM = string_param("A payment method id from the user's profile, e.g. 'gift_card_0000000' or 'credit_card_0000000'.")
_ITEMS = array_param("Item ids (not product ids), e.g. ['1008292230']; an id may repeat.", {"type": "string"})
_NEW_ITEMS = array_param("The replacement item ids, position by position; each must be a variant of the same "
                 "product as the item it replaces.", {"type": "string"})
_ADDR = {
    "address1": string_param("First address line, e.g. '123 Main St'."),
    "address2": string_param("Second address line, e.g. 'Apt 1', or ''."),
    "city": string_param("City, e.g. 'Austin'."),
    "state": string_param("State code, e.g. 'TX'."),
    "country": string_param("Country, e.g. 'USA'."),
    "zip": string_param("Zip code, e.g. '78701'."),
}
_CONFIRM = " Explain the change and get an explicit 'yes' from the user before calling."

RETAIL_TOOLS: list[Tool] = [
    *COMMON_TOOLS,
    Tool("cancel_pending_order", cancel_pending_order, True, fn_schema(
        "cancel_pending_order",
        "Cancel an order whose status is 'pending'. Gift-card payments are refunded to the card at once, "
        "other methods within 5-7 business days. Returns the updated order." + _CONFIRM,
        {"order_id": _ORDER_ID,
         "reason": string_param("Why the order is cancelled.", enum=list(CANCEL_REASONS))})),
    Tool("exchange_delivered_order_items", exchange_delivered_order_items, True, fn_schema(
        "exchange_delivered_order_items",
        "Exchange items of a 'delivered' order for other variants of the same products. Can be done once "
        "per order; collect every item first." + _CONFIRM,
        {"order_id": _ORDER_ID, "item_ids": _ITEMS, "new_item_ids": _NEW_ITEMS,
         "payment_method_id": _PM})),
    Tool("find_user_id_by_email", find_user_id_by_email, False, fn_schema(
        "find_user_id_by_email", "Look up a user id from an email address; errors if no user matches.",
        {"email": string_param("The email address, e.g. 'jane@example.com'.")})),
    Tool("find_user_id_by_name_zip", find_user_id_by_name_zip, False, fn_schema(
        "find_user_id_by_name_zip",
        "Look up a user id from first name, last name and zip code; use it when the email is unknown.",
        {"first_name": string_param("First name, e.g. 'Jane'."), "last_name": string_param("Last name, e.g. 'Doe'."),
         "zip": string_param("Zip code, e.g. '12345'.")})),
    Tool("get_order_details", get_order_details, False, fn_schema(
        "get_order_details", "Show an order: status, items, address, fulfilment and payments.",
        {"order_id": _ORDER_ID})),
    Tool("get_product_details", get_product_details, False, fn_schema(
        "get_product_details", "Show a product and all of its variants (item ids, options, price, availability).",
        {"product_id": string_param("The product id, e.g. '6086499569' (not an item id).")})),
    Tool("get_user_details", get_user_details, False, fn_schema(
        "get_user_details", "Show a user's profile: name, address, email, payment methods and orders.",
        {"user_id": string_param("The user id, e.g. 'jane_doe_1234'.")})),
    Tool("list_all_product_types", list_all_product_types, False, fn_schema(
        "list_all_product_types", "List every product type (name -> product id).", {})),
    Tool("modify_pending_order_address", modify_pending_order_address, True, fn_schema(
        "modify_pending_order_address", "Change the shipping address of a 'pending' order." + _CONFIRM,
        {"order_id": _ORDER_ID, **_ADDR})),
    Tool("modify_pending_order_items", modify_pending_order_items, True, fn_schema(
        "modify_pending_order_items",
        "Swap items of a 'pending' order for other variants of the same products. Can be done once per "
        "order; collect every item first." + _CONFIRM,
        {"order_id": _ORDER_ID, "item_ids": _ITEMS, "new_item_ids": _NEW_ITEMS, "payment_method_id": _PM})),
    Tool("modify_pending_order_payment", modify_pending_order_payment, True, fn_schema(
        "modify_pending_order_payment", "Pay a 'pending' order with a different payment method." + _CONFIRM,
        {"order_id": _ORDER_ID, "payment_method_id": _PM})),
    Tool("modify_user_address", modify_user_address, True, fn_schema(
        "modify_user_address", "Change a user's default address." + _CONFIRM,
        {"user_id": string_param("The user id, e.g. 'jane_doe_1234'."), **_ADDR})),
    Tool("return_delivered_order_items", return_delivered_order_items, True, fn_schema(
        "return_delivered_order_items",
        "Request the return of items of a 'delivered' order; the refund goes to the original payment method "
        "or a gift card. The user gets return instructions by email." + _CONFIRM,
        {"order_id": _ORDER_ID, "item_ids": _ITEMS, "payment_method_id": _PM})),
]
RETAIL_TOOLS.sort(key=lambda t: t.name)
RETAIL_TOOL_MAP = {t.name: t for t in RETAIL_TOOLS}
