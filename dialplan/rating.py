"""Billing arithmetic for one leg (DESIGN §4, docs/internals.md "Rating rule", docs/rates.md).

`rate()` is the one rating function: FreeSWITCH's times in, (billed seconds, cost) out.
The rest are its parts, kept public for the router's max-duration arithmetic and tests.

Decimal only; a float anywhere in the inputs is a TypeError, because a float rate has
already lost the money it claims to hold. Rounding happens once, at the end, half-up:
rounding per increment is how billing disputes start (DESIGN §11).
"""
from __future__ import annotations

import decimal
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["billed_seconds", "answered_seconds", "leg_cost", "rate_leg", "parse_increments",
           "to_decimal", "MAX_INCREMENT", "Tariff", "Rated", "rate", "talk_seconds",
           "tariff_at", "ROUNDING_MODES", "BILLSEC", "CEIL_MS", "MAX_BILLED_SECONDS", "MAX_COST",
           "SENT_BYE", "answered_by_carrier_only"]

# How an answered leg's talk time becomes whole seconds (a carrier agreement chooses):
BILLSEC = "billsec"     # FreeSWITCH's own billsec (end_epoch - answer_epoch): the default
CEIL_MS = "ceil_ms"     # every started second: ceil(billmsec / 1000)
ROUNDING_MODES = (BILLSEC, CEIL_MS)

# No carrier bills in increments longer than an hour; a bigger number is a typo in a deck.
MAX_INCREMENT = 3600

# What the ledger holds (billed_seconds integer, cost numeric(18,6)): a leg beyond it is
# unrated and counted, never truncated and never a write PostgreSQL refuses.
MAX_BILLED_SECONDS = 2**31 - 1
MAX_COST = Decimal("999999999999.999999")

# Enough digits that no intermediate product is rounded by the context before we round
# once ourselves (the default context has 28 significant digits).
_CTX = decimal.Context(prec=60, rounding=ROUND_HALF_UP)


def to_decimal(value, what: str = "amount") -> Decimal:
    """Decimal from Decimal/int/str; floats and bools are refused."""
    if isinstance(value, bool) or isinstance(value, float):
        raise TypeError(f"{what} must be Decimal, int or str, not {type(value).__name__}")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, (int, str)):
        try:
            d = Decimal(value)
        except decimal.InvalidOperation:
            raise ValueError(f"{what} is not a decimal number: {value!r}") from None
    else:
        raise TypeError(f"{what} must be Decimal, int or str, not {type(value).__name__}")
    if not d.is_finite():
        raise ValueError(f"{what} must be finite, got {value!r}")
    return d


def _check_increments(initial: int, subsequent: int) -> None:
    for name, v, low in (("initial", initial, 0), ("subsequent", subsequent, 1)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} increment must be an int, not {type(v).__name__}")
        if not low <= v <= MAX_INCREMENT:
            raise ValueError(f"{name} increment must be {low}..{MAX_INCREMENT}, got {v}")


