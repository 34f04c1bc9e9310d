"""Monthly budgets under concurrency: reservations, settlement, extension, alerts.

docs/budgets.md is the operator's page. The rules are `dialplan/budget.py`; the shared
state is a `BudgetStore` (`switchd/adapters/budget_store.py`: in process, or Redis for
several daemons). This module is the daemon's side:

- `reserve` runs on the routing path (the dialplan lookup, originate): the call's share
  of the month is reserved atomically and its max duration is what the share buys;
- everything the ESL events cause (settlement at the end of a call, extension at answer,
  renames) goes through one worker greenlet and its queue, so the event greenlet never
  waits on Redis or the switch (STYLE.md §6);
- when budget frees up, a live answered call whose limit the budget cut is extended on
  the switch: `sched_del <uuid>` (its scheduled hangups) then `sched_hangup +N <uuid>`
  with the new limit, and `switchd_max_duration` set to it (the watchdog reads it);
- a settlement that moves spend across 75/90/100 % raises an alert through `on_alert`
  (the daemon records it in PostgreSQL once per tenant, month and threshold).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

import gevent

from dialplan import budget as rules
from dialplan import policy
from switchd import metrics
from switchd.adapters.budget_store import BudgetStore, BudgetUnavailable
from switchd.adapters.db import green
from switchd.lossless_queue import LosslessQueue

log = logging.getLogger(__name__)

_ONE_DAY = timedelta(days=1)
ORPHAN_GRACE_S = 30.0   # a reservation whose call the switch never showed is dropped after this


@dataclass
class Hold:
    """One live call's reservation, as this daemon knows it."""
    call_uuid: str
    tenant: str
    month: str              # YYYY-MM the call is charged to (the month it started)
    amount: int             # micro-units reserved
    rate: object            # the tariff its duration was computed at
    ceiling: int            # micro-units its tenant limit costs at that tariff
    tenant_limit: int
    seconds: int            # its max duration now
    cut: bool               # the budget (not the tenant limit) set `seconds`
    created: float          # monotonic


@dataclass(frozen=True)
class Alert:
    tenant: str
    month: datetime
    threshold: int
    spent: Decimal
    budget: Decimal
    at: datetime


