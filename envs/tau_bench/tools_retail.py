"""Retail tools (16) with Tau-bench v1 semantics.

Written from the tool schemas, the retail policy and the conformance recordings (exact output
strings and changed records for every gold call); conformance tests check them on all official
tasks. Every tool validates first and writes last, through ``Table.mut`` (copy-on-write), so a
failing call never changes the database. Outputs are ``json.dumps`` of the affected record.
"""

from __future__ import annotations

from typing import Any

from .common import COMMON_TOOLS, Tool, arr, dumps, fn_schema, s
from .data import TauDB

CANCEL_REASONS = ("no longer needed", "ordered by mistake")


def _is_gift_card(method: dict[str, Any]) -> bool:
    return method.get("source") == "gift_card"


def _count_check(order: dict[str, Any], item_ids: list[str]) -> str | None:
    """Each requested id must occur in the order at least as often as in the request."""
    in_order = [it["item_id"] for it in order["items"]]
    for item_id in item_ids:
        if item_ids.count(item_id) > in_order.count(item_id):
            return f"Error: {item_id} not found"
    return None


def _swap_price_difference(db: TauDB, order: dict[str, Any], item_ids: list[str],
                           new_item_ids: list[str]) -> tuple[float | None, str | None]:
    """The checks shared by exchanges and pending-order item changes, in v1's order (the requested
    items are in the order, old and new lists have the same length, every new item is an available
    variant of the same product), then the unrounded price difference."""
    err = _count_check(order, item_ids)
    if err:
        return None, err
    if len(item_ids) != len(new_item_ids):
        return None, "Error: the number of items to be exchanged should match"
    return _price_difference(db, order, item_ids, new_item_ids)


def _price_difference(db: TauDB, order: dict[str, Any], item_ids: list[str],
                      new_item_ids: list[str]) -> tuple[float | None, str | None]:
    """Sum of (new price - old price), unrounded; the new item must be an available variant of the
    same product. (v1 rounds it to cents for exchanges but records the raw float for pending-order
    modifications, e.g. 0.04999999999999716; the conformance records pin both.)"""
    diff = 0
    for old_id, new_id in zip(item_ids, new_item_ids):
        item = next(it for it in order["items"] if it["item_id"] == old_id)
        product = db.products.get(item["product_id"])
        variant = (product or {}).get("variants", {}).get(new_id) if isinstance(new_id, str) else None
        if variant is None or not variant.get("available"):
            return None, f"Error: new item {new_id} not found or available"
        diff += variant["price"] - item["price"]
    return diff, None


def _address(address1: str, address2: str, city: str, state: str, country: str, zip: str) -> dict[str, str]:
    return {"address1": address1, "address2": address2, "city": city, "state": state,
            "country": country, "zip": zip}


# ------------------------------------------------------------------------------- reads
def find_user_id_by_email(db: TauDB, email: str) -> str:
    email = email.lower()
    for user_id, user in db.users.items():
        if user["email"].lower() == email:
            return user_id
    return "Error: user not found"


def find_user_id_by_name_zip(db: TauDB, first_name: str, last_name: str, zip: str) -> str:
    first, last = first_name.lower(), last_name.lower()
    for user_id, user in db.users.items():
        if (user["name"]["first_name"].lower() == first and user["name"]["last_name"].lower() == last
                and user["address"]["zip"] == zip):
            return user_id
    return "Error: user not found"


def get_order_details(db: TauDB, order_id: str) -> str:
    order = db.orders.get(order_id)
    return dumps(order) if order is not None else "Error: order not found"


def get_product_details(db: TauDB, product_id: str) -> str:
    product = db.products.get(product_id)
    return dumps(product) if product is not None else "Error: product not found"


def get_user_details(db: TauDB, user_id: str) -> str:
    user = db.users.get(user_id)
    return dumps(user) if user is not None else "Error: user not found"


def list_all_product_types(db: TauDB) -> str:
    """``{product name: product id}`` sorted by name."""
    names = {p["name"]: p["product_id"] for p in db.products.values()}
    return dumps(dict(sorted(names.items())))


