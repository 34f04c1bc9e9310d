"""Live, in-memory books the router reads on every call: carrier health and tenant spend.

Both are loaded from PostgreSQL at start and changed by events; writes back to the database
happen off the event path (health: a persister greenlet saves what changed).
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal

from dialplan import health as health_rules
from dialplan import failover
from dialplan.causes import Outcome
from switchd import metrics

log = logging.getLogger(__name__)


_OUTCOME = {failover.SUCCESS: Outcome.SUCCESS, failover.CARRIER: Outcome.CARRIER_FAILURE,
            failover.CALLEE: Outcome.CALLEE, failover.NOBODY: Outcome.LOCAL}


class HealthBook:
    """carrier name -> CarrierHealth, moved by carrier-side leg outcomes (DESIGN.md §4)."""

    def __init__(self, initial: dict | None = None, cooldown_s: float = 60.0):
        self.cooldown_s = cooldown_s
        self._health: dict[str, health_rules.CarrierHealth] = dict(initial or {})
        self._dirty: set[str] = set()
        self.down_gateways: frozenset[str] = frozenset()

    def get(self, carrier: str) -> health_rules.CarrierHealth:
        found = self._health.get(carrier)
        if found is None:
            found = self._health[carrier] = health_rules.CarrierHealth()
        return found

    def record_leg(self, carrier: str, hangup_cause: str | None, sip_status: int | None,
                   answered: bool, now: datetime) -> Outcome:
        # Whose failure, by the failover table's classes (dialplan/failover.py): only the
        # carrier's own failures count; a callee's answer does not, and a leg that never
        # reached the wire (sofia 900-range status, FreeSWITCH-side cause) is nobody's.
        outcome = _OUTCOME[failover.blame(hangup_cause, sip_status, answered)]
        before = self.get(carrier)
        if outcome == Outcome.SUCCESS:
            after = health_rules.on_success(before, now, self.cooldown_s)
        elif outcome == Outcome.CARRIER_FAILURE:
            after = health_rules.on_failure(before, now, self.cooldown_s)
            if not answered:            # an answered call does not fail over
                metrics.FAILOVERS.labels(carrier).inc()
        else:
            return outcome      # the callee's answer or our own switch: not the carrier's doing
        self._set(carrier, after, now)
        return outcome

    def gateway_event(self, gateway: str, kind: str, state: str | None, ping_status: str | None) -> None:
        """sofia gateway events never move the score (dialplan/health.py): a down gateway
        is left out of dial strings until it reports up again."""
        before = self.down_gateways
        self.down_gateways = health_rules.apply_gateway_event(before, gateway, "gateway_" + kind,
                                                              state, ping_status)
        if self.down_gateways != before:
            log.warning("gateway %s is now %s", gateway,
                        "down" if gateway in self.down_gateways else "up")

    def sync_gateways(self, statuses: dict, provisioned: set[str]) -> None:
        """Rebuild the down set from the switch's own word (switchd/adapters/esl/gateways.py), on
        every ESL connect: down = reported DOWN, or provisioned but absent from the
        switch (a bridge to it fails INVALID_GATEWAY). What events said while we were
        away (a gateway_delete at shutdown, say) is replaced, not merged."""
        before = self.down_gateways
        down = {name for name, st in statuses.items() if not st.up}
        down |= set(provisioned) - set(statuses)
        self.down_gateways = frozenset(down)
        self.gateways_synced = True
        for name in sorted(before ^ self.down_gateways):
            log.warning("gateway %s is now %s (switch status on connect)", name,
                        "down" if name in self.down_gateways else "up")

    gateways_synced = False

    def _set(self, carrier, after, now) -> None:
        before = self._health.get(carrier)
        self._health[carrier] = after
        self._dirty.add(carrier)
        metrics.CARRIER_HEALTH.labels(carrier).set(after.score)
        if before is not None and before.disabled_at is None and after.disabled_at is not None:
            log.warning("carrier %s disabled after %d consecutive failures", carrier,
                        after.consecutive_failures, extra={"carrier": carrier})

    def take_dirty(self) -> dict:
        dirty = {name: self._health[name] for name in self._dirty}
        self._dirty.clear()
        return dirty

    def snapshot(self) -> dict:
        return dict(self._health)

    def usable(self, carrier, now: datetime) -> bool:
        """What switchd_carrier_up reports: enabled, not disabled by its health score, and
        at least one enabled gateway that FreeSWITCH has not reported down."""
        return (carrier.enabled
                and health_rules.availability(self._health.get(carrier.name)
                                              or health_rules.CarrierHealth(), now,
                                              self.cooldown_s) != "disabled"
                and any(g.enabled and g.name not in self.down_gateways for g in carrier.gateways))


def month_start(now: datetime) -> datetime:
    return now.astimezone(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class SpendBook:
    """Month-to-date spend per tenant; the router asks what budget remains."""

    def __init__(self, budgets: dict[str, Decimal | None], spent: dict[str, Decimal] | None = None,
                 month: datetime | None = None):
        self.budgets = dict(budgets)
        self.spent: dict[str, Decimal] = dict(spent or {})
        self.month = month

    def remaining(self, tenant) -> Decimal | None:
        budget = self.budgets.get(tenant.name, tenant.monthly_budget)
        if budget is None:
            return None
        return budget - self.spent.get(tenant.name, Decimal(0))

    def reserve(self, call_uuid: str, tenant, rate, now: datetime | None = None):
        """This book reserves nothing: the call is given the whole remaining budget. The
        daemon routes with switchd/accounting/budgets.py's BudgetBook, which reserves."""
        return self.remaining(tenant)

    def release(self, call_uuid: str) -> None:
        pass

    def preview(self, tenant, rate):
        return self.remaining(tenant)

    def add(self, tenant: str | None, cost: Decimal, at: datetime) -> None:
        if not tenant or not cost:
            return
        start = month_start(at)
        if self.month is not None and start > self.month:
            self.spent.clear()      # a new month: budgets start over
        self.month = start
        self.spent[tenant] = self.spent.get(tenant, Decimal(0)) + cost
        budget = self.budgets.get(tenant)
        if budget:
            metrics.BUDGET_USAGE.labels(tenant).set(float(self.spent[tenant] / budget))