@dataclass(frozen=True)
class LiveCall:
    """What the extension needs of a live call (from the registry)."""
    answered_us: int        # 0 while not answered
    channel: str            # the channel that carries the scheduled hangup
    now_us: int             # the switch's clock now


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class BudgetBook:
    def __init__(self, store: BudgetStore, budgets: dict, seed: dict | None = None, *,
                 fail_open: bool = False, clock: Callable[[], datetime] = _utcnow,
                 monotonic: Callable[[], float] = time.monotonic, queue_max: int = 100_000):
        self.store = store
        self.budgets: dict[str, Decimal | None] = dict(budgets)
        # (tenant, 'YYYY-MM') -> micro-units this daemon last saw spent (PostgreSQL at
        # start, then the store's answers): the seed of a month the store does not hold.
        self.seen: dict[tuple[str, str], int] = {k: rules.to_micros(v)
                                                 for k, v in (seed or {}).items()}
        self.fail_open = fail_open
        self.clock, self.monotonic = clock, monotonic
        self.holds: dict[str, Hold] = {}
        self.cut: dict[str, Hold] = {}              # the holds whose limit the budget cut
        self._month: tuple | None = None            # (from, until, 'YYYY-MM') of now
        self._gauges: dict[tuple, object] = {}      # (metric, tenant) -> labelled child
        self._micros: dict = {}                     # budget Decimal -> micro-units
        self.unsettled: list[tuple] = []            # settlements the store refused; retried
        self._looked_up: set[str] = set()           # live calls asked about once (adopt)
        # Hooks the daemon sets:
        self.on_alert: Callable[[Alert], None] = lambda alert: None
        self.live_call: Callable[[str], LiveCall | None] = lambda call_uuid: None
        self.send: Callable[[str], str] | None = None          # ESL api (a whole `api` line)
        self.on_extended: Callable[[str, int], None] = lambda call_uuid, seconds: None
        self._queue = LosslessQueue(queue_max)
        self._worker = gevent.spawn(self._work)

    # --- what routing reads -------------------------------------------------------------
    @property
    def month(self) -> datetime:
        return rules.month_of(self.clock())

    def _month_key(self, now: datetime) -> str:
        """'YYYY-MM' of `now`, recomputed only when a month boundary is passed."""
        cached = self._month
        if cached is None or not cached[0] <= now < cached[1]:
            start = rules.month_of(now)
            after = rules.month_of(start + timedelta(days=32))
            cached = self._month = (start, after, f"{start:%Y-%m}")
        return cached[2]

    def budget_of(self, tenant) -> Decimal | None:
        return self.budgets.get(tenant.name, tenant.monthly_budget)

    def remaining(self, tenant) -> Decimal | None:
        """Budget minus settled spend this month, as this daemon last saw it (the quick
        100 % refusal; reservations are checked by `reserve`)."""
        budget = self.budget_of(tenant)
        if budget is None:
            return None
        spent = self.seen.get((tenant.name, self._month_key(self.clock())), 0)
        return budget - rules.from_micros(spent)

    def reserve(self, call_uuid: str, tenant, rate, now: datetime | None = None):
        """Reserve the call's share (routing path). Returns the money reserved (what its
        max duration is computed from), None when the tenant has no budget, or a Refusal
        when the store cannot be asked and the policy is fail_closed."""
        budget = self.budget_of(tenant)
        if budget is None:
            return None
        month = self._month_key(now or self.clock())
        ceiling = rules.ceiling_micros(rate, tenant.max_call_seconds)
        key = (tenant.name, month)
        try:
            granted, spent, others = self.store.reserve(
                tenant.name, month, call_uuid, self._micros_of(budget),
                self.seen.get(key, 0), ceiling)
        except BudgetUnavailable as exc:
            if not self.fail_open:
                log.warning("budget store unavailable, refusing: %s", exc,
                            extra={"call_uuid": call_uuid, "tenant": tenant.name})
                return policy.refusal("caps_unavailable", "budget store unavailable")
            spent = self.seen.get(key, 0)
            others = sum(h.amount for h in self.holds.values()
                         if h.tenant == tenant.name and h.month == month and h.call_uuid != call_uuid)
            granted = rules.grant_micros(self._micros_of(budget), spent, others, ceiling)
        if spent > self.seen.get(key, 0):
            self.seen[key] = spent
        amount = rules.from_micros(granted)
        if budget > 0:
            self._gauge(metrics.BUDGET_RESERVED, tenant.name).set(
                (others + granted) / self._micros_of(budget))
        self.cut.pop(call_uuid, None)
        if granted <= 0:
            self.holds.pop(call_uuid, None)
            return amount
        if granted >= ceiling:          # buys the tenant's whole limit by construction
            seconds, cut = tenant.max_call_seconds, False
        else:
            share = rules.share(amount, rate, tenant.max_call_seconds)
            seconds, cut = share.seconds, share.cut
        hold = self.holds[call_uuid] = Hold(call_uuid, tenant.name, month, granted, rate,
                                            ceiling, tenant.max_call_seconds, seconds, cut,
                                            self.monotonic())
        if cut:
            self.cut[call_uuid] = hold
        return amount

    def preview(self, tenant, rate) -> Decimal | None:
        """What a call routed now would reserve, without reserving (the routing dry run)."""
        budget = self.budget_of(tenant)
        if budget is None:
            return None
        month = rules.month_key(self.clock())
        try:
            spent, reserved = self.store.usage(tenant.name, month,
                                               self.seen.get((tenant.name, month), 0))
        except BudgetUnavailable:
            return self.remaining(tenant)
        ceiling = rules.to_micros(rules.ceiling_cost(rate, tenant.max_call_seconds), True)
        return rules.from_micros(int(rules.grant(rules.to_micros(budget), spent, reserved,
                                                 ceiling)))

    def _micros_of(self, budget: Decimal) -> int:
        """A budget in micro-units, converted once per value (budgets change rarely)."""
        found = self._micros.get(budget)
        if found is None:
            if len(self._micros) > 10_000:
                self._micros.clear()
            found = self._micros[budget] = rules.to_micros(budget)
        return found

    def _gauge(self, metric, tenant: str):
        child = self._gauges.get((metric, tenant))
        if child is None:
            child = self._gauges[(metric, tenant)] = metric.labels(tenant)
        return child

    def release_now(self, call_uuid: str) -> None:
        """The routing decision that reserved was refused after all (routing path)."""
        hold = self.holds.pop(call_uuid, None)
        self.cut.pop(call_uuid, None)
        if hold is not None:
            try:
                self.store.release(hold.tenant, hold.month, call_uuid)
            except BudgetUnavailable as exc:
                log.warning("budget release failed (the lease expires): %s", exc)

    # Router hook name (switchd/routing/router.py calls `release`).
    release = release_now

    # --- from ESL events (queued; never waits) ------------------------------------------
    def call_ended(self, call_uuid: str, tenant: str | None, cost: Decimal | None,
                   started_at: datetime | None) -> None:
        hold = self.holds.pop(call_uuid, None)
        self.cut.pop(call_uuid, None)
        if hold is None and not (tenant and cost):
            return
        month = hold.month if hold else self._month_key(started_at or self.clock())
        self._queue.put((self._settle, (tenant or hold.tenant, month, call_uuid,
                                        rules.to_micros(cost or 0), hold)), keep=True)

    def call_answered(self, call_uuid: str) -> None:
        hold = self.holds.get(call_uuid)
        if hold is not None and hold.cut:
            self._queue.put((self._extend, (hold,)), keep=False)

    def renamed(self, old: str, new: str) -> None:
        hold = self.holds.pop(old, None)
        if hold is not None:
            hold.call_uuid = new
            self.holds[new] = hold
            if self.cut.pop(old, None) is not None:
                self.cut[new] = hold
            self._queue.put((self._move, (hold, old)), keep=True)

    def budget_changed(self, tenant: str, budget: Decimal | None) -> None:
        """A top-up (or cut) from provisioning: cut calls may be extended."""
        before = self.budgets.get(tenant, budget)
        self.budgets[tenant] = budget
        if before is not None and (budget is None or budget > before):
            self._queue.put((self._extend_tenant, (tenant,)), keep=False)

    # --- periodic ------------------------------------------------------------------------
    def refresh(self, live_call_uuids) -> None:
        """Lease refresh (own greenlet): queued behind settlements, so a settled call's
        reservation is never written back."""
        self._queue.put((self._refresh, (set(live_call_uuids),)), keep=False)

    def floor(self, spent: dict) -> None:
        """PostgreSQL's month spend per (tenant, 'YYYY-MM') (own greenlet, periodic):
        the store's spend is raised to it where it is behind."""
        self._queue.put((self._floor, (dict(spent),)), keep=False)

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, drain_timeout: float = 5.0) -> None:
        """Stop the worker after it has applied what is queued (settlements above all:
        a settlement lost here would be caught up only by the next floor)."""
        self._queue.put((None, ()), keep=True)
        self._worker.join(timeout=drain_timeout)
        self._worker.kill(timeout=2)
        self.store.close()

    # --- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            func, args = self._queue.get()
            if func is None:
                return
            try:
                func(*args)
            except Exception:   # greenlet boundary: one failed operation never stops the worker
                log.exception("budget operation %s failed", func.__name__)

    def _settle(self, tenant, month, call_uuid, cost, hold) -> None:
        key = (tenant, month)
        try:
            before, after = self.store.settle(tenant, month, call_uuid, cost, self.seen.get(key, 0))
        except BudgetUnavailable as exc:
            log.warning("budget settlement postponed: %s", exc, extra={"call_uuid": call_uuid})
            self.seen[key] = self.seen.get(key, 0) + cost
            self.unsettled.append((tenant, month, call_uuid, cost, hold))
            return
        self.seen[key] = after
        budget = self.budgets.get(tenant)
        if budget:
            bm = self._micros_of(budget)
            if month == self._month_key(self.clock()):
                self._gauge(metrics.BUDGET_USAGE, tenant).set(after / bm)
            for threshold in rules.thresholds_crossed(before, after, bm):
                self.on_alert(Alert(tenant, datetime.strptime(month, "%Y-%m").replace(
                    tzinfo=timezone.utc), threshold, rules.from_micros(after), budget,
                    self.clock()))
        if self.cut and (hold is None or cost < hold.amount):
            self._extend_tenant(tenant)         # money came back: cut calls may grow

    def _extend_tenant(self, tenant: str) -> None:
        cut = sorted((h for h in self.cut.values() if h.tenant == tenant),
                     key=lambda h: h.created)
        for hold in cut:
            self._extend(hold)

    def _extend(self, hold: Hold) -> None:
        """Grow a cut call's reservation by the share rule; move its hangup if it grew."""
        if self.holds.get(hold.call_uuid) is not hold or not hold.cut:
            return
        live = self.live_call(hold.call_uuid)
        if live is None or not live.answered_us:
            return          # extended at its answer (call_answered)
        budget = self.budgets.get(hold.tenant)
        if budget is None:
            new_seconds, granted = hold.tenant_limit, hold.amount   # the budget was removed
        else:
            try:
                granted, spent, _ = self.store.reserve(
                    hold.tenant, hold.month, hold.call_uuid, rules.to_micros(budget),
                    self.seen.get((hold.tenant, hold.month), 0), hold.ceiling, grow=True)
            except BudgetUnavailable as exc:
                log.warning("budget extension skipped: %s", exc)
                return
            new_seconds = rules.share(rules.from_micros(granted), hold.rate,
                                      hold.tenant_limit).seconds
        hold.amount = granted
        if new_seconds <= hold.seconds:
            return
        if self.send is None:
            return
        from switchd.adapters.esl import commands
        try:
            # Elapsed time in the switch's own clock (its answer time is in it), asked now:
            # our estimate of its clock may be off by its skew or drift.
            now_us = int(str(self.send(commands.strmicroepoch())).strip())
        except Exception:   # an old switch, a garbled reply: our estimate of its clock
            now_us = live.now_us
        n = rules.extension_seconds(new_seconds, now_us - live.answered_us)
        if n is None:
            return
        try:
            self.send(commands.sched_del(live.channel))
            reply = str(self.send(commands.sched_hangup(live.channel, n, "ALLOTTED_TIMEOUT")))
            if reply.startswith("-ERR"):
                raise RuntimeError(reply.strip())
            self.send(commands.uuid_setvar(live.channel, "switchd_max_duration", new_seconds))
        except Exception as exc:    # the switch may be away: the old limit stands (watchdog)
            metrics.BUDGET_EXTENSIONS.labels("failed").inc()
            log.error("budget extension of %s to %ss failed: %s", hold.call_uuid, new_seconds,
                      exc, extra={"call_uuid": hold.call_uuid, "tenant": hold.tenant})
            return
        old = hold.seconds
        hold.seconds = new_seconds
        hold.cut = new_seconds < hold.tenant_limit
        if not hold.cut:
            self.cut.pop(hold.call_uuid, None)
        self.on_extended(hold.call_uuid, new_seconds)
        metrics.BUDGET_EXTENSIONS.labels("extended").inc()
        log.info("budget freed up: max duration %ss -> %ss (sched_hangup +%s)", old,
                 new_seconds, n, extra={"call_uuid": hold.call_uuid, "tenant": hold.tenant})

    def _floor(self, spent: dict) -> None:
        for (tenant, month), amount in spent.items():
            micros = rules.to_micros(amount)
            try:
                after = self.store.floor(tenant, month, micros)
            except BudgetUnavailable as exc:
                log.warning("budget spend floor skipped: %s", exc)
                return
            if after > self.seen.get((tenant, month), 0):
                self.seen[(tenant, month)] = after

    def _adopt(self, live: set) -> None:
        """Calls up on the switch that this daemon holds no reservation for (it restarted,
        or took them over): keep the reservation they already have in the store alive, so
        the money they may still spend stays reserved. Their limit is already set on the
        switch; they are settled when they end, never extended."""
        self._looked_up &= live
        unknown = [c for c in live if c not in self.holds and c not in self._looked_up]
        if not unknown:
            return
        self._looked_up.update(unknown)
        now = self.monotonic()
        for call_uuid, tenant, month, amount in self.store.adopt(unknown):
            if call_uuid not in self.holds:
                self.holds[call_uuid] = Hold(call_uuid, tenant, month, amount, None, amount,
                                             0, 0, False, now)
                log.info("budget reservation of a running call taken over: %s",
                         rules.from_micros(amount), extra={"call_uuid": call_uuid,
                                                           "tenant": tenant})

    def _move(self, hold: Hold, old: str) -> None:
        try:
            self.store.release(hold.tenant, hold.month, old)
            self.store.refresh([(hold.tenant, hold.month, hold.call_uuid, hold.amount)])
        except BudgetUnavailable as exc:
            log.warning("budget rename postponed to the next refresh: %s", exc)

    def _refresh(self, live: set) -> None:
        now = self.monotonic()
        for call_uuid, hold in list(self.holds.items()):
            if call_uuid not in live and now - hold.created > ORPHAN_GRACE_S:
                # Routed, but the switch never showed the call (refused downstream, a
                # failed originate): give its money back.
                del self.holds[call_uuid]
                self.cut.pop(call_uuid, None)
                self._settle(hold.tenant, hold.month, call_uuid, 0, hold)
        try:
            self._adopt(live)
            self.store.refresh([(h.tenant, h.month, c, h.amount) for c, h in self.holds.items()])
            retry, self.unsettled = self.unsettled, []
        except BudgetUnavailable as exc:
            log.warning("budget lease refresh failed: %s", exc)
            return
        for tenant, month, call_uuid, cost, hold in retry:
            self.seen[(tenant, month)] -= cost
            self._settle(tenant, month, call_uuid, cost, hold)
        for tenant in sorted({h.tenant for h in self.cut.values()}):
            self._extend_tenant(tenant)     # frees by other daemons, top-ups elsewhere
        month = self._month_key(self.clock())
        for tenant, budget in self.budgets.items():   # a new month starts at 0 here too
            if budget:
                spent = rules.from_micros(self.seen.get((tenant, month), 0))
                metrics.BUDGET_USAGE.labels(tenant).set(float(spent / budget))


