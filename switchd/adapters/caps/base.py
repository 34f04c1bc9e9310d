"""The caps interface: scopes, admissions and the contract every backend keeps (DESIGN.md §4).

A call holds one *slot* in each scope that applies to it. A slot is a lease keyed by the call
UUID: it lasts `ttl` seconds unless the owning daemon refreshes it, so a crashed daemon never
leaks a slot. Counting UUIDs in sets (never increment/decrement) is what keeps counts from
leaking or going negative (DESIGN.md §11).

A scope is identified by `(kind, name)`; its `limit` is the policy applied when a call asks
for a slot, not part of its identity, so changing a limit at runtime needs no migration.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

SCOPE_KINDS = frozenset({"global", "tenant", "carrier", "campaign"})
# Produced only by PolicyCaps when it refuses because Redis is unreachable (fail_closed).
BACKEND_KIND = "backend"

DEFAULT_TTL = 60.0


class CapsError(Exception):
    """Base of every caps error."""


class CapsUnavailable(CapsError):
    """The backend could not be reached or did not answer; nothing is known to have changed."""


def _check_name(kind: str, name: str) -> None:
    if kind not in SCOPE_KINDS and kind != BACKEND_KIND:
        raise ValueError(f"unknown scope kind {kind!r} (expected one of {sorted(SCOPE_KINDS)})")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} scope needs a non-empty name")


@dataclass(frozen=True)
class Scope:
    """A concurrency scope. `limit=None` means unlimited: counted, never checked."""
    kind: str
    name: str
    limit: int | None = None

    def __post_init__(self):
        _check_name(self.kind, self.name)
        if self.limit is not None and (not isinstance(self.limit, int) or self.limit < 0):
            raise ValueError(f"{self.kind}:{self.name}: limit must be an int >= 0 or None")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True)
class CpsScope:
    """A calls-per-second limit on a scope (carrier or tenant, usually).

    Enforced as a sliding-window log: at most `allowance` new calls in any window of
    `window` seconds, where window = max(1 s, 1/rate) and allowance = floor(rate x window).
    So 10 -> 10 per 1 s, 0.5 -> 1 per 2 s, 2.5 -> 2 per 1 s: fractional rates round *down*,
    never above what a carrier was promised.
    """
    kind: str
    name: str
    per_second: Decimal | float

    def __post_init__(self):
        _check_name(self.kind, self.name)
        if not self.per_second > 0:
            raise ValueError(f"{self.kind}:{self.name}: per_second must be > 0")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def window(self) -> float:
        return max(1.0, 1.0 / float(self.per_second))

    @property
    def allowance(self) -> int:
        # The epsilon keeps 0.3 x (1/0.3) = 0.999... from rounding down to zero.
        return max(1, math.floor(float(self.per_second) * self.window + 1e-9))


@dataclass(frozen=True)
class Admission:
    admitted: bool
    refused_scope: Scope | CpsScope | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.admitted

    @property
    def carrier_refused(self) -> bool:
        """Refused by a carrier's own limit (channels or calls per second): another
        carrier may still take the call."""
        return (not self.admitted and self.refused_scope is not None
                and self.refused_scope.kind == "carrier")


# Reasons, shared by every backend so callers and logs can rely on them.
ADMITTED = "admitted"
ALREADY_HELD = "already held"
CAP_REACHED = "cap reached"
CPS_REACHED = "cps limit reached"
NOT_HELD = "call not held"
UNAVAILABLE = "caps backend unavailable"


def dedupe(scopes: Iterable[Scope | CpsScope]) -> list:
    """One entry per (kind, name); the first wins. Two limits for one scope is a caller bug."""
    seen: dict[str, Scope | CpsScope] = {}
    for s in scopes:
        prev = seen.setdefault(s.key, s)
        if prev is not s and prev != s:
            raise ValueError(f"scope {s.key} given twice with different limits")
    return list(seen.values())


class CapsBackend(ABC):
    """Contract shared by LocalCaps, RedisCaps and PolicyCaps (tests/test_caps_contract.py).

    - `acquire` is atomic and all-or-nothing across scopes and rates; no scope is ever
      over-admitted. Acquiring for a call that already holds a live lease is idempotent: scopes
      it already holds are neither checked nor counted twice, scopes it does not hold yet are
      checked and added (still all-or-nothing), the lease is extended, and CPS is not charged
      again.
    - `release` is idempotent: True only for the call that actually gave slots back.
    - `move` adds and removes scopes of a held call in one step (carrier failover): the call
      never holds old and new carrier at once; when the new scope is full nothing changes.
    - Every held call has one lease (all its scopes expire together), extended by `refresh`.
    """

    name: str = "abstract"
    ttl: float = DEFAULT_TTL

    @abstractmethod
    def acquire(self, call_uuid: str, scopes: Sequence[Scope], cps: Sequence[CpsScope] = (),
                now: float | None = None) -> Admission:
        """Take one slot in every scope (and one admission in every rate) or none at all."""

    @abstractmethod
    def register(self, call_uuid: str, scopes: Sequence[Scope], *, replace: bool = False) -> None:
        """Record slots for a call that is already up, without checking limits.

        For resynchronisation (after a Redis outage, or a daemon restart whose leases ran
        out): the call exists whatever the counters say, so it must be counted. `replace=True`
        makes the call hold exactly `scopes`; otherwise they are added to what it holds.
        """

    @abstractmethod
    def move(self, call_uuid: str, add: Sequence[Scope] = (), remove: Sequence[Scope] = (),
             cps: Sequence[CpsScope] = ()) -> Admission:
        """Atomically drop `remove` and take `add` (checked) for a held call; all or nothing.

        Refused with reason `call not held` when the call has no live lease.
        """

    def swap_carrier(self, call_uuid: str, old: Scope, new: Scope,
                     cps: Sequence[CpsScope] = ()) -> Admission:
        """Failover to another carrier: one step, so the call never holds both carriers."""
        if old.kind != "carrier" or new.kind != "carrier":
            raise ValueError("swap_carrier takes two carrier scopes")
        return self.move(call_uuid, add=[new], remove=[old], cps=cps)

    @abstractmethod
    def release(self, call_uuid: str) -> bool:
        """Give back every slot of the call. True only if it held a live lease."""

    @abstractmethod
    def rename(self, old_uuid: str, new_uuid: str) -> bool:
        """Follow a CHANNEL_UUID rename: the lease moves to the new UUID.

        If the new UUID already holds a lease, the old one is released (one call, one set of
        slots). False when the old UUID held nothing.
        """

    @abstractmethod
    def refresh(self, call_uuids: Iterable[str]) -> list[str]:
        """Extend the leases of these calls (adopting them for this node).

        Returns the UUIDs that had no live lease (expired or never acquired): their slots may
        already be someone else's, so the caller should re-register or account for them.
        """

    @abstractmethod
    def reconcile(self, live_call_uuids: Iterable[str], grace: float = 5.0) -> list[str]:
        """Release this node's calls that are not in the switch's live set; return them.

        Calls acquired less than `grace` seconds ago are kept: the live set may have been
        taken before their channel existed.
        """

    @abstractmethod
    def count(self, scope: Scope) -> int:
        """Live slots held in the scope (all nodes)."""

    @abstractmethod
    def calls(self) -> list[str]:
        """UUIDs of the live calls this node holds."""

    @abstractmethod
    def held(self, call_uuid: str) -> frozenset[tuple[str, str]] | None:
        """The (kind, name) scopes a call holds, or None when it holds no live lease."""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the backend answers."""

    def close(self) -> None:
        """Release client resources (not the slots)."""
