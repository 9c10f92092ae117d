"""Airline tools (14) with Tau-bench v1 semantics.

Written from the tool schemas, the airline policy, the conformance recordings and v1's tool code
(facts only). Kept from v1, including its quirks:

* New reservations get the id ``HATHAT``, else ``HATHAU``, else ``HATHAV``; a fourth booking in an
  episode reuses ``HATHAV`` and overwrites that reservation (and lists it again on the user).
  ``created_at`` is the policy's "current time" 2024-05-15T15:00:00.
* The booked (and the updated) flight segments are the agent's segment objects, copied, with
  ``price``, ``origin`` and ``destination`` set; other keys the agent put there stay.
* A certificate used for a booking is removed from the profile, gift cards are debited; seats are
  not decremented; extra bags cost $50, insurance $30 per passenger.
* ``send_certificate`` adds ``certificate_3221322``, then ``certificate_3221323``, then
  ``certificate_3221324``; with all three present it adds nothing and returns nothing (``"None"``).
* ``get_reservation_details`` with an unknown id says ``Error: user not found`` (v1's text).
* The cabin is not checked against the enum: an unknown cabin fails only where a price or a seat
  count is looked up (``Error: 'first'``), and passes when nothing needs pricing.
* ``search_onestop_flight`` computes the second leg's date as v1 does (``2024-05-{day + 1}``, so
  ``2024-05-09`` -> ``2024-05-10`` but ``2024-05-01`` -> ``2024-05-2``, which matches no flight),
  accepts a connection whose arrival equals the departure, and fills the second leg's status,
  seats and prices from the *first* day's entry (raising ``KeyError`` when the second flight has
  none).
* ``update_reservation_flights`` does not update the reservation's ``cabin``; cancelling appends
  negative refund entries and marks the reservation ``cancelled`` without touching balances. Like
  v1, the update tools do not enforce the rules the policy says "the API does not check".
"""

from __future__ import annotations

import copy
from typing import Any

from .common import COMMON_TOOLS, Tool, array_param, dumps, fn_schema, get_user_details, has, string_param
from .data import TauDB, fast_copy

NEW_RESERVATION_IDS = ("HATHAT", "HATHAU", "HATHAV")
CREATED_AT = "2024-05-15T15:00:00"
CERTIFICATE_IDS = ("certificate_3221322", "certificate_3221323", "certificate_3221324")
BAG_FEE = 50
INSURANCE_FEE = 30
CABINS = ("basic_economy", "economy", "business")

# The official airline airports (IATA code -> city), as listed by v1's list_all_airports.
OFFICIAL_AIRPORTS = {
    "SFO": "San Francisco", "JFK": "New York", "LAX": "Los Angeles", "ORD": "Chicago",
    "DFW": "Dallas", "DEN": "Denver", "SEA": "Seattle", "ATL": "Atlanta", "MIA": "Miami",
    "BOS": "Boston", "PHX": "Phoenix", "IAH": "Houston", "LAS": "Las Vegas", "MCO": "Orlando",
    "EWR": "Newark", "CLT": "Charlotte", "MSP": "Minneapolis", "DTW": "Detroit",
    "PHL": "Philadelphia", "LGA": "LaGuardia",
}


def _without_dates(flight: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in flight.items() if k != "dates"}


def _price_segment(db: TauDB, segment: dict[str, Any], cabin: Any, passengers: Any) -> str | None:
    """Check one requested segment and fill its ``price``/``origin``/``destination`` in place;
    returns v1's error text, or ``None``. Lookups happen in v1's order, so a missing key or an
    unknown cabin raises the same ``KeyError`` as in v1."""
    number = segment["flight_number"]
    if not has(db.flights, number):
        return f"Error: flight {number} not found"
    flight = db.flights[number]
    if segment["date"] not in flight["dates"]:
        return f"Error: flight {number} not found on date {segment['date']}"
    day = flight["dates"][segment["date"]]
    if day["status"] != "available":
        return f"Error: flight {number} not available on date {segment['date']}"
    if day["available_seats"][cabin] < len(passengers):
        return f"Error: not enough seats on flight {number}"
    segment["price"] = day["prices"][cabin]
    segment["origin"] = flight["origin"]
    segment["destination"] = flight["destination"]
    return None


# ------------------------------------------------------------------------------- reads
def get_reservation_details(db: TauDB, reservation_id: str) -> str:
    if has(db.reservations, reservation_id):
        return dumps(db.reservations[reservation_id])
    return "Error: user not found"   # sic: v1's text for an unknown reservation


def list_all_airports(db: TauDB) -> str:
    """v1's fixed list on the official data; on other data, the airports its flights use."""
    airports = getattr(db, "airports", None)
    if airports is None:
        codes = set()
        for f in db.flights.values():
            codes.add(f["origin"])
            codes.add(f["destination"])
        if codes <= set(OFFICIAL_AIRPORTS):
            return dumps(OFFICIAL_AIRPORTS)
        return dumps({c: OFFICIAL_AIRPORTS.get(c, c) for c in sorted(codes)})
    return dumps(airports)