# --- wiring (daemon) ----------------------------------------------------------------------------
def build_book(config, budgets: dict, seed: dict) -> BudgetBook:
    """The book the daemon routes with: reservations in Redis when `redis.url` is set
    (shared by every daemon), else in process; leases as long as the caps' leases."""
    from switchd.adapters.budget_store import LocalBudgets, RedisBudgets
    ttl = config["caps.lease_seconds"]
    url = config["redis.url"]
    store = RedisBudgets.from_url(url, ttl=ttl) if url else LocalBudgets(ttl=ttl)
    return BudgetBook(store, budgets, seed, fail_open=config["redis.on_failure"] == "fail_open")


def month_spend(conn, now: datetime) -> dict[tuple[str, str], Decimal]:
    """(tenant, 'YYYY-MM') -> settled spend of the calls that *started* in this month and
    the one before (a call is charged to the month it started in)."""
    this = rules.month_of(now)
    last = rules.month_of(this - _ONE_DAY)
    rows = conn.execute(
        """SELECT tenant, date_trunc('month', started_at AT TIME ZONE 'UTC'), sum(cost)
           FROM calls WHERE tenant IS NOT NULL AND cost IS NOT NULL
             AND started_at >= %s AND started_at < %s::timestamptz + interval '1 month'
           GROUP BY 1, 2""", (last, this)).fetchall()
    return {(tenant, f"{month:%Y-%m}"): Decimal(total) for tenant, month, total in rows}


