"""Traffic quality figures for reports (docs/reports.md): ASR, NER, ACD, PDD.

Pure arithmetic over counts the report has already summed; the definitions live here once
so the CLI, JSON and tests agree. Every ratio is None when its denominator is 0 (no
attempts means no ratio, not 0 %). Percentages are Decimal with 2 places, half-up.

- ASR (answer-seizure ratio) = answered / attempts.
- NER (network effectiveness ratio) = attempts the network delivered / attempts: a leg
  counts as delivered unless its disposition (dialplan.causes.disposition) is a network
  failure, `carrier_failure` or `local`. Answered, busy, declined, unknown number, rung
  out and caller-cancelled attempts all reached the callee's side.
- ACD (average call duration) = talk seconds of answered legs / answered legs.
- PDD (post-dial delay) = mean of the legs' stored pdd_ms over the legs that have one.
"""
from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Mapping

from dialplan.causes import disposition

__all__ = ["NETWORK_FAILURES", "DISPOSITIONS", "leg_disposition", "asr", "ner", "acd",
           "mean_pdd_ms", "top_causes", "percent"]

# What dialplan.causes.disposition can say about a leg.
DISPOSITIONS = ("answered", "max_duration", "media_timeout", "no_answer", "cancelled",
                "callee", "carrier_failure", "local")
# Dispositions that count against NER: the network (a carrier, or our own switch) failed.
NETWORK_FAILURES = frozenset({"carrier_failure", "local"})

_PCT = Decimal("0.01")
_ACD = Decimal("0.1")


def leg_disposition(stored: str | None, hangup_cause: str | None, sip_status: int | None,
                    answered: bool) -> str:
    """The stored disposition, or the one the same rules give from the cause and SIP
    status (rows written before dispositions were stored)."""
    if stored in DISPOSITIONS:
        return stored
    return disposition(hangup_cause, sip_status, answered)


def percent(part: int, whole: int) -> Decimal | None:
    """100 × part / whole, 2 places half-up; None when whole is 0."""
    if whole <= 0:
        return None
    return (Decimal(part * 100) / Decimal(whole)).quantize(_PCT, rounding=ROUND_HALF_UP)


def asr(answered: int, attempts: int) -> Decimal | None:
    """Answer-seizure ratio in percent."""
    return percent(answered, attempts)


def ner(dispositions: Mapping[str, int]) -> Decimal | None:
    """Network effectiveness ratio in percent, from counts per disposition."""
    attempts = sum(dispositions.values())
    failed = sum(n for d, n in dispositions.items() if d in NETWORK_FAILURES)
    return percent(attempts - failed, attempts)


def acd(talk_seconds: Decimal | int, answered: int) -> Decimal | None:
    """Average talk seconds per answered leg, 1 place half-up."""
    if answered <= 0:
        return None
    return (Decimal(talk_seconds) / answered).quantize(_ACD, rounding=ROUND_HALF_UP)


def mean_pdd_ms(total_ms: int, legs_with_pdd: int) -> int | None:
    """Mean post-dial delay in whole milliseconds (half-up)."""
    if legs_with_pdd <= 0:
        return None
    return int((Decimal(total_ms) / legs_with_pdd).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def top_causes(counts: Mapping[str | None, int], n: int) -> list[tuple[str, int]]:
    """The `n` most frequent hangup causes of failed attempts, most frequent first (ties
    by name); an unknown cause is shown as 'UNKNOWN'."""
    merged: dict[str, int] = {}
    for cause, count in counts.items():
        name = cause or "UNKNOWN"
        merged[name] = merged.get(name, 0) + count
    ordered = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
    return ordered[:max(n, 0)]