def search_direct_flight(db: TauDB, origin: str, destination: str, date: str) -> str:
    """Flights origin -> destination whose status on ``date`` is 'available', in table order:
    the flight without its calendar, merged with that day's status, seats and prices."""
    results = []
    for f in db.flights.values():
        if f["origin"] == origin and f["destination"] == destination:
            if date in f["dates"] and f["dates"][date]["status"] == "available":
                results.append({**_without_dates(f), **f["dates"][date]})
    return dumps(results)


def v1_next_day(date: str) -> str:
    """v1's second-leg date: the day number plus one, pasted into May 2024 without zero padding."""
    return f"2024-05-{int(date[-2:]) + 1}"


def search_onestop_flight(db: TauDB, origin: str, destination: str, date: str) -> str:
    """Pairs [leg1, leg2]: leg1 origin -> X on ``date``, leg2 X -> destination on ``date`` (or v1's
    next day when leg1 arrives '+1'), leg1's arrival not after leg2's departure (string
    comparison), both 'available' on their dates. Each leg carries its ``date``; leg2's status,
    seats and prices are those of ``date`` (v1's behaviour, see the module docstring)."""
    flights = list(db.flights.values())
    results = []
    for f1 in flights:
        if f1["origin"] != origin:
            continue
        for f2 in flights:
            if f2["destination"] != destination or f1["destination"] != f2["origin"]:
                continue
            date2 = v1_next_day(date) if "+1" in f1["scheduled_arrival_time_est"] else date
            if f1["scheduled_arrival_time_est"] > f2["scheduled_departure_time_est"]:
                continue
            if date not in f1["dates"] or date2 not in f2["dates"]:
                continue
            if f1["dates"][date]["status"] != "available" or f2["dates"][date2]["status"] != "available":
                continue
            leg1 = {**_without_dates(f1), **f1["dates"][date], "date": date}
            leg2 = {**_without_dates(f2), **f2["dates"][date], "date": date2}
            results.append([leg1, leg2])
    return dumps(results)


# ------------------------------------------------------------------------------ writes
def book_reservation(db: TauDB, user_id: str, origin: str, destination: str, flight_type: str, cabin: str,
                     flights: list[dict[str, Any]], passengers: list[dict[str, Any]],
                     payment_methods: list[dict[str, Any]], total_baggages: int, nonfree_baggages: int,
                     insurance: str) -> str:
    if not has(db.users, user_id):
        return "Error: user not found"
    user = db.users[user_id]
    reservation_id = next((r for r in NEW_RESERVATION_IDS[:-1] if r not in db.reservations),
                          NEW_RESERVATION_IDS[-1])
    booked = copy.deepcopy(flights)
    total_price = 0
    for segment in booked:
        err = _price_segment(db, segment, cabin, passengers)
        if err:
            return err
        total_price += segment["price"] * len(passengers)
    if insurance == "yes":
        total_price += INSURANCE_FEE * len(passengers)
    total_price += BAG_FEE * nonfree_baggages
    methods = user["payment_methods"]
    for pm in payment_methods:
        pid, amount = pm["payment_id"], pm["amount"]
        if pid not in methods:
            return f"Error: payment method {pid} not found"
        if methods[pid]["source"] in ("gift_card", "certificate") and methods[pid]["amount"] < amount:
            return f"Error: not enough balance in payment method {pid}"
    paid = sum(pm["amount"] for pm in payment_methods)
    if paid != total_price:
        return f"Error: payment amount does not add up, total price is {total_price}, but paid {paid}"
    user = db.users.mut(user_id)
    for pm in payment_methods:
        method = user["payment_methods"][pm["payment_id"]]   # KeyError for a certificate named twice, as in v1
        if method["source"] == "gift_card":
            method["amount"] -= pm["amount"]
        elif method["source"] == "certificate":
            del user["payment_methods"][pm["payment_id"]]   # the rest of a certificate is not refundable
    reservation = {
        "reservation_id": reservation_id, "user_id": user_id, "origin": origin,
        "destination": destination, "flight_type": flight_type, "cabin": cabin, "flights": booked,
        "passengers": fast_copy(passengers), "payment_history": fast_copy(payment_methods),
        "created_at": CREATED_AT, "total_baggages": total_baggages,
        "nonfree_baggages": nonfree_baggages, "insurance": insurance,
    }
    db.reservations.put(reservation_id, reservation)
    user["reservations"].append(reservation_id)
    return dumps(reservation)