# ------------------------------------------------------------------------------ writes
def cancel_pending_order(db: TauDB, order_id: str, reason: str) -> str:
    order = db.orders.get(order_id)
    if order is None:
        return "Error: order not found"
    if order["status"] != "pending":
        return "Error: non-pending order cannot be cancelled"
    if reason not in CANCEL_REASONS:
        return "Error: invalid reason"
    user = db.users.get(order["user_id"])
    refunds = []
    for p in order["payment_history"]:
        refunds.append({"transaction_type": "refund", "amount": p["amount"],
                        "payment_method_id": p["payment_method_id"]})
    # gift-card payments are refunded to the card at once (policy: "immediately if gift card")
    gift_refunds = [r for r in refunds
                    if _is_gift_card((user or {}).get("payment_methods", {}).get(r["payment_method_id"], {}))]
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
    order = db.orders.get(order_id)
    if order is None:
        return "Error: order not found"
    if order["status"] != "delivered":
        return "Error: non-delivered order cannot be exchanged"
    diff, err = _swap_price_difference(db, order, item_ids, new_item_ids)
    if err:
        return err
    diff = round(diff, 2)
    methods = db.users[order["user_id"]]["payment_methods"]
    if payment_method_id not in methods:
        return "Error: payment method not found"
    method = methods[payment_method_id]
    if _is_gift_card(method) and method["balance"] < diff:
        return "Error: insufficient gift card balance to pay for the price difference"
    order = db.orders.mut(order_id)
    order["status"] = "exchange requested"
    order["exchange_items"] = sorted(item_ids)
    order["exchange_new_items"] = sorted(new_item_ids)
    order["exchange_payment_method_id"] = payment_method_id
    order["exchange_price_difference"] = diff
    return dumps(order)


def modify_pending_order_address(db: TauDB, order_id: str, address1: str, address2: str, city: str,
                                 state: str, country: str, zip: str) -> str:
    order = db.orders.get(order_id)
    if order is None:
        return "Error: order not found"
    if order["status"] != "pending":
        return "Error: non-pending order cannot be modified"
    order = db.orders.mut(order_id)
    order["address"] = _address(address1, address2, city, state, country, zip)
    return dumps(order)


def modify_pending_order_items(db: TauDB, order_id: str, item_ids: list[str], new_item_ids: list[str],
                               payment_method_id: str) -> str:
    order = db.orders.get(order_id)
    if order is None:
        return "Error: order not found"
    if order["status"] != "pending":
        return "Error: non-pending order cannot be modified"
    diff, err = _swap_price_difference(db, order, item_ids, new_item_ids)
    if err:
        return err
    methods = db.users[order["user_id"]]["payment_methods"]
    if payment_method_id not in methods:
        return "Error: payment method not found"
    method = methods[payment_method_id]
    if _is_gift_card(method) and method["balance"] < diff:
        return "Error: insufficient gift card balance to pay for the new item"
    order = db.orders.mut(order_id)
    order["payment_history"].append({
        "transaction_type": "payment" if diff > 0 else "refund",
        "amount": abs(diff),
        "payment_method_id": payment_method_id,
    })
    if _is_gift_card(method):
        m = db.users.mut(order["user_id"])["payment_methods"][payment_method_id]
        m["balance"] = round(m["balance"] - diff, 2)
    for old_id, new_id in zip(item_ids, new_item_ids):
        item = next(it for it in order["items"] if it["item_id"] == old_id)
        variant = db.products[item["product_id"]]["variants"][new_id]
        item["item_id"] = new_id
        item["price"] = variant["price"]
        item["options"] = dict(variant["options"])
    order["status"] = "pending (item modified)"
    return dumps(order)


def modify_pending_order_payment(db: TauDB, order_id: str, payment_method_id: str) -> str:
    order = db.orders.get(order_id)
    if order is None:
        return "Error: order not found"
    if order["status"] != "pending":
        return "Error: non-pending order cannot be modified"
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
    old_method = methods.get(old_id, {})
    if _is_gift_card(method) or _is_gift_card(old_method):
        user = db.users.mut(order["user_id"])
        if _is_gift_card(method):
            m = user["payment_methods"][payment_method_id]
            m["balance"] = round(m["balance"] - amount, 2)
        if _is_gift_card(old_method):
            m = user["payment_methods"][old_id]
            m["balance"] = round(m["balance"] + amount, 2)
    return dumps(order)


def modify_user_address(db: TauDB, user_id: str, address1: str, address2: str, city: str, state: str,
                        country: str, zip: str) -> str:
    if user_id not in db.users:
        return "Error: user not found"
    user = db.users.mut(user_id)
    user["address"] = _address(address1, address2, city, state, country, zip)
    return dumps(user)


