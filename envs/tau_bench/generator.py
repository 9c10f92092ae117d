"""Deterministic generator of Tau-bench-style data (same schema as v1) and tasks with gold actions.

``generate_dataset(domain, seed, n_users, n_tasks)`` builds the database (retail: users, orders,
products with variants; airline: users, flights, reservations) and two task splits, ``train``
(``n_tasks``) and ``test`` (``n_tasks // 5``, at least 10), with templated instructions in the
style of the v1 retail train split. Everything derives from ``random.Random`` seeded with the
arguments, so the same arguments give byte-identical data. Each task's gold actions are replayed
at generation time and a task is kept only if all its gold writes succeed and change the
database; the same tools run on official and generated data. The policy texts below are ours.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from .common import run_tool
from .data import Dataset, Task, canonical

# ============================================================================ policies
RETAIL_POLICY = """# Store support policy (generated data)

You are a support agent for an online store. You can cancel or change pending orders, arrange returns and exchanges of delivered orders, update a customer's default address, and answer questions about the customer's own profile, orders and our products.

- Identify the customer first: find their user id from their email, or from their first name, last name and zip code. Do this even if they tell you a user id.
- Help only that customer. Refuse requests about other customers.
- Before any change (cancel, modify, return, exchange, address update), state exactly what you are going to do and wait for an explicit "yes".
- Make at most one tool call per turn, and do not write to the customer in the same turn as a tool call.
- Use only facts from the customer or the tools. Do not invent procedures or give personal opinions.
- Transfer to a human agent only when the request is outside what the tools can do.

## Orders
- Order statuses: 'pending', 'processed', 'delivered', 'cancelled'. Only pending orders can be cancelled or changed, and only delivered orders can be returned or exchanged. Check the status first.
- Cancelling needs the order id and a reason: 'no longer needed' or 'ordered by mistake'. Gift-card payments go back to the card at once, other refunds take 5-7 business days.
- A pending order can have its address, its payment method (a different single method; a gift card must cover the total) or its items changed. Items can be changed only once per order and only to another available variant of the same product; collect every item before calling the tool. A payment method must cover or receive the price difference.
- Returns need the order id, the items and a refund method: the original payment method or a gift card.
- Exchanges work like item changes but for delivered orders, and can be done once per order.
"""

AIRLINE_POLICY = """# Airline support policy (generated data)

The current time is 2024-05-15 15:00:00 EST. You are a support agent for an airline. You can book, change and cancel reservations.

- Get the user id first; for changes also get the reservation id.
- Before booking or changing anything, state the details and wait for an explicit "yes".
- Make at most one tool call per turn, and do not write to the customer in the same turn as a tool call.
- Use only facts from the customer or the tools. Refuse requests against this policy. Transfer to a human agent only when the tools cannot handle the request.

## Booking
- At most five passengers, all on the same flights and cabin; collect first name, last name and date of birth for each.
- Payment: at most one travel certificate, one credit card and three gift cards, all from the user's profile; the amounts must add up to the total price.
- Free checked bags per passenger: regular members 0/1/2 (basic economy/economy/business), silver 1/2/3, gold 2/3/3. Each extra bag costs $50. Travel insurance costs $30 per passenger.

## Changes
- Basic economy flights cannot be changed; other reservations can change flights but keep origin, destination and trip type. Any cabin can be changed for the whole reservation. The user pays or is refunded the price difference with one gift card or credit card.
- Bags can be added but not removed; insurance cannot be added after booking.
- Passenger details can be changed but not the number of passengers.

