"""Budget alerts once per tenant, month and threshold, across daemons and restarts: the
crossing is recorded in PostgreSQL and only its first recorder raises it."""
from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import gevent

from switchd.accounting.budgets import Alert, BudgetBook, raise_alert
from switchd.adapters.budget_store import LocalBudgets
from switchd.api.webhooks import CallEvents


def _alert(threshold: int) -> Alert:
    return Alert("acme", datetime(2026, 11, 1, tzinfo=timezone.utc), threshold,
                 Decimal("0.9"), Decimal("1"), datetime(2026, 11, 30, tzinfo=timezone.utc))


def test_an_alert_is_raised_once_even_by_a_second_daemon_or_after_a_restart(migrated_pg_url):
    first, second = CallEvents(), CallEvents()
    assert raise_alert(migrated_pg_url, _alert(90), first) is True
    assert raise_alert(migrated_pg_url, _alert(90), second) is False      # another daemon
    assert raise_alert(migrated_pg_url, _alert(90), CallEvents()) is False  # a restart
    assert [(e["event"], e["data"]["threshold_percent"]) for e in first.take(10)] == \
        [("budget.threshold", 90)]
    assert second.take(10) == []
    assert raise_alert(migrated_pg_url, _alert(100), second) is True      # a new threshold


def test_settlements_raise_each_threshold_once_in_the_month_a_call_started():
    alerts = []
    clock = lambda: datetime(2026, 12, 1, 0, 5, tzinfo=timezone.utc)    # noqa: E731
    book = BudgetBook(LocalBudgets(), {"acme": Decimal("1.00")}, clock=clock)
    book.on_alert = alerts.append
    started = datetime(2026, 11, 30, 23, 59, tzinfo=timezone.utc)    # charged to November
    for cost in ("0.70", "0.10", "0.15", "0.10"):
        book.call_ended(f"c{cost}", "acme", Decimal(cost), started)
    with gevent.Timeout(10):
        while book.seen.get(("acme", "2026-11")) != 1_050_000:    # the fourth settled
            gevent.sleep(0.01)
    assert [(a.threshold, f"{a.month:%Y-%m}", a.spent) for a in alerts] == \
        [(75, "2026-11", Decimal("0.800000")), (90, "2026-11", Decimal("0.950000")),
         (100, "2026-11", Decimal("1.050000"))]
    assert book.seen[("acme", "2026-11")] == 1_050_000
    assert book.seen.get(("acme", "2026-12"), 0) == 0          # December starts untouched
    book.close()


def test_redis_away_refuses_or_shares_what_this_daemon_knows(redis_url):
    from dataclasses import dataclass

    from dialplan.policy import Refusal
    from switchd.adapters.budget_store import RedisBudgets

    @dataclass(frozen=True)
    class T:
        name: str = "acme"
        monthly_budget: Decimal = Decimal("1.00")
        max_call_seconds: int = 600

    @dataclass(frozen=True)
    class R:
        rate_per_min: Decimal = Decimal("0.06")
        connect_fee: Decimal = Decimal(0)
        initial_increment: int = 1
        subsequent_increment: int = 1

    dead = "redis://127.0.0.1:1/0"          # nothing listens on port 1
    closed = BudgetBook(RedisBudgets.from_url(dead), {"acme": Decimal("1.00")})
    refused = closed.reserve("c1", T(), R())
    assert isinstance(refused, Refusal) and refused.reason == "caps_unavailable"
    assert closed.holds == {}
    opened = BudgetBook(RedisBudgets.from_url(dead), {"acme": Decimal("1.00")}, fail_open=True)
    assert opened.reserve("c1", T(), R()) == Decimal("0.601000")   # 601 s at 0.001/s
    assert opened.reserve("c2", T(), R()) == Decimal("0.399000")   # the rest, locally known
    assert opened.reserve("c3", T(), R()) == Decimal(0)
    # and a reachable Redis decides again
    shared = BudgetBook(RedisBudgets.from_url(redis_url), {"acme": Decimal("1.00")})
    assert shared.reserve("c1", T(), R()) == Decimal("0.601000")
    for book in (closed, opened, shared):
        book.close()


def test_a_call_routed_before_midnight_is_charged_to_that_month():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class T:
        name: str = "acme"
        monthly_budget: Decimal = Decimal("1.00")
        max_call_seconds: int = 600

    @dataclass(frozen=True)
    class R:
        rate_per_min: Decimal = Decimal("0.06")
        connect_fee: Decimal = Decimal(0)
        initial_increment: int = 1
        subsequent_increment: int = 1

    now = [datetime(2026, 11, 30, 23, 59, 30, tzinfo=timezone.utc)]
    store = LocalBudgets()
    book = BudgetBook(store, {"acme": Decimal("1.00")}, clock=lambda: now[0])
    assert book.reserve("late", T(), R()) == Decimal("0.601000")
    now[0] = datetime(2026, 12, 1, 0, 0, 30, tzinfo=timezone.utc)
    # December starts with nothing spent or reserved
    assert book.reserve("early", T(), R()) == Decimal("0.601000")
    assert book.remaining(T()) == Decimal("1.00")
    book.call_ended("late", "acme", Decimal("0.30"), started_at=None)
    with gevent.Timeout(10):
        while store.usage("acme", "2026-11", 0) != (300_000, 0):
            gevent.sleep(0.01)
    assert store.usage("acme", "2026-12", 0) == (0, 601_000)    # only December's own call
    book.close()