def cancel_reservation(db: TauDB, reservation_id: str) -> str:
    if not has(db.reservations, reservation_id):
        return "Error: reservation not found"
    res = db.reservations.mut(reservation_id)
    refunds = [{"payment_id": p["payment_id"], "amount": -p["amount"]} for p in res["payment_history"]]
    res["payment_history"].extend(refunds)
    res["status"] = "cancelled"
    return dumps(res)


def _check_update_payment(db: TauDB, user_id: str, payment_id: str, total_price: Any) -> str | None:
    """Check a payment method for an update; returns v1's error text or None (nothing written)."""
    methods = db.users[user_id]["payment_methods"]
    if payment_id not in methods:
        return "Error: payment method not found"
    m = methods[payment_id]
    if m["source"] == "certificate":
        return "Error: certificate cannot be used to update reservation"
    if m["source"] == "gift_card" and m["amount"] < total_price:
        return "Error: gift card balance is not enough"
    return None


def _pay(db: TauDB, res: dict[str, Any], payment_id: str, total_price: Any) -> None:
    if db.users[res["user_id"]]["payment_methods"][payment_id]["source"] == "gift_card":
        db.users.mut(res["user_id"])["payment_methods"][payment_id]["amount"] -= total_price
    if total_price != 0:
        res["payment_history"].append({"payment_id": payment_id, "amount": total_price})


def send_certificate(db: TauDB, user_id: str, amount: float) -> str | None:
    if not has(db.users, user_id):
        return "Error: user not found"
    for pid in CERTIFICATE_IDS:
        if pid not in db.users[user_id]["payment_methods"]:
            user = db.users.mut(user_id)
            user["payment_methods"][pid] = {"source": "certificate", "amount": amount, "id": pid}
            return f"Certificate {pid} added to user {user_id} with amount {amount}."
    return None   # v1 returns nothing once the three certificate ids are taken


def update_reservation_baggages(db: TauDB, reservation_id: str, total_baggages: int, nonfree_baggages: int,
                                payment_id: str) -> str:
    if not has(db.reservations, reservation_id):
        return "Error: reservation not found"
    res = db.reservations[reservation_id]
    total_price = BAG_FEE * max(0, nonfree_baggages - res["nonfree_baggages"])
    err = _check_update_payment(db, res["user_id"], payment_id, total_price)
    if err:
        return err
    res = db.reservations.mut(reservation_id)
    res["total_baggages"] = total_baggages
    res["nonfree_baggages"] = nonfree_baggages
    _pay(db, res, payment_id, total_price)
    return dumps(res)


def update_reservation_flights(db: TauDB, reservation_id: str, cabin: str, flights: list[dict[str, Any]],
                               payment_id: str) -> str:
    """Replace the flights, priced in ``cabin``. A segment kept with the same number, date and cabin keeps
    its booked price; other segments are priced now. The user pays (or is refunded) the difference
    new total - old total, times the number of passengers."""
    if not has(db.reservations, reservation_id):
        return "Error: reservation not found"
    res = db.reservations[reservation_id]
    n = len(res["passengers"])
    new_flights = copy.deepcopy(flights)
    total_price = 0
    for segment in new_flights:
        kept = [old for old in res["flights"]
                if old["flight_number"] == segment["flight_number"] and old["date"] == segment["date"]
                and cabin == res["cabin"]]
        if kept:
            segment["price"] = kept[0]["price"]
            segment["origin"], segment["destination"] = kept[0]["origin"], kept[0]["destination"]
        else:
            err = _price_segment(db, segment, cabin, res["passengers"])
            if err:
                return err
        total_price += segment["price"] * n
    total_price -= sum(f["price"] for f in res["flights"]) * n
    err = _check_update_payment(db, res["user_id"], payment_id, total_price)
    if err:
        return err
    res = db.reservations.mut(reservation_id)
    _pay(db, res, payment_id, total_price)
    res["flights"] = new_flights
    # v1 prices the new segments in the requested cabin but leaves ``reservation["cabin"]`` as it
    # was; the conformance records (e.g. airline test task 2) pin this, and gold replays depend on
    # it, so we keep it for reward fidelity.
    return dumps(res)


def update_reservation_passengers(db: TauDB, reservation_id: str, passengers: list[dict[str, Any]]) -> str:
    if not has(db.reservations, reservation_id):
        return "Error: reservation not found"
    if len(passengers) != len(db.reservations[reservation_id]["passengers"]):
        return "Error: number of passengers does not match"
    res = db.reservations.mut(reservation_id)
    res["passengers"] = fast_copy(passengers)
    return dumps(res)


# ----------------------------------------------------------------------------- schemas
_RES_ID = string_param("The reservation id, e.g. 'ZFA04Y'.")
_USER_ID = string_param("The user id, e.g. 'jane_doe_1234'.")
_PAY_ID = string_param("A payment id from the user's profile, e.g. 'credit_card_1234567', 'gift_card_1234567' or "
            "'certificate_1234567'.")
