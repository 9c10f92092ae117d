"""Airline tools (14) with Tau-bench v1 semantics.

Written from the tool schemas, the airline policy and the conformance recordings. Facts kept from
v1 (checked by the conformance tests): new reservations get the id ``HATHAT`` (then ``HATHAU``,
``HATHAV`` if taken) and ``created_at`` = the policy's "current time" 2024-05-15T15:00:00; a
certificate used for a booking is removed from the profile, gift cards are debited; seats are not
decremented; extra bags cost $50, insurance $30 per passenger; ``send_certificate`` uses the id
``certificate_3221322``; cancelling appends negative refund entries and marks the reservation
``cancelled`` without touching balances. Like v1, the update tools do not enforce the policy
rules the policy says "the API does not check".
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from .common import COMMON_TOOLS, Tool, arr, dumps, fn_schema, s
from .data import TauDB, fast_copy

NEW_RESERVATION_IDS = ("HATHAT", "HATHAU", "HATHAV")
CREATED_AT = "2024-05-15T15:00:00"
CERTIFICATE_IDS = ("certificate_3221322", "certificate_9350346", "certificate_7230346")
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


def _check_flight(db: TauDB, flight_number: Any, date: Any, cabin: str, n_passengers: int) -> tuple[Any, str | None]:
    flight = db.flights.get(flight_number)
    if flight is None:
        return None, f"Error: flight {flight_number} not found"
    day = flight["dates"].get(date) if isinstance(date, str) else None
    if day is None:
        return None, f"Error: flight {flight_number} not found on date {date}"
    if day["status"] != "available":
        return None, f"Error: flight {flight_number} not available on date {date}"
    if day["available_seats"][cabin] < n_passengers:
        return None, f"Error: not enough seats on flight {flight_number}"
    return flight, None


# ------------------------------------------------------------------------------- reads
def get_user_details(db: TauDB, user_id: str) -> str:
    user = db.users.get(user_id)
    return dumps(user) if user is not None else "Error: user not found"


def get_reservation_details(db: TauDB, reservation_id: str) -> str:
    res = db.reservations.get(reservation_id)
    return dumps(res) if res is not None else "Error: reservation not found"


def list_all_airports(db: TauDB) -> str:
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
            day = f["dates"].get(date) if isinstance(date, str) else None
            if day is not None and day["status"] == "available":
                results.append({**_without_dates(f), **day})
    return dumps(results)


def _next_day(date: str) -> str:
    try:
        return (_dt.date.fromisoformat(date) + _dt.timedelta(days=1)).isoformat()
    except ValueError:
        return date


def search_onestop_flight(db: TauDB, origin: str, destination: str, date: str) -> str:
    """Pairs [leg1, leg2] with leg1 origin -> X on ``date`` and leg2 X -> destination departing after
    leg1 arrives (on the next day when leg1 arrives '+1'), both 'available'. Each leg carries its
    ``date``. (v1 computed the next day by string arithmetic on the day number, which breaks for
    days 01-08; we use real date arithmetic. On the official data no flight is bookable on those
    days, so the outputs are the same; it only matters for other data.)"""
    if not isinstance(date, str):
        return dumps([])
    results = []
    flights = list(db.flights.values())
    for f1 in flights:
        if f1["origin"] != origin or f1["destination"] == destination:
            continue
        d1 = f1["dates"].get(date)
        if d1 is None or d1["status"] != "available":
            continue
        date2 = _next_day(date) if "+1" in f1["scheduled_arrival_time_est"] else date
        for f2 in flights:
            if f2["origin"] != f1["destination"] or f2["destination"] != destination:
                continue
            d2 = f2["dates"].get(date2)
            if d2 is None or d2["status"] != "available":
                continue
            if f1["scheduled_arrival_time_est"] < f2["scheduled_departure_time_est"]:
                leg1 = {**_without_dates(f1), **d1, "date": date}
                leg2 = {**_without_dates(f2), **d2, "date": date2}
                results.append([leg1, leg2])
    return dumps(results)


# ------------------------------------------------------------------------------ writes
def book_reservation(db: TauDB, user_id: str, origin: str, destination: str, flight_type: str, cabin: str,
                     flights: list[dict[str, Any]], passengers: list[dict[str, Any]],
                     payment_methods: list[dict[str, Any]], total_baggages: int, nonfree_baggages: int,
                     insurance: str) -> str:
    user = db.users.get(user_id)
    if user is None:
        return "Error: user not found"
    reservation_id = next((r for r in NEW_RESERVATION_IDS if r not in db.reservations), None)
    if reservation_id is None:
        return "Error: too many new reservations"
    if cabin not in CABINS:
        return f"Error: invalid cabin {cabin}"
    n = len(passengers)
    booked = []
    total_price = 0
    for fl in flights:
        fn, date = fl.get("flight_number"), fl.get("date")
        data, err = _check_flight(db, fn, date, cabin, n)
        if err:
            return err
        price = data["dates"][date]["prices"][cabin]
        booked.append({"flight_number": fn, "date": date, "price": price,
                       "origin": data["origin"], "destination": data["destination"]})
        total_price += price * n
    if insurance == "yes":
        total_price += INSURANCE_FEE * n
    total_price += BAG_FEE * nonfree_baggages
    methods = user["payment_methods"]
    for pm in payment_methods:
        pid, amount = pm.get("payment_id"), pm.get("amount")
        if pid not in methods:
            return f"Error: payment method {pid} not found"
        if methods[pid]["source"] in ("gift_card", "certificate") and methods[pid]["amount"] < amount:
            return f"Error: not enough balance in payment method {pid}"
    paid = sum(pm["amount"] for pm in payment_methods)
    if paid != total_price:
        return f"Error: payment amount does not add up, total price is {total_price}, but paid {paid}"
    user = db.users.mut(user_id)
    for pm in payment_methods:
        pid = pm["payment_id"]
        m = user["payment_methods"].get(pid)
        if m is None:
            continue
        if m["source"] == "gift_card":
            m["amount"] -= pm["amount"]
        elif m["source"] == "certificate":
            del user["payment_methods"][pid]   # the rest of a certificate is not refundable
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
    if reservation_id not in db.reservations:
        return "Error: reservation not found"
    res = db.reservations.mut(reservation_id)
    refunds = [{"payment_id": p["payment_id"], "amount": -p["amount"]} for p in res["payment_history"]]
    res["payment_history"].extend(refunds)
    res["status"] = "cancelled"
    return dumps(res)


def _charge(db: TauDB, user_id: str, payment_id: str, total_price: Any) -> str | None:
    """Check a payment method for an update; returns an error or None (nothing written)."""
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
    if total_price != 0:
        res["payment_history"].append({"payment_id": payment_id, "amount": total_price})
        if db.users[res["user_id"]]["payment_methods"][payment_id]["source"] == "gift_card":
            db.users.mut(res["user_id"])["payment_methods"][payment_id]["amount"] -= total_price


def send_certificate(db: TauDB, user_id: str, amount: float) -> str:
    user = db.users.get(user_id)
    if user is None:
        return "Error: user not found"
    for pid in CERTIFICATE_IDS:
        if pid not in user["payment_methods"]:
            user = db.users.mut(user_id)
            user["payment_methods"][pid] = {"source": "certificate", "amount": amount, "id": pid}
            return f"Certificate {pid} added to user {user_id} with amount {amount}."
    return "Error: too many certificates"


def update_reservation_baggages(db: TauDB, reservation_id: str, total_baggages: int, nonfree_baggages: int,
                                payment_id: str) -> str:
    res = db.reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    total_price = BAG_FEE * max(0, nonfree_baggages - res["nonfree_baggages"])
    err = _charge(db, res["user_id"], payment_id, total_price)
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
    res = db.reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    if cabin not in CABINS:
        return f"Error: invalid cabin {cabin}"
    n = len(res["passengers"])
    new_flights = []
    total_price = 0
    for fl in flights:
        fl = dict(fl)
        kept = next((old for old in res["flights"]
                     if old["flight_number"] == fl.get("flight_number") and old["date"] == fl.get("date")
                     and cabin == res["cabin"]), None)
        if kept is not None:
            fl["price"], fl["origin"], fl["destination"] = kept["price"], kept["origin"], kept["destination"]
        else:
            data, err = _check_flight(db, fl.get("flight_number"), fl.get("date"), cabin, n)
            if err:
                return err
            fl["price"] = data["dates"][fl["date"]]["prices"][cabin]
            fl["origin"], fl["destination"] = data["origin"], data["destination"]
        total_price += fl["price"] * n
        new_flights.append(fl)
    total_price -= sum(f["price"] for f in res["flights"]) * n
    err = _charge(db, res["user_id"], payment_id, total_price)
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
    res = db.reservations.get(reservation_id)
    if res is None:
        return "Error: reservation not found"
    if len(passengers) != len(res["passengers"]):
        return "Error: number of passengers does not match"
    res = db.reservations.mut(reservation_id)
    res["passengers"] = fast_copy(passengers)
    return dumps(res)


# ----------------------------------------------------------------------------- schemas
_RES_ID = s("The reservation id, e.g. 'ZFA04Y'.")
_USER_ID = s("The user id, e.g. 'jane_doe_1234'.")
_PAY_ID = s("A payment id from the user's profile, e.g. 'credit_card_1234567', 'gift_card_1234567' or "
            "'certificate_1234567'.")
_CABIN = {"type": "string", "enum": list(CABINS)}
_FLIGHTS = arr("The flight segments, each a flight number and a date.", {
    "type": "object",
    "properties": {"flight_number": s("Flight number, e.g. 'HAT001'."),
                   "date": s("Date as 'YYYY-MM-DD', e.g. '2024-05-01'.")},
    "required": ["flight_number", "date"]})
_PASSENGERS = arr("The passengers, each with first name, last name and date of birth.", {
    "type": "object",
    "properties": {"first_name": s("First name, e.g. 'Noah'."), "last_name": s("Last name, e.g. 'Brown'."),
                   "dob": s("Date of birth as 'YYYY-MM-DD'.")},
    "required": ["first_name", "last_name", "dob"]})
_SEARCH = {"origin": s("Origin airport (3-letter IATA code), e.g. 'JFK'."),
           "destination": s("Destination airport (3-letter IATA code), e.g. 'LAX'."),
           "date": s("Date as 'YYYY-MM-DD', e.g. '2024-05-01'.")}

AIRLINE_TOOLS: list[Tool] = [
    *COMMON_TOOLS,
    Tool("book_reservation", book_reservation, True, fn_schema(
        "book_reservation", "Book a new reservation for a user; the payments must add up to the total price.",
        {"user_id": _USER_ID,
         "origin": s("Origin airport code, e.g. 'SFO'."),
         "destination": s("Destination airport code, e.g. 'JFK'."),
         "flight_type": {"type": "string", "enum": ["one_way", "round_trip"]},
         "cabin": _CABIN,
         "flights": _FLIGHTS,
         "passengers": _PASSENGERS,
         "payment_methods": arr("How the booking is paid: payment ids from the profile with amounts.", {
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
