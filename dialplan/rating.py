"""Billing arithmetic for one leg (DESIGN §4, docs/internals.md "Rating rule").

Decimal only; a float anywhere in the inputs is a TypeError, because a float rate has
already lost the money it claims to hold. Rounding happens once, at the end, half-up:
rounding per increment is how billing disputes start (DESIGN §11).
"""
from __future__ import annotations

import decimal
from decimal import ROUND_HALF_UP, Decimal

__all__ = ["billed_seconds", "answered_seconds", "leg_cost", "rate_leg", "parse_increments",
           "to_decimal", "MAX_INCREMENT"]

# No carrier bills in increments longer than an hour; a bigger number is a typo in a deck.
MAX_INCREMENT = 3600

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