def billed_seconds(seconds: int, initial: int, subsequent: int) -> int:
    """Seconds the carrier bills for an answered leg of `seconds`.

    s <= 0 → 0; s <= initial → initial; else initial + ceil((s - initial)/subsequent)*subsequent.
    """
    _check_increments(initial, subsequent)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TypeError("seconds must be an int")
    if seconds <= 0:
        return 0
    if seconds <= initial:
        return initial
    over = seconds - initial
    return initial + -(-over // subsequent) * subsequent     # integer ceil, no float


def answered_seconds(billmsec: int | None) -> int:
    """Started seconds of talk time: ceil(billmsec / 1000); None or <= 0 → 0."""
    if billmsec is None:
        return 0
    if isinstance(billmsec, bool) or not isinstance(billmsec, int):
        raise TypeError("billmsec must be an int or None")
    if billmsec <= 0:
        return 0
    return -(-billmsec // 1000)


def leg_cost(billmsec: int | None, rate_per_min, connect_fee, initial: int, subsequent: int,
             places: int = 6) -> tuple[int, Decimal]:
    """(billed seconds, cost) of one leg. Unanswered (billmsec None/0) costs nothing.

    cost = connect_fee + rate_per_min * billed / 60, rounded once, half-up, to `places`.
    An answered leg is charged whatever its hangup cause: the carrier bills it too.
    """
    if isinstance(places, bool) or not isinstance(places, int) or not 0 <= places <= 12:
        raise ValueError(f"places must be an int 0..12, got {places!r}")
    rate = to_decimal(rate_per_min, "rate_per_min")
    fee = to_decimal(connect_fee, "connect_fee")
    if rate < 0 or fee < 0:
        raise ValueError("rate_per_min and connect_fee must not be negative")
    quantum = Decimal(1).scaleb(-places)
    billed = billed_seconds(answered_seconds(billmsec), initial, subsequent)
    if billed == 0:
        return 0, Decimal(0).quantize(quantum)
    exact = _CTX.add(fee, _CTX.divide(_CTX.multiply(rate, Decimal(billed)), Decimal(60)))
    return billed, exact.quantize(quantum, rounding=ROUND_HALF_UP, context=_CTX)


def rate_leg(billmsec: int | None, rate, places: int = 6) -> tuple[int, Decimal]:
    """leg_cost with the terms taken from a rate object (rate_per_min, connect_fee,
    initial_increment, subsequent_increment), e.g. ratedeck.Rate."""
    return leg_cost(billmsec, rate.rate_per_min, rate.connect_fee,
                    rate.initial_increment, rate.subsequent_increment, places)


def parse_increments(text: str) -> tuple[int, int]:
    """"60/6" → (60, 6). Raises ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError("increments must be a string like '60/6'")
    parts = text.strip().split("/")
    if len(parts) != 2:
        raise ValueError(f"increments must look like 'initial/subsequent' (e.g. 60/6), got {text!r}")
    values = []
    for name, part in zip(("initial", "subsequent"), parts):
        part = part.strip()
        if not part.isascii() or not part.isdigit():
            raise ValueError(f"{name} increment in {text!r} is not a whole number of seconds")
        values.append(int(part))
    initial, subsequent = values
    _check_increments(initial, subsequent)
    return initial, subsequent


# --- the rating function ----------------------------------------------------------------
@dataclass(frozen=True)
class Tariff:
    """A carrier's terms for one destination, in force from `effective_from` (None: always)."""
    rate_per_min: Decimal
    connect_fee: Decimal = Decimal(0)
    initial: int = 60
    subsequent: int = 60
    effective_from: datetime | None = None


@dataclass(frozen=True)
class Rated:
    """The result of rating one leg. `cost` is None exactly when the leg is unrated
    (answered but no tariff, or no talk time known): never a silent 0."""
    billed_seconds: int
    cost: Decimal | None
    unrated_reason: str | None = None


def talk_seconds(billsec: int | None, billmsec: int | None, rounding: str = BILLSEC) -> int | None:
    """Whole seconds of talk time by the carrier's rounding; None when the needed figure
    is unknown. BILLSEC takes FreeSWITCH's billsec as it is (whole seconds of billmsec when
    billsec is unknown); CEIL_MS rounds billmsec up to the started second (billsec when
    billmsec is unknown)."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDING_MODES)}, got {rounding!r}")
    for name, v in (("billsec", billsec), ("billmsec", billmsec)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise TypeError(f"{name} must be an int or None")
    if rounding == CEIL_MS and billmsec is not None:
        return answered_seconds(billmsec)
    if billsec is None:
        # billsec unknown (an event source without it): the whole seconds of billmsec.
        return None if billmsec is None else max(billmsec // 1000, 0)
    return max(billsec, 0)


# mod_sofia's `sip_hangup_disposition` for a leg it hung up with a BYE. It sends a BYE only
# in a dialog the far end answered: the channel was answered, or sofia had the carrier's 2xx
# (TFLAG_ANS, set when the 2xx arrives, before its SDP is negotiated; sofia_on_hangup in
# mod_sofia.c). Otherwise it CANCELs (send_cancel) or refuses (send_refuse).
SENT_BYE = "send_bye"


def answered_by_carrier_only(answered: bool, hangup_disposition: str | None) -> bool:
    """Did the carrier answer a leg FreeSWITCH never marked answered? Its 200 OK came and
    was ACKed, then FreeSWITCH hung the leg up with a BYE before marking it answered: an
    SDP answer with no codec it can use (INCOMPATIBLE_DESTINATION, endpoint disposition
    `NO CODECS`; seen on FreeSWITCH 1.10.12). The carrier counts that call answered and
    bills it, so it is rated as an answer of a moment (`rate(refused_answer=True)`)."""
    return not answered and hangup_disposition == SENT_BYE


def tariff_at(tariffs, at: datetime | None) -> Tariff | None:
    """The tariff in force at `at` (the answer time): the one with the latest
    effective_from <= at; a tariff without a start is in force since always. With `at`
    unknown, only a tariff without a start can be chosen."""
    best = None
    for t in tariffs:
        start = t.effective_from
        if start is not None and (at is None or start > at):
            continue
        if best is None or (start is not None and (best.effective_from is None
                                                   or start >= best.effective_from)):
            best = t
    return best


def rate(*, answered: bool, billsec: int | None, billmsec: int | None, tariffs,
         answered_at: datetime | None = None, rounding: str = BILLSEC,
         places: int = 6, refused_answer: bool = False,
         unreadable: frozenset[str] | set[str] = frozenset()) -> Rated:
    """Rate one leg from FreeSWITCH's figures (DESIGN §4).

    - Unanswered: 0 seconds, cost 0 (rated, not unrated).
    - Answered by the carrier only (`refused_answer`, see answered_by_carrier_only): the
      carrier's 200 OK was ACKed and at once torn down by FreeSWITCH, which never marked
      the leg answered. Rated as an answer of a moment: the tariff in force at
      `answered_at` (the caller passes the hangup time: the 2xx came moments before),
      talk seconds 0 by FreeSWITCH's billsec (so the connect fee alone), 1 for a
      `ceil_ms` carrier (the started second: the initial increment).
    - Answered: the tariff in force at the answer time (tariff_at), talk seconds by
      `rounding` (talk_seconds), billed by the increments (billed_seconds; 0 talk seconds
      bill 0), cost = connect fee + rate x billed / 60, rounded once, half-up, to `places`.
      An answered leg always pays its connect fee, whatever its hangup cause, even with 0
      billed seconds (e.g. answered for 20 ms then failed: docs/rates.md).
    - Answered without a tariff, or without any talk figure: unrated (cost None).
    - A figure the switch sent but in a form that could not be read (`unreadable`:
      "answer", "billsec", "billmsec"; each then passed as unknown): unrated when the
      rating depends on it. An unreadable answer time always (answered or not is unknown);
      the talk figure `rounding` reads (billsec, or billmsec for CEIL_MS) of an answered
      leg. Never a cost made up from the other figures.
    """
    if isinstance(places, bool) or not isinstance(places, int) or not 0 <= places <= 12:
        raise ValueError(f"places must be an int 0..12, got {places!r}")
    quantum = Decimal(1).scaleb(-places)
    if unreadable:
        if not answered and "answer" in unreadable:
            return Rated(0, None, "the switch's answer time could not be read")
        figure = "billmsec" if rounding == CEIL_MS else "billsec"
        if answered and figure in unreadable:
            return Rated(0, None, f"the switch's {figure} could not be read")
    if not answered and not refused_answer:
        return Rated(0, Decimal(0).quantize(quantum))
    tariff = tariff_at(tariffs, answered_at)
    if tariff is None:
        return Rated(0, None, "no tariff in force at the answer time")
    if answered:
        talk = talk_seconds(billsec, billmsec, rounding)
    else:
        # FreeSWITCH's billsec of a leg it never answered is 0; the carrier's own record
        # has the moment between its 200 OK and our BYE: billsec 0, a started millisecond.
        talk = talk_seconds(0, 1, rounding)
    if talk is None:
        return Rated(0, None, "answered, but no billsec/billmsec known")
    rate_ = to_decimal(tariff.rate_per_min, "rate_per_min")
    fee = to_decimal(tariff.connect_fee, "connect_fee")
    if rate_ < 0 or fee < 0:
        raise ValueError("rate_per_min and connect_fee must not be negative")
    billed = billed_seconds(talk, tariff.initial, tariff.subsequent)
    exact = _CTX.add(fee, _CTX.divide(_CTX.multiply(rate_, Decimal(billed)), Decimal(60)))
    cost = exact.quantize(quantum, rounding=ROUND_HALF_UP, context=_CTX)
    if billed > MAX_BILLED_SECONDS or cost > MAX_COST:
        return Rated(0, None, f"{billed} s costing {cost} is beyond what the ledger holds")
    return Rated(billed, cost)