_CABIN = {"type": "string", "enum": list(CABINS)}
_FLIGHTS = array_param("The flight segments, each a flight number and a date.", {
    "type": "object",
    "properties": {"flight_number": string_param("Flight number, e.g. 'HAT001'."),
                   "date": string_param("Date as 'YYYY-MM-DD', e.g. '2024-05-01'.")},
    "required": ["flight_number", "date"]})
_PASSENGERS = array_param("The passengers, each with first name, last name and date of birth.", {
    "type": "object",
    "properties": {"first_name": string_param("First name, e.g. 'Noah'."), "last_name": string_param("Last name, e.g. 'Brown'."),
                   "dob": string_param("Date of birth as 'YYYY-MM-DD'.")},
    "required": ["first_name", "last_name", "dob"]})
_SEARCH = {"origin": string_param("Origin airport (3-letter IATA code), e.g. 'JFK'."),
           "destination": string_param("Destination airport (3-letter IATA code), e.g. 'LAX'."),
           "date": string_param("Date as 'YYYY-MM-DD', e.g. '2024-05-01'.")}

AIRLINE_TOOLS: list[Tool] = [
    *COMMON_TOOLS,
    Tool("book_reservation", book_reservation, True, fn_schema(
        "book_reservation", "Book a new reservation for a user; the payments must add up to the total price.",
        {"user_id": _USER_ID,
         "origin": string_param("Origin airport code, e.g. 'SFO'."),
         "destination": string_param("Destination airport code, e.g. 'JFK'."),
         "flight_type": {"type": "string", "enum": ["one_way", "round_trip"]},
         "cabin": _CABIN,
         "flights": _FLIGHTS,
         "passengers": _PASSENGERS,
         "payment_methods": array_param("How the booking is paid: payment ids from the profile with amounts.", {
             "type": "object",
             "properties": {"payment_id": _PAY_ID, "amount": {"type": "number", "description": "Amount paid."}},
             "required": ["payment_id", "amount"]}),
         "total_baggages": {"type": "integer", "description": "Number of checked bags in the reservation."},
         "nonfree_baggages": {"type": "integer", "description": "Number of those bags that are paid for."},
         "insurance": {"type": "string", "enum": ["yes", "no"]}})),
    Tool("cancel_reservation", cancel_reservation, True, fn_schema(
        "cancel_reservation", "Cancel a whole reservation; payments are refunded to their methods.",
        {"reservation_id": _RES_ID})),
    Tool("get_reservation_details", get_reservation_details, False, fn_schema(
        "get_reservation_details", "Show a reservation.", {"reservation_id": _RES_ID})),
    Tool("get_user_details", get_user_details, False, fn_schema(
        "get_user_details", "Show a user's profile, including payment methods and reservation ids.",
        {"user_id": _USER_ID})),
    Tool("list_all_airports", list_all_airports, False, fn_schema(
        "list_all_airports", "List every airport code and its city.", {})),
    Tool("search_direct_flight", search_direct_flight, False, fn_schema(
        "search_direct_flight", "Find bookable direct flights between two airports on a date.", _SEARCH)),
    Tool("search_onestop_flight", search_onestop_flight, False, fn_schema(
        "search_onestop_flight", "Find bookable one-stop connections between two airports on a date.", _SEARCH)),
    Tool("send_certificate", send_certificate, True, fn_schema(
        "send_certificate", "Give a user a travel certificate (compensation). Only when the policy allows it.",
        {"user_id": _USER_ID, "amount": {"type": "number", "description": "Certificate amount in dollars."}})),
    Tool("update_reservation_baggages", update_reservation_baggages, True, fn_schema(
        "update_reservation_baggages", "Change the checked bags of a reservation; extra paid bags are charged.",
        {"reservation_id": _RES_ID,
         "total_baggages": {"type": "integer", "description": "New total number of checked bags."},
         "nonfree_baggages": {"type": "integer", "description": "New number of paid bags."},
         "payment_id": _PAY_ID})),
    Tool("update_reservation_flights", update_reservation_flights, True, fn_schema(
        "update_reservation_flights",
        "Replace the flights and/or cabin of a reservation. List every segment of the new itinerary, "
        "including unchanged ones.",
        {"reservation_id": _RES_ID, "cabin": _CABIN, "flights": _FLIGHTS, "payment_id": _PAY_ID})),
    Tool("update_reservation_passengers", update_reservation_passengers, True, fn_schema(
        "update_reservation_passengers", "Replace the passenger details (the number of passengers must stay the same).",
        {"reservation_id": _RES_ID, "passengers": _PASSENGERS})),
]
AIRLINE_TOOLS.sort(key=lambda t: t.name)
AIRLINE_TOOL_MAP = {t.name: t for t in AIRLINE_TOOLS}