def return_delivered_order_items(db: TauDB, order_id: str, item_ids: list[str], payment_method_id: str) -> str:
    order = db.orders.get(order_id)
    if order is None:
        return "Error: order not found"
    if order["status"] != "delivered":
        return "Error: non-delivered order cannot be returned"
    if payment_method_id not in db.users[order["user_id"]]["payment_methods"]:
        return "Error: payment method not found"
    # policy: the refund goes to the original payment method or to an existing gift card
    if "gift_card" not in payment_method_id and payment_method_id != order["payment_history"][0]["payment_method_id"]:
        return "Error: payment method should be either the original payment method or a gift card"
    err = _count_check(order, item_ids)
    if err:
        return err
    order = db.orders.mut(order_id)
    order["status"] = "return requested"
    order["return_items"] = sorted(item_ids)
    order["return_payment_method_id"] = payment_method_id
    return dumps(order)


# ----------------------------------------------------------------------------- schemas
_ORDER_ID = s("The order id, which starts with '#', e.g. '#W0000000'.")
_PM = s("A payment method id from the user's profile, e.g. 'gift_card_0000000' or 'credit_card_0000000'.")
_ITEMS = arr("Item ids (not product ids), e.g. ['1008292230']; an id may repeat.", {"type": "string"})
_NEW_ITEMS = arr("The replacement item ids, position by position; each must be a variant of the same "
                 "product as the item it replaces.", {"type": "string"})
_ADDR = {
    "address1": s("First address line, e.g. '123 Main St'."),
    "address2": s("Second address line, e.g. 'Apt 1', or ''."),
    "city": s("City, e.g. 'Austin'."),
    "state": s("State code, e.g. 'TX'."),
    "country": s("Country, e.g. 'USA'."),
    "zip": s("Zip code, e.g. '78701'."),
}
_CONFIRM = " Explain the change and get an explicit 'yes' from the user before calling."

RETAIL_TOOLS: list[Tool] = [
    *COMMON_TOOLS,
    Tool("cancel_pending_order", cancel_pending_order, True, fn_schema(
        "cancel_pending_order",
        "Cancel an order whose status is 'pending'. Gift-card payments are refunded to the card at once, "
        "other methods within 5-7 business days. Returns the updated order." + _CONFIRM,
        {"order_id": _ORDER_ID,
         "reason": s("Why the order is cancelled.", enum=list(CANCEL_REASONS))})),
    Tool("exchange_delivered_order_items", exchange_delivered_order_items, True, fn_schema(
        "exchange_delivered_order_items",
        "Exchange items of a 'delivered' order for other variants of the same products. Can be done once "
        "per order; collect every item first." + _CONFIRM,
        {"order_id": _ORDER_ID, "item_ids": _ITEMS, "new_item_ids": _NEW_ITEMS,
         "payment_method_id": _PM})),
    Tool("find_user_id_by_email", find_user_id_by_email, False, fn_schema(
        "find_user_id_by_email", "Look up a user id from an email address; errors if no user matches.",
        {"email": s("The email address, e.g. 'jane@example.com'.")})),
    Tool("find_user_id_by_name_zip", find_user_id_by_name_zip, False, fn_schema(
        "find_user_id_by_name_zip",
        "Look up a user id from first name, last name and zip code; use it when the email is unknown.",
        {"first_name": s("First name, e.g. 'Jane'."), "last_name": s("Last name, e.g. 'Doe'."),
         "zip": s("Zip code, e.g. '12345'.")})),
    Tool("get_order_details", get_order_details, False, fn_schema(
        "get_order_details", "Show an order: status, items, address, fulfilment and payments.",
        {"order_id": _ORDER_ID})),
    Tool("get_product_details", get_product_details, False, fn_schema(
        "get_product_details", "Show a product and all of its variants (item ids, options, price, availability).",
        {"product_id": s("The product id, e.g. '6086499569' (not an item id).")})),
    Tool("get_user_details", get_user_details, False, fn_schema(
        "get_user_details", "Show a user's profile: name, address, email, payment methods and orders.",
        {"user_id": s("The user id, e.g. 'jane_doe_1234'.")})),
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
        {"user_id": s("The user id, e.g. 'jane_doe_1234'."), **_ADDR})),
    Tool("return_delivered_order_items", return_delivered_order_items, True, fn_schema(
        "return_delivered_order_items",
        "Request the return of items of a 'delivered' order; the refund goes to the original payment method "
        "or a gift card. The user gets return instructions by email." + _CONFIRM,
        {"order_id": _ORDER_ID, "item_ids": _ITEMS, "payment_method_id": _PM})),
]
RETAIL_TOOLS.sort(key=lambda t: t.name)
RETAIL_TOOL_MAP = {t.name: t for t in RETAIL_TOOLS}
