"""Budgets under concurrency, end to end: the simulator, `switchd run`, PostgreSQL.

Tenant acme: 120 s per call, 0.040000 a month. UK calls go to budgetel at 0.009/min,
billed 60/60, so a 120 s call reserves what 180 billed seconds cost (0.027000: its limit
plus the guard second, rounded up to the increment). Two parallel calls: the first gets
its whole 120 s, the second only what is left (0.013000 buys 59 s). When the first ends
after 10 s (billed 60 s: 0.009000), the money it does not need comes back and the second
call's scheduled hangup is moved on the switch to its full 120 s.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import psycopg
import pytest

from daemon_harness import metric, rows
from dialplan import budget as rules

pytestmark = pytest.mark.slow

BUDGET = Decimal("0.040000")


@dataclass(frozen=True)
class Tariff:
    rate_per_min: Decimal = Decimal("0.009")     # budgetel's 44, the cheapest for London
    connect_fee: Decimal = Decimal(0)
    initial_increment: int = 60
    subsequent_increment: int = 60


RATE = Tariff()


def _max_duration(sim_call) -> int:
    return int(dict(sim_call.route.set_vars)["switchd_max_duration"])


def test_parallel_calls_share_the_budget_and_a_freed_share_extends_the_other(world_url,
                                                                             start_switch):
    with psycopg.connect(world_url, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET max_call_seconds = 120, monthly_budget = %s "
                     "WHERE name = 'acme'", (BUDGET,))
    sim, daemon = start_switch(world_url, time_scale=10.0)
    first = sim.place_call("02079460001", accountcode="acme", hold_seconds=10)
    daemon.wait_until(lambda: first.route is not None and first.answered_leg, what="first answer")
    second = sim.place_call("02079460002", accountcode="acme", hold_seconds=1000)
    daemon.wait_until(lambda: second.route is not None and second.answered_leg,
                      what="second answer")
    # The shares: the first call's whole limit, the second what is left of the month.
    assert _max_duration(first) == 120
    assert _max_duration(second) == 59
    shares = rules.ceiling_cost(RATE, 120) + rules.ceiling_cost(RATE, 59)
    assert shares <= BUDGET < 2 * rules.ceiling_cost(RATE, 120)
    assert dict(second.route.set_vars)["execute_on_answer"] == "sched_hangup +59 ALLOTTED_TIMEOUT"
    # A third call finds nothing left: refused with the budget refusal.
    third = sim.place_call("02079460003", accountcode="acme", hold_seconds=5)
    assert third.wait(30) and third.route.respond[0] == 402, third.route

    assert first.wait(30) and second.wait(60)
    # What the switch was told: the second call's hangup moved, never stacked on the old one.
    told = [(at, line) for at, line in sim.api_log if second.uuid in line]
    lines = [line for _, line in told]
    moved = int(lines[1].split()[1][1:])
    assert lines[:2] == [f"sched_del {second.uuid}",
                         f"sched_hangup +{moved} {second.uuid} ALLOTTED_TIMEOUT"], lines
    # +N counted from the switch's clock when it was sent: due at 120 s after the answer
    due_s = (told[1][0] - second.answered_leg.answered_us) / 1e6 + moved
    assert 118 < due_s <= 120, due_s
    assert f"uuid_setvar {second.uuid} switchd_max_duration 120" in lines
    assert second.hangup_cause == "ALLOTTED_TIMEOUT"
    assert 118_000 <= second.billmsec <= 121_000, second.billmsec      # +N: never past 120 s
    costs = daemon.wait_until(lambda: (lambda r: r if len(r) == 2 else None)(rows(
        world_url, "SELECT billed_seconds, cost FROM calls WHERE tenant = 'acme' "
                   "AND answered_at IS NOT NULL ORDER BY started_at")), what="two CDRs")
    assert [c for c, _ in costs] == [60, 120]
    assert sum(cost for _, cost in costs) == Decimal("0.027") <= BUDGET
    assert metric(daemon, "switchd_budget_extensions_total", result="extended") == 1
    # 0.027 of 0.04 is 67.5 %: no alert yet.
    assert rows(world_url, "SELECT count(*) FROM budget_alerts") == [(0,)]


def test_a_top_up_extends_a_call_the_budget_cut(world_url, start_switch):
    with psycopg.connect(world_url, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET max_call_seconds = 120, monthly_budget = 0.013 "
                     "WHERE name = 'acme'")
    sim, daemon = start_switch(world_url, time_scale=10.0)
    call = sim.place_call("02079460001", accountcode="acme", hold_seconds=1000)
    daemon.wait_until(lambda: call.route is not None and call.answered_leg, what="answer")
    assert _max_duration(call) == 59                      # 0.013 buys 59 s at 0.009/min
    with psycopg.connect(world_url, autocommit=True) as conn:   # the operator tops up
        conn.execute("UPDATE tenants SET monthly_budget = 1 WHERE name = 'acme'")
        conn.execute("SELECT pg_notify('switchd_world', 'top-up')")
    assert call.wait(120)
    told = [line for _, line in sim.api_log if call.uuid in line]
    assert told[0] == f"sched_del {call.uuid}", told
    moved = int(told[1].split()[1][1:])
    assert told[1] == f"sched_hangup +{moved} {call.uuid} ALLOTTED_TIMEOUT" and moved > 59
    assert call.hangup_cause == "ALLOTTED_TIMEOUT"
    assert 118_000 <= call.billmsec <= 121_000, call.billmsec


def test_two_daemons_on_one_redis_share_the_budget_and_extend_each_others_calls(
        world_url, redis_url, tmp_path):
    """Two switches, each with its daemon, one Redis: the second daemon's call gets only
    what the first daemon's call left; when that call ends on the first daemon, the second
    daemon extends its own call at its next lease refresh (a third of caps.lease_seconds)."""
    from conftest import E2E_PASSWORD
    from daemon_harness import DaemonProcess
    from switchd.sim import GatewayBehaviour, Simulator
    with psycopg.connect(world_url, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET max_call_seconds = 120, monthly_budget = %s "
                     "WHERE name = 'acme'", (BUDGET,))
    nodes = []
    try:
        for i in range(2):
            sim = Simulator(password=E2E_PASSWORD, seed=30 + i, time_scale=10.0,
                            heartbeat_interval=None,
                            default_gateway=GatewayBehaviour(answer_delay_s=1.0))
            _, port = sim.start()
            (tmp_path / f"node{i}").mkdir()
            daemon = DaemonProcess(world_url, port, E2E_PASSWORD, tmp_path / f"node{i}",
                                   redis_url=redis_url,
                                   extra_env={"SWITCHD_CAPS_LEASE_SECONDS": "3"})
            nodes.append((sim, daemon))
            daemon.start()
            sim.dialplan_url = daemon.base_url + "/fs/dialplan"
        (sim1, d1), (sim2, d2) = nodes
        first = sim1.place_call("02079460001", accountcode="acme", hold_seconds=10)
        d1.wait_until(lambda: first.route is not None and first.answered_leg, what="first")
        second = sim2.place_call("02079460002", accountcode="acme", hold_seconds=1000)
        d2.wait_until(lambda: second.route is not None and second.answered_leg, what="second")
        assert (_max_duration(first), _max_duration(second)) == (120, 59)
        assert first.wait(30) and second.wait(60)
        told = [line for _, line in sim2.api_log if second.uuid in line]
        assert told[0] == f"sched_del {second.uuid}", told
        assert second.hangup_cause == "ALLOTTED_TIMEOUT"
        assert 118_000 <= second.billmsec <= 121_000, (second.billmsec, sim2.api_log)
        assert metric(d2, "switchd_budget_extensions_total", result="extended") == 1
    finally:
        for sim, daemon in nodes:
            rc = daemon.terminate()
            sim.stop()
            assert rc == 0, daemon.log()[-3000:]
