"""Webhook delivery against real PostgreSQL and a real local HTTP receiver: signed, every
event delivered after the receiver was down (a controlled clock moves the retry schedule,
no sleeps), give-up horizon, replay, rows claimed once across deliverers (SKIP LOCKED),
and the verification example of docs/api.md run as written."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from api_helpers import Receiver, helper_port
from switchd.api import webhooks

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def doc_verify():
    text = DOCS.read_text()
    block = re.search(r"<!-- verify-example[^>]*-->\s*```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/api.md", "exec"), namespace)
    return namespace["verify"]


class Clock:
    def __init__(self):
        self.now = datetime.now(timezone.utc)      # the outbox's rows are due from now()

    def __call__(self):
        return self.now


@pytest.fixture
def hooked(world_url):
    receiver = Receiver(helper_port(1))
    with psycopg.connect(world_url, autocommit=True) as conn:
        hook = webhooks.set_webhook(conn, "acme", receiver.url)
    yield world_url, receiver, hook["secret"]
    receiver.down()


def events_for(call_uuid: str, tenant: str = "acme", ev=None) -> list[dict]:
    """What CallEvents queues for one answered call, fed as the daemon feeds it (into
    `ev` and left queued there when given)."""
    @dataclass
    class Call:
        call_uuid: str
        tenant: str | None
        direction: str = "outbound"
        caller: str = ""
        destination: str = "+442079460999"
        started_us: int = 1_700_000_000_000_000
        answered_us: int = 1_700_000_002_000_000
        ended_us: int = 1_700_000_062_000_000
        origin_call: str | None = None
        origin_attempt: int | None = None

    @dataclass
    class Leg:
        carrier: str = "budgetel"
        gateway: str = "budgetel_gw1"
        answered_us: int = 1_700_000_002_000_000

    @dataclass
    class Record:
        tenant: str
        answered_at: datetime | None = datetime(2023, 11, 14, tzinfo=timezone.utc)
        ended_at: datetime | None = datetime(2023, 11, 14, 0, 1, tzinfo=timezone.utc)
        hangup_cause: str = "NORMAL_CLEARING"
        carrier: str = "budgetel"
        attempts: int = 1
        destination: str = "+442079460999"
        billed_seconds: int = 60
        cost: Decimal = Decimal("0.009000")

    given = ev is not None
    ev = ev if given else webhooks.CallEvents()
    queued = len(ev.queue)
    ev.started(Call(call_uuid, None))                  # tenant not known yet: held
    assert len(ev.queue) == queued
    ev.learn_tenant(call_uuid, tenant)
    ev.progress(call_uuid, tenant, 1_700_000_001_000_000)
    ev.progress(call_uuid, tenant, 1_700_000_001_500_000)   # once per call
    ev.answered(Call(call_uuid, tenant), Leg())
    ev.ended(Call(call_uuid, tenant), Record(tenant))
    return [] if given else ev.take(100)


def test_outbox_writes_only_the_events_of_tenants_with_a_webhook(hooked):
    """The events of a tenant without a webhook are discarded unbuilt; the others are
    written with their own numbering."""
    url, _, _ = hooked
    ev = webhooks.CallEvents()
    for call_uuid, tenant in (("c-1", "acme"), ("c-2", "nobody"), ("c-3", "acme")):
        events_for(call_uuid, tenant, ev)
    assert len(ev.queue) == 12
    assert webhooks.Outbox(url, ev, 3600).step() == 8
    assert not ev.queue
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT call_uuid, call_seq, event, tenant FROM webhook_outbox "
                            "ORDER BY id").fetchall()
    assert [(c, n) for c, n, _, _ in rows] == [("c-1", n) for n in range(1, 5)] + \
        [("c-3", n) for n in range(1, 5)]
    assert {t for *_, t in rows} == {"acme"}


def test_call_events_are_numbered_and_final_carries_duration_and_cost():
    events = events_for("c1")
    assert [(e["sequence"], e["event"]) for e in events] == \
        [(1, "created"), (2, "ringing"), (3, "answered"), (4, "completed")]
    assert events[-1]["data"]["duration_seconds"] == 60
    assert events[-1]["data"]["cost"] == "0.009000"
    assert len({e["event_id"] for e in events}) == 4


@pytest.mark.parametrize("answered,cause,name", [
    (True, "NORMAL_CLEARING", "completed"), (False, "USER_BUSY", "busy"),
    (False, "NO_ANSWER", "no-answer"), (False, "NORMAL_TEMPORARY_FAILURE", "failed"),
    (False, None, "failed")])
def test_final_event_by_cause(answered, cause, name):
    assert webhooks.final_event(answered, cause) == name


def test_receiver_down_then_up_gets_every_event_signed(hooked):
    url, receiver, secret = hooked
    events = events_for("call-down-up")
    with psycopg.connect(url, autocommit=True) as conn:
        assert webhooks.write_events(conn, events, horizon_s=3600) == 4
        # another tenant without a webhook: nothing queued for it
        assert webhooks.write_events(conn, events_for("x", "nobody"), 3600) == 0
    clock = Clock()
    deliverer = webhooks.Deliverer(url, base=2.0, cap=60.0, timeout=2.0, clock=clock)
    assert deliverer.step() == 4                    # receiver down: all four fail
    assert deliverer.step() == 0                    # not due again yet
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT attempts, next_at, last_error FROM webhook_outbox").fetchall()
    assert all(a == 1 and n > clock.now and "Connection refused" in e for a, n, e in rows)
    clock.now += timedelta(seconds=3)               # past the first backoff (2 s ± 20 %)
    assert deliverer.step() == 4                    # still down: second failure
    receiver.up()
    clock.now += timedelta(seconds=5)               # past the second backoff (4 s ± 20 %)
    assert deliverer.step() == 4
    got = receiver.wait_for(lambda r: len(r) == 4)
    verify = doc_verify()
    bodies = []
    for delivery in got:
        assert verify(secret, delivery["headers"]["Switchd-Signature"], delivery["body"])
        assert not verify(secret, delivery["headers"]["Switchd-Signature"], delivery["body"] + b" ")
        assert not verify("whsec_wrong", delivery["headers"]["Switchd-Signature"], delivery["body"])
        body = json.loads(delivery["body"])
        assert delivery["headers"]["Switchd-Event-Id"] == body["event_id"]
        bodies.append(body)
    assert sorted((b["sequence"], b["event"]) for b in bodies) == \
        [(1, "created"), (2, "ringing"), (3, "answered"), (4, "completed")]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL"
                            ).fetchone()[0] == 0
    assert deliverer.step() == 0                    # delivered once, never again


def test_give_up_after_the_horizon_then_replay(hooked):
    url, receiver, _ = hooked
    with psycopg.connect(url, autocommit=True) as conn:
        webhooks.write_events(conn, events_for("call-gone"), horizon_s=10)
    clock = Clock()
    deliverer = webhooks.Deliverer(url, base=8.0, cap=60.0, timeout=2.0, clock=clock)
    assert deliverer.step() == 4                    # first failure: retry in ~8 s, within 10
    clock.now += timedelta(seconds=20)
    assert deliverer.step() == 4                    # next retry would fall past the horizon
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM webhook_outbox WHERE failed_at IS NOT NULL"
                            ).fetchone()[0] == 4
        listed = webhooks.call_events(conn, "call-gone", "acme")
    assert [e["event"] for e in listed] == ["created", "ringing", "answered", "completed"]
    assert all(e["failed_at"] and e["attempts"] == 2 for e in listed)
    receiver.up()
    with psycopg.connect(url, autocommit=True) as conn:
        assert webhooks.replay(conn, "call-gone", "other-tenant", 3600) == 0
        assert webhooks.replay(conn, "call-gone", "acme", 3600) == 4
    assert deliverer.step() == 4
    got = receiver.wait_for(lambda r: len(r) == 4)
    assert {json.loads(d["body"])["event_id"] for d in got} == {str(e["event_id"]) for e in listed}


def test_rows_are_claimed_once_across_daemons(hooked):
    """Two deliverers (two daemons) and a third connection holding some rows locked
    mid-claim: nobody waits, nobody takes a row twice."""
    url, receiver, _ = hooked
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(10):
            webhooks.write_events(conn, events_for(f"call-{i}"), horizon_s=3600)
    clock = Clock()
    a = webhooks.Deliverer(url, batch=15, clock=clock)
    b = webhooks.Deliverer(url, batch=15, clock=clock)
    with psycopg.connect(url) as other:             # a daemon in the middle of its claim
        locked = {r[0] for r in other.execute(
            "SELECT id FROM webhook_outbox ORDER BY id LIMIT 5 FOR UPDATE").fetchall()}
        got_a = {r["id"] for r in a.claim()}
        got_b = {r["id"] for r in b.claim()}
        other.rollback()
    assert len(got_a) == 15 and len(got_b) == 15
    assert not (got_a & got_b) and not (locked & (got_a | got_b))
    rest = {r["id"] for r in a.claim()} | {r["id"] for r in b.claim()}
    assert locked <= rest and not (rest & (got_a | got_b))   # released locks: claimed now
    assert len(got_a | got_b | rest) == 40                   # every row once


def test_backoff_doubles_within_jitter_and_caps():
    assert webhooks.backoff(1, 2.0, 600.0, rng=lambda: 0.5) == 2.0
    assert webhooks.backoff(4, 2.0, 600.0, rng=lambda: 0.5) == 16.0
    assert webhooks.backoff(30, 2.0, 600.0, rng=lambda: 1.0) == pytest.approx(720.0)
    assert webhooks.backoff(30, 2.0, 600.0, rng=lambda: 0.0) == pytest.approx(480.0)


def test_signature_is_hmac_over_timestamp_and_body():
    body = b'{"a":1}'
    header = webhooks.sign("s3cret-s3cret-s3cret", 1700000000, body)
    import hashlib
    import hmac
    assert header == "t=1700000000,v1=" + hmac.new(b"s3cret-s3cret-s3cret",
                                                   b"1700000000." + body, hashlib.sha256).hexdigest()
    assert not doc_verify()("s3cret-s3cret-s3cret", header, body)    # far too old


def test_housekeeping_forgets_old_answers_and_finished_rows(hooked):
    url, _, _ = hooked
    from switchd.api import keys
    with psycopg.connect(url, autocommit=True) as conn:
        keys.create(conn, tenant="acme")
        key_id = conn.execute("SELECT id FROM api_keys").fetchone()[0]
        conn.execute("""INSERT INTO api_idempotency (key_id, idem_key, request_hash, status,
                                                     created_at)
                        VALUES (%s, 'old', 'h', 200, now() - interval '25 hours'),
                               (%s, 'new', 'h', 200, now()),
                               (%s, 'running', 'h', NULL, now() - interval '25 hours')""",
                     (key_id, key_id, key_id))
        webhooks.write_events(conn, events_for("old-call"), 3600)
        conn.execute("UPDATE webhook_outbox SET delivered_at = now() - interval '31 days' "
                     "WHERE event IN ('created', 'ringing')")
        assert webhooks.housekeeping(conn) == (1, 2)
        assert {r[0] for r in conn.execute("SELECT idem_key FROM api_idempotency")} == \
            {"new", "running"}
        assert [r[0] for r in conn.execute("SELECT event FROM webhook_outbox ORDER BY call_seq")] == \
            ["answered", "completed"]


@pytest.mark.parametrize("before,after,crossed", [
    ("0", "74.99", []), ("74.99", "75", [75]), ("50", "100", [75, 90, 100]),
    ("75", "89.99", []), ("89", "91", [90]), ("99", "150", [100]), ("150", "160", [])])
def test_budget_thresholds_crossed(before, after, crossed):
    assert webhooks.thresholds_crossed(Decimal(before), Decimal(after), Decimal("100")) == crossed
    assert webhooks.thresholds_crossed(Decimal(before), Decimal(after), None) == []


def test_budget_alert_is_delivered_on_the_same_channel_with_a_stable_id(hooked):
    url, receiver, secret = hooked
    month = datetime(2026, 11, 1, tzinfo=timezone.utc)
    ev = webhooks.CallEvents()
    for _ in range(2):          # e.g. two daemons noticing the same crossing
        ev.budget_crossed("acme", 80, Decimal("4000.10"), Decimal("5000"), month,
                          datetime.now(timezone.utc))
    alerts = ev.take(10)
    assert alerts[0]["event_id"] == alerts[1]["event_id"]
    with psycopg.connect(url, autocommit=True) as conn:
        assert webhooks.write_events(conn, alerts[:1], 3600) == 1
    receiver.up()
    assert webhooks.Deliverer(url, clock=Clock()).step() == 1
    body = json.loads(receiver.wait_for(lambda r: len(r) == 1)[0]["body"])
    assert body["event"] == "budget.threshold" and body["data"] == {
        "threshold_percent": 80, "spent": "4000.10", "monthly_budget": "5000",
        "month": "2026-11"}