## Cancellation
- Reservations can be cancelled within 24 hours of booking, when the airline cancelled a flight, for business class, or with travel insurance for health or weather reasons. Refunds go to the original payment methods.
"""

# ============================================================================ name pools
FIRST = ["Ava", "Liam", "Noah", "Emma", "Mia", "Lucas", "Sofia", "Ethan", "Olivia", "Yusuf", "Fatima",
         "Chen", "Aarav", "Isabella", "Omar", "Harper", "Juan", "Mei", "Ivan", "Amelia", "Raj", "Lei",
         "Anya", "Daiki", "Sara", "Mohamed", "James", "Evelyn", "Mason", "Aisha"]
LAST = ["Brown", "Li", "Garcia", "Kim", "Rossi", "Muller", "Patel", "Nguyen", "Smith", "Lopez", "Silva",
        "Khan", "Johnson", "Davis", "Kovacs", "Ahmed", "Lee", "Martin", "Thomas", "Wilson", "Santos", "Ito"]
STREETS = ["Main Street", "Oak Avenue", "Maple Drive", "River Road", "Sunset Drive", "Elm Street", "Hillcrest Drive",
           "Lakeview Drive", "Park Avenue", "Willow Lane", "Cedar Street", "Pine Lane"]
CITIES = [("Austin", "TX", "787"), ("Denver", "CO", "802"), ("Seattle", "WA", "981"), ("Boston", "MA", "021"),
          ("Chicago", "IL", "606"), ("Phoenix", "AZ", "850"), ("Columbus", "OH", "432"), ("Portland", "OR", "972"),
          ("San Diego", "CA", "921"), ("Philadelphia", "PA", "191"), ("Charlotte", "NC", "282"), ("Dallas", "TX", "752")]
TRAITS = ["patient", "polite", "busy", "curious", "direct", "organized", "impatient", "cautious", "friendly",
          "logical", "shy", "confident", "flexible", "independent", "pessimistic"]

# product name -> option name -> values
CATALOG: dict[str, dict[str, list[str]]] = {
    "T-Shirt": {"color": ["blue", "red", "black", "white"], "size": ["S", "M", "L", "XL"], "material": ["cotton", "polyester"]},
    "Water Bottle": {"capacity": ["500ml", "750ml", "1000ml"], "material": ["glass", "stainless steel", "plastic"], "color": ["blue", "green", "black"]},
    "Desk Lamp": {"color": ["white", "black", "silver"], "brightness": ["low", "medium", "high"], "power source": ["USB", "AC adapter", "battery"]},
    "Running Shoes": {"size": ["8", "9", "10", "11"], "color": ["black", "white", "red"], "material": ["mesh", "leather"]},
    "Headphones": {"type": ["over-ear", "on-ear", "in-ear"], "connectivity": ["wired", "wireless"], "color": ["black", "white", "blue"]},
    "Coffee Maker": {"color": ["black", "stainless steel"], "capacity": ["1 cup", "4 cups", "8 cups"], "type": ["drip", "espresso"]},
    "Backpack": {"color": ["black", "grey", "green", "navy"], "size": ["small", "medium", "large"], "material": ["nylon", "polyester"]},
    "Mechanical Keyboard": {"switch type": ["linear", "tactile", "clicky"], "backlight": ["none", "white", "RGB"], "size": ["full size", "80%"]},
    "Yoga Mat": {"thickness": ["4mm", "6mm", "8mm"], "material": ["PVC", "natural rubber", "TPE"], "color": ["pink", "blue", "green"]},
    "Smart Watch": {"color": ["black", "silver", "gold"], "band material": ["silicone", "leather", "metal"], "display": ["LCD", "AMOLED"]},
    "Electric Kettle": {"capacity": ["1L", "1.5L", "2L"], "material": ["plastic", "glass", "stainless steel"], "color": ["white", "black", "silver"]},
    "Office Chair": {"material": ["mesh", "fabric", "leather"], "color": ["black", "gray", "blue"], "armrest": ["fixed", "adjustable"]},
}


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _address(rng: random.Random) -> dict[str, str]:
    city, state, zp = rng.choice(CITIES)
    return {"address1": f"{rng.randint(10, 999)} {rng.choice(STREETS)}",
            "address2": f"Suite {rng.randint(100, 999)}", "city": city, "country": "USA", "state": state,
            "zip": zp + _digits(rng, 2)}


def _unique(rng: random.Random, make, used: set) -> str:
    while True:
        x = make()
        if x not in used:
            used.add(x)
            return x


def _new_person(rng: random.Random, used: set) -> tuple[str, str, str]:
    """A first name, last name and unique user id (``first_last_1234``)."""
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return first, last, _unique(rng, lambda: f"{first.lower()}_{last.lower()}_{_digits(rng, 4)}", used)


def _payment_methods(rng: random.Random, kinds: list[str], used: set, details) -> dict[str, Any]:
    """Payment methods of the given kinds, keyed by a unique id (``credit_card_1234567``);
    ``details(kind)`` draws the fields that sit between ``source`` and ``id``."""
    pms: dict[str, Any] = {}
    for kind in kinds:
        pmid = _unique(rng, lambda: f"{kind}_{_digits(rng, 7)}", used)
        pms[pmid] = {"source": kind, **details(kind), "id": pmid}
    return pms


def _card(rng: random.Random) -> dict[str, str]:
    return {"brand": rng.choice(["visa", "mastercard"]), "last_four": _digits(rng, 4)}


def _retail_payment(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "gift_card":
        return {"balance": rng.choice([0, rng.randint(1, 300)])}
    return _card(rng) if kind == "credit_card" else {}


def _airline_payment(rng: random.Random, kind: str) -> dict[str, Any]:
    if kind == "credit_card":
        return _card(rng)
    return {"amount": rng.choice([100, 150, 250, rng.randint(10, 400)])}


def _replay_ok(ds: Dataset, tools, actions: list[dict]) -> bool:
    """All writes succeed and the final database differs from the base."""
    db = ds.new_db()
    for a in actions:
        obs = run_tool(tools, db, a["name"], a["kwargs"])
        if obs.startswith("Error") or obs.startswith("Unknown"):
            return False
    return any(canonical(v) != ds.base_canonical(t, k) for (t, k), v in db.touched().items())


# ============================================================================ retail
def _gen_retail_db(rng: random.Random, n_users: int) -> dict[str, dict[str, Any]]:
    used: set = set()
    products: dict[str, Any] = {}
    for name, opts in CATALOG.items():
        pid = _unique(rng, lambda: _digits(rng, 10), used)
        combos = list(itertools.product(*opts.values()))
        rng.shuffle(combos)
        variants = {}
        base_price = rng.uniform(20, 600)
        for combo in combos[: max(4, len(combos) // 2)]:
            iid = _unique(rng, lambda: _digits(rng, 10), used)
            variants[iid] = {"item_id": iid, "options": dict(zip(opts, combo)), "available": rng.random() < 0.8,
                             "price": round(base_price * rng.uniform(0.85, 1.15), 2)}
        products[pid] = {"name": name, "product_id": pid, "variants": variants}
    users: dict[str, Any] = {}
    orders: dict[str, Any] = {}
    plist = list(products.values())
    for _ in range(n_users):
        first, last, uid = _new_person(rng, used)
        kinds = rng.sample(["gift_card", "credit_card", "paypal"], rng.randint(1, 3))
        pms = _payment_methods(rng, kinds, used, lambda kind: _retail_payment(rng, kind))
        addr = _address(rng)
        user = {"name": {"first_name": first, "last_name": last}, "address": addr,
                "email": f"{first.lower()}.{last.lower()}{_digits(rng, 4)}@example.com",
                "payment_methods": pms, "orders": []}
        for _o in range(rng.randint(1, 4)):
            oid = _unique(rng, lambda: "#W" + _digits(rng, 7), used)
            items = []
            for _i in range(rng.randint(1, 4)):
                p = rng.choice(plist)
                v = rng.choice(list(p["variants"].values()))
                items.append({"name": p["name"], "product_id": p["product_id"], "item_id": v["item_id"],
                              "price": v["price"], "options": dict(v["options"])})
            status = rng.choice(["pending", "pending", "processed", "delivered", "delivered", "cancelled"])
            pm = rng.choice(list(pms))
            total = round(sum(i["price"] for i in items), 2)
            fulfil = [] if status in ("pending", "cancelled") else [
                {"tracking_id": [_digits(rng, 12)], "item_ids": [i["item_id"] for i in items]}]
            history = [{"transaction_type": "payment", "amount": total, "payment_method_id": pm}]
            if status == "cancelled":
                history.append({"transaction_type": "refund", "amount": total, "payment_method_id": pm})
            orders[oid] = {"order_id": oid, "user_id": uid, "address": dict(addr), "items": items,
                           "fulfillments": fulfil, "status": status, "payment_history": history}
            user["orders"].append(oid)
        users[uid] = user
    return {"users": users, "orders": orders, "products": products}


def _opts_text(opts: dict[str, str]) -> str:
    return "{" + ", ".join(f"'{k}': '{v}'" for k, v in opts.items()) + "}"


def _retail_task(rng: random.Random, ds: Dataset, uid: str) -> dict[str, Any] | None:
    users, orders, products = ds.tables["users"], ds.tables["orders"], ds.tables["products"]
    user = users[uid]
    by_email = rng.random() < 0.5
    name = user["name"]
    ident = ({"name": "find_user_id_by_email", "kwargs": {"email": user["email"]}} if by_email else
             {"name": "find_user_id_by_name_zip", "kwargs": {"first_name": name["first_name"],
                                                             "last_name": name["last_name"],
                                                             "zip": user["address"]["zip"]}})
    who = (f"Your name is {name['first_name']} {name['last_name']} and your "
           + (f"email is {user['email']}." if by_email else f"zip code is {user['address']['zip']}."))
    traits = ", ".join(rng.sample(TRAITS, rng.randint(1, 3)))
    actions = [ident]
    sentences = []
    candidates = [orders[o] for o in user["orders"] if orders[o]["status"] in ("pending", "delivered")]
    rng.shuffle(candidates)
    n_intents = rng.choice([1, 1, 2])
    pms = list(user["payment_methods"])

    def variant_swap(order, k):
        items = [it for it in order["items"]]
        rng.shuffle(items)
        olds, news, texts = [], [], []
        for it in items:
            if len(olds) >= k or it["item_id"] in olds:
                continue
            choices = [v for v in products[it["product_id"]]["variants"].values()
                       if v["available"] and v["item_id"] != it["item_id"]]
            if not choices:
                continue
            v = rng.choice(choices)
            olds.append(it["item_id"])
            news.append(v["item_id"])
            changed = {k2: v2 for k2, v2 in v["options"].items() if it["options"].get(k2) != v2}
            texts.append(f"{it['name']} {_opts_text(it['options'])} to {_opts_text(changed)}")
        return olds, news, texts

    def swap_items(order, tool, verb) -> bool:
        """Gold calls + instruction for swapping 1-2 items of ``order`` for other variants (an exchange
        of a delivered order or an item change of a pending one); False when no variant is available."""
        oid = order["order_id"]
        olds, news, texts = variant_swap(order, rng.randint(1, 2))
        if not olds:
            return False
        pm = rng.choice(pms)
        for pid in dict.fromkeys(next(it["product_id"] for it in order["items"] if it["item_id"] == o) for o in olds):
            actions.append({"name": "get_product_details", "kwargs": {"product_id": pid}})
        actions.append({"name": tool, "kwargs": {
            "order_id": oid, "item_ids": olds, "new_item_ids": news, "payment_method_id": pm}})
        sentences.append(f"For {oid}, {verb} {'; '.join(texts)}; via {pm}.")
        return True

    for order in candidates[:n_intents]:
        oid = order["order_id"]
        actions.append({"name": "get_order_details", "kwargs": {"order_id": oid}})
        if order["status"] == "pending":
            kind = rng.choice(["cancel", "address", "payment", "items"])
            if kind == "cancel":
                reason = rng.choice(["no longer needed", "ordered by mistake"])
                actions.append({"name": "cancel_pending_order", "kwargs": {"order_id": oid, "reason": reason}})
                sentences.append(f"Cancel order {oid} because {reason}.")
            elif kind == "address":
                a = _address(rng)
                actions.append({"name": "modify_pending_order_address", "kwargs": {"order_id": oid, **a}})
                sentences.append(f"For {oid}, change address to {a['address1']}, {a['address2']}, {a['city']}, "
                                 f"{a['state']} {a['zip']}, {a['country']}.")
            elif kind == "payment":
                cur = order["payment_history"][0]["payment_method_id"]
                others = [p for p in pms if p != cur]
                if not others:
                    return None
                pm = rng.choice(others)
                actions.append({"name": "modify_pending_order_payment", "kwargs": {"order_id": oid, "payment_method_id": pm}})
                sentences.append(f"For {oid}, change payment to {pm}.")
            else:
                if not swap_items(order, "modify_pending_order_items", "modify"):
                    return None
        else:
            kind = rng.choice(["return", "exchange"])
            if kind == "return":
                k = rng.randint(1, len(order["items"]))
                chosen = rng.sample(order["items"], k)
                ids = [it["item_id"] for it in chosen]
                orig = order["payment_history"][0]["payment_method_id"]
                gcs = [p for p in pms if p.startswith("gift_card")]
                pm = rng.choice([orig] + gcs)
                actions.append({"name": "return_delivered_order_items", "kwargs": {
                    "order_id": oid, "item_ids": ids, "payment_method_id": pm}})
                sentences.append(f"Return {oid} via {pm}: " + "; ".join(it["name"] for it in chosen) + "; ")
            else:
                if not swap_items(order, "exchange_delivered_order_items", "exchange"):
                    return None
    if not sentences or rng.random() < 0.1:
        a = _address(rng)
        actions.append({"name": "modify_user_address", "kwargs": {"user_id": uid, **a}})
        sentences.append(f"Change your default address to {a['address1']}, {a['address2']}, {a['city']}, "
                         f"{a['state']} {a['zip']}, {a['country']}.")
    return {"user_id": uid, "instruction": f"{who} You are {traits}. " + " ".join(sentences),
            "actions": actions, "outputs": []}


# ============================================================================ airline
AIRPORTS = ["JFK", "LAX", "ORD", "SFO", "SEA", "ATL", "BOS", "DEN", "MIA", "DFW", "PHX", "EWR"]
DATES = [f"2024-05-{d:02d}" for d in range(1, 31)]
TODAY = "2024-05-15"


def _gen_airline_db(rng: random.Random, n_users: int) -> dict[str, dict[str, Any]]:
    used: set = set()
    flights: dict[str, Any] = {}
    n = 0
    for o, d in itertools.permutations(AIRPORTS, 2):
        if rng.random() > 0.35:
            continue
        for _k in range(rng.randint(1, 2)):
            n += 1
            fn = f"HAT{n:03d}"
            dep = rng.randint(0, 21)
            dur = rng.randint(1, 6)
            arr = dep + dur
            arr_s = f"{arr % 24:02d}:00:00" + ("+1" if arr >= 24 else "")
            base = {"basic_economy": rng.randint(50, 100), "economy": rng.randint(100, 200), "business": rng.randint(200, 500)}
            dates = {}
            for day in DATES:
                if day < TODAY:
                    dates[day] = {"status": "landed", "actual_departure_time_est": f"{day}T{dep:02d}:0{rng.randint(0, 9)}:00",
                                  "actual_arrival_time_est": f"{day}T{arr % 24:02d}:0{rng.randint(0, 9)}:00"}
                elif day == TODAY:
                    dates[day] = {"status": "on time", "estimated_departure_time_est": f"{day}T{dep:02d}:00:00",
                                  "estimated_arrival_time_est": f"{day}T{arr % 24:02d}:00:00"}
                else:
                    dates[day] = {"status": "available",
                                  "available_seats": {c: rng.randint(0, 20) for c in base},
                                  "prices": {c: int(p * rng.uniform(0.8, 1.3)) for c, p in base.items()}}
            flights[fn] = {"flight_number": fn, "origin": o, "destination": d,
                           "scheduled_departure_time_est": f"{dep:02d}:00:00", "scheduled_arrival_time_est": arr_s,
                           "dates": dates}
    users: dict[str, Any] = {}
    reservations: dict[str, Any] = {}
    flist = list(flights.values())
    for _ in range(n_users):
        first, last, uid = _new_person(rng, used)
        kinds = ["credit_card"] + rng.sample(["gift_card", "certificate"], rng.randint(0, 2))
        pms = _payment_methods(rng, kinds, used, lambda kind: _airline_payment(rng, kind))
        dob = f"{rng.randint(1950, 2000)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        user = {"name": {"first_name": first, "last_name": last}, "address": _address(rng),
                "email": f"{first.lower()}.{last.lower()}{_digits(rng, 4)}@example.com", "dob": dob,
                "payment_methods": pms,
                "saved_passengers": [{"first_name": rng.choice(FIRST), "last_name": rng.choice(LAST),
                                      "dob": f"{rng.randint(1950, 2010)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}],
                "membership": rng.choice(["regular", "silver", "gold"]), "reservations": []}
        for _r in range(rng.randint(1, 3)):
            rid = _unique(rng, lambda: "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(6)), used)
            f = rng.choice(flist)
            day = rng.choice(DATES[15:])
            cabin = rng.choice(["basic_economy", "economy", "business"])
            segs = [{"origin": f["origin"], "destination": f["destination"], "flight_number": f["flight_number"],
                     "date": day, "price": f["dates"][day]["prices"][cabin]}]
            ptype = "one_way"
            back = [g for g in flist if g["origin"] == f["destination"] and g["destination"] == f["origin"]]
            if back and rng.random() < 0.5:
                g = rng.choice(back)
                day2 = DATES[min(DATES.index(day) + rng.randint(1, 4), len(DATES) - 1)]
                segs.append({"origin": g["origin"], "destination": g["destination"], "flight_number": g["flight_number"],
                             "date": day2, "price": g["dates"][day2]["prices"][cabin]})
                ptype = "round_trip"
            pax = [{"first_name": first, "last_name": last, "dob": dob}]
            if rng.random() < 0.4:
                pax.append(dict(user["saved_passengers"][0]))
            ins = rng.choice(["yes", "no"])
            total = sum(s["price"] for s in segs) * len(pax) + (30 * len(pax) if ins == "yes" else 0)
            created = f"2024-05-{rng.randint(1, 15):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
            reservations[rid] = {"reservation_id": rid, "user_id": uid, "origin": f["origin"],
                                 "destination": f["destination"],
                                 "flight_type": ptype, "cabin": cabin, "flights": segs, "passengers": pax,
                                 "payment_history": [{"payment_id": next(iter(pms)), "amount": total}],
                                 "created_at": created, "total_baggages": len(pax), "nonfree_baggages": 0,
                                 "insurance": ins}
            user["reservations"].append(rid)
        users[uid] = user
    return {"users": users, "flights": flights, "reservations": reservations}


def _airline_task(rng: random.Random, ds: Dataset, uid: str) -> dict[str, Any] | None:
    users, flights, reservations = ds.tables["users"], ds.tables["flights"], ds.tables["reservations"]
    user = users[uid]
    card = next(p for p, m in user["payment_methods"].items() if m["source"] == "credit_card")
    traits = ", ".join(rng.sample(TRAITS, rng.randint(1, 2)))
    rid = rng.choice(user["reservations"])
    res = reservations[rid]
    actions: list[dict[str, Any]] = [{"name": "get_user_details", "kwargs": {"user_id": uid}}]
    kind = rng.choice(["cancel", "bags", "passengers", "cabin", "book"])
    if kind == "cancel":
        actions += [{"name": "get_reservation_details", "kwargs": {"reservation_id": rid}},
                    {"name": "cancel_reservation", "kwargs": {"reservation_id": rid}}]
        goal = f"You want to cancel your reservation {rid} because of a change of plan."
    elif kind == "bags":
        extra = rng.randint(1, 3)
        actions += [{"name": "get_reservation_details", "kwargs": {"reservation_id": rid}},
                    {"name": "update_reservation_baggages", "kwargs": {
                        "reservation_id": rid, "total_baggages": res["total_baggages"] + extra,
                        "nonfree_baggages": res["nonfree_baggages"] + extra, "payment_id": card}}]
        goal = (f"You want to add {extra} checked bag(s) to reservation {rid}; you accept to pay for them "
                f"with your credit card {card}.")
    elif kind == "passengers":
        pax = [dict(p) for p in res["passengers"]]
        new = {"first_name": rng.choice(FIRST), "last_name": rng.choice(LAST),
               "dob": f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
        pax[-1] = new
        actions += [{"name": "get_reservation_details", "kwargs": {"reservation_id": rid}},
                    {"name": "update_reservation_passengers", "kwargs": {"reservation_id": rid, "passengers": pax}}]
        goal = (f"On reservation {rid}, you want to replace the passenger {res['passengers'][-1]['first_name']} "
                f"by {new['first_name']} {new['last_name']}, born {new['dob']}.")
    elif kind == "cabin":
        if res["cabin"] == "business":
            return None
        segs = [{"flight_number": f["flight_number"], "date": f["date"]} for f in res["flights"]]
        actions += [{"name": "get_reservation_details", "kwargs": {"reservation_id": rid}},
                    {"name": "update_reservation_flights", "kwargs": {
                        "reservation_id": rid, "cabin": "business", "flights": segs, "payment_id": card}}]
        goal = f"You want to upgrade reservation {rid} to business class and pay the difference with {card}."
    else:
        f = rng.choice(list(flights.values()))
        day = rng.choice(DATES[16:])
        cabin = rng.choice(["economy", "business"])
        info = f["dates"][day]
        if info["available_seats"][cabin] < 1:
            return None
        price = info["prices"][cabin]
        ins = rng.choice(["yes", "no"])
        total = price + (30 if ins == "yes" else 0)
        pax = [{"first_name": user["name"]["first_name"], "last_name": user["name"]["last_name"], "dob": user["dob"]}]
        actions += [{"name": "search_direct_flight", "kwargs": {"origin": f["origin"], "destination": f["destination"], "date": day}},
                    {"name": "book_reservation", "kwargs": {
                        "user_id": uid, "origin": f["origin"], "destination": f["destination"], "flight_type": "one_way",
                        "cabin": cabin, "flights": [{"flight_number": f["flight_number"], "date": day}],
                        "passengers": pax, "payment_methods": [{"payment_id": card, "amount": total}],
                        "total_baggages": 0, "nonfree_baggages": 0, "insurance": ins}}]
        goal = (f"You want to book a one-way {cabin.replace('_', ' ')} flight from {f['origin']} to {f['destination']} "
                f"on {day}, flight {f['flight_number']}, just for yourself, no checked bags, "
                f"{'with' if ins == 'yes' else 'without'} travel insurance, paid with your credit card {card}.")
    return {"user_id": uid, "instruction": f"Your user id is {uid}. You are {traits}. {goal}",
            "actions": actions, "outputs": []}


# ============================================================================ entry point
DEFAULT_USERS = {"retail": 150, "airline": 150}
DEFAULT_TASKS = 200
_CACHE: dict[tuple, Dataset] = {}


def generate_dataset(domain: str, seed: int = 0, n_users: int | None = None, n_tasks: int | None = None) -> Dataset:
    """Generate (or fetch from the per-process cache) a dataset; deterministic in its arguments."""
    if domain not in ("retail", "airline"):
        raise ValueError(f"unknown domain {domain!r}")
    n_users = int(n_users or DEFAULT_USERS[domain])
    n_tasks = int(n_tasks or DEFAULT_TASKS)
    key = (domain, int(seed), n_users, n_tasks)
    if key in _CACHE:
        return _CACHE[key]
    rng = random.Random(f"hero-gym-tau-{domain}-{seed}-{n_users}")
    if domain == "retail":
        from .tools_retail import RETAIL_TOOL_MAP as tools
        tables, make_task, policy = _gen_retail_db(rng, n_users), _retail_task, RETAIL_POLICY
    else:
        from .tools_airline import AIRLINE_TOOL_MAP as tools
        tables, make_task, policy = _gen_airline_db(rng, n_users), _airline_task, AIRLINE_POLICY
    ds = Dataset(domain=domain, source="generated", ident=f"generated:{domain}:{seed}:{n_users}:{n_tasks}",
                 tables=tables, tasks={}, policy=policy, tool_schemas=None)
    uids = list(tables["users"])
    for split, count in (("train", n_tasks), ("test", max(10, n_tasks // 5))):
        trng = random.Random(f"hero-gym-tau-tasks-{domain}-{seed}-{n_users}-{split}")
        out: list[Task] = []
        attempts = 0
        while len(out) < count and attempts < count * 50:
            attempts += 1
            d = make_task(trng, ds, trng.choice(uids))
            if d is None or not _replay_ok(ds, tools, d["actions"]):
                continue
            i = len(out)
            out.append(Task.from_dict(d, f"gen-{domain}-s{seed}/{split}/{i}", i, split))
        ds.tasks[split] = out
    _CACHE[key] = ds
    return ds