def raise_alert(db_url: str, alert: Alert, call_events, tries: int = 3) -> bool:
    """Record the crossing in PostgreSQL; only the first recorder of a (tenant, month,
    threshold) logs it, counts it and queues the signed webhook, so neither a second
    daemon nor a restart repeats it. If PostgreSQL cannot be reached after `tries`, the
    alert is raised anyway (its webhook event id is the same, receivers drop a repeat)."""
    import psycopg
    first = True
    for attempt in range(tries):
        try:
            with green.connect(db_url, connect_timeout=5, autocommit=True) as conn:
                first = conn.execute(
                    """INSERT INTO budget_alerts (tenant, month, threshold, spent, budget, crossed_at)
                       VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1""",
                    (alert.tenant, alert.month.date(), alert.threshold, alert.spent,
                     alert.budget, alert.at)).fetchone() is not None
            break
        except psycopg.Error as exc:
            metrics.DB_ERRORS.labels("budget_alerts").inc()
            log.warning("budget alert not recorded (try %d of %d): %s", attempt + 1, tries,
                        str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            gevent.sleep(2.0)
    if not first:
        return False
    metrics.BUDGET_ALERTS.labels(alert.tenant, str(alert.threshold)).inc()
    log.warning("budget alert: %s has spent %s of its %s budget for %s (%d %%)", alert.tenant,
                alert.spent, alert.budget, f"{alert.month:%Y-%m}", alert.threshold,
                extra={"tenant": alert.tenant})
    call_events.budget_crossed(alert.tenant, alert.threshold, alert.spent, alert.budget,
                               alert.month, alert.at)
    return True
