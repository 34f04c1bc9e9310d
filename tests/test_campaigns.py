"""Campaigns against real PostgreSQL: the /v1/campaigns and /v1/dnc API in-process across two
tenants, contact imports (CSV and JSON) that name the bad line and change nothing, claims
that never hand one contact to two dialers, the dialer's calling hours (injected clock), DNC
at dial time, auto-pause on answer rate and on budget, and the settling of claims left by
a dead daemon. The originate here is a stand-in callable (the dialer's own contract); the
e2e tests (test_e2e_campaigns.py) dial through the real originator and the simulator."""
from __future__ import annotations

import threading
import uuid
from types import SimpleNamespace
from datetime import datetime, timedelta, timezone

import gevent
import psycopg
import pytest
from gevent.event import Event

from api_helpers import call
from dialplan.model import Campaign, World
from switchd.api import keys, webhooks
from switchd.api.routes import build_app
from switchd.calls.originate import OriginateError
from switchd.campaigns import store
from switchd.campaigns.dialer import Dialer

ADMIN = "admin-token-for-tests-0123456789"
UTC = timezone.utc


@pytest.fixture
def world(world_url):
    app = build_app(world_url, admin_token=ADMIN)
    status, _, body = call(app, "POST", "/v1/tenants", ADMIN,
                           {"name": "beta", "accountcode": "beta", "default_region": "US"})
    assert status == 201, body
    with psycopg.connect(world_url, autocommit=True) as conn:
        acme, _ = keys.create(conn, tenant="acme")
        beta, _ = keys.create(conn, tenant="beta")
    return {"app": app, "url": world_url, "acme": acme, "beta": beta}


def rows(url, query, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchall()


def snapshot(url):
    return rows(url, "SELECT (SELECT count(*) FROM campaigns), "
                     "(SELECT count(*) FROM campaign_contacts), (SELECT count(*) FROM dnc)")


# --- API -------------------------------------------------------------------------------------------
def test_campaign_api_is_tenant_scoped(world):
    app, acme, beta = world["app"], world["acme"], world["beta"]
    status, _, body = call(app, "POST", "/v1/campaigns", acme, {
        "name": "spring", "pace_cps": 2, "max_concurrent": 5, "calling_hours": "09:00-20:00",
        "calling_days": "mon-fri", "contacts": [{"number": "020 7946 0001"},
                                                {"number": "+12125550100", "first": "Ann"}]})
    assert status == 201, body
    assert body["tenant"] == "acme" and body["state"] == "draft"
    assert body["progress"]["pending"] == 2 and body["import"]["added"] == 2
    assert body["calling_hours"] == "09:00-20:00" and body["calling_days"] == "mon,tue,wed,thu,fri"
    # another tenant: 404 everywhere, as if it did not exist; its list is empty
    for method, path in (("GET", "/v1/campaigns/spring"), ("POST", "/v1/campaigns/spring/start"),
                         ("GET", "/v1/campaigns/spring/contacts"),
                         ("PATCH", "/v1/campaigns/spring"),
                         ("POST", "/v1/campaigns/spring/contacts")):
        status, _, err = call(app, method, path, beta, {"contacts": [{"number": "+12125550111"}]}
                              if method != "GET" else None)
        assert status == 404 and err["field"] == "name", (method, path, err)
    assert call(app, "GET", "/v1/campaigns", beta)[2] == {"campaigns": []}
    status, _, err = call(app, "POST", "/v1/campaigns", beta, {"name": "x", "tenant": "acme"})
    assert status == 404 and err["field"] == "tenant"
    # the owner and the admin see it
    assert [c["name"] for c in call(app, "GET", "/v1/campaigns", acme)[2]["campaigns"]] == ["spring"]
    status, _, body = call(app, "GET", "/v1/campaigns/spring/contacts", ADMIN)
    assert status == 200
    by_number = {c["number"]: c for c in body["contacts"]}
    assert by_number["+442079460001"]["timezone"] == "Europe/London"
    assert by_number["+12125550100"]["timezone"] == "America/New_York"
    assert by_number["+12125550100"]["data"] == {"first": "Ann"}
    status, _, body = call(app, "POST", "/v1/campaigns/spring/start", acme)
    assert status == 200 and body["state"] == "running"
    status, _, err = call(app, "POST", "/v1/campaigns/spring/start", acme)
    assert status == 409 and err["error"] == "cannot start a campaign that is running"


@pytest.mark.parametrize("body, field", [
    ({"name": "c1", "pace_cps": 0}, "pace_cps"),
    ({"name": "c1", "pace_cps": "fast"}, "pace_cps"),
    ({"name": "c1", "max_concurrent": 0}, "max_concurrent"),
    ({"name": "c1", "calling_hours": "9-5"}, "calling_hours"),
    ({"name": "c1", "calling_days": "weekdays"}, "calling_days"),
    ({"name": "c1", "default_timezone": "Mars/Base"}, "default_timezone"),
    ({"name": "c1", "min_answer_rate": 2}, "min_answer_rate"),
    ({"name": "c1", "colour": "red"}, "colour"),
    ({"name": "bad name!"}, "name"),
    ({"name": "c1", "contacts": [{"number": "+442079460001"}, {"number": "12"}]},
     "contacts[1].number"),
    ({"name": "c1", "contacts": [{"number": "+442079460001", "timezone": "Nowhere/X"}]},
     "contacts[0].timezone"),
])
def test_bad_campaign_requests_name_the_field_and_change_nothing(world, body, field):
    before = snapshot(world["url"])
    status, _, err = call(world["app"], "POST", "/v1/campaigns", world["acme"], body)
    assert status == 400 and err["field"] == field, err
    assert snapshot(world["url"]) == before


def test_csv_upload_refuses_a_bad_line_whole_and_skips_duplicates(world):
    app, acme = world["app"], world["acme"]
    assert call(app, "POST", "/v1/campaigns", acme, {"name": "csvc"})[0] == 201
    bad = b"number,timezone,name\n+442079460001,,A\n+442079460002,Nowhere/X,B\n"
    status, _, err = call(app, "POST", "/v1/campaigns/csvc/contacts", acme, raw=bad,
                          headers={"Content-Type": "text/csv"})
    assert status == 400 and err["field"] == "line 3.timezone", err
    assert rows(world["url"], "SELECT count(*) FROM campaign_contacts") == [(0,)]
    good = (b"number,timezone,name\n+442079460001,,A\n02079460002,America/Chicago,B\n"
            b"+44 20 7946 0001,,dup\n")
    status, _, body = call(app, "POST", "/v1/campaigns/csvc/contacts", acme, raw=good,
                           headers={"Content-Type": "text/csv"})
    assert status == 201 and body == {"received": 3, "added": 2, "duplicates": 1}
    assert sorted(rows(world["url"], "SELECT number, timezone FROM campaign_contacts")) == [
        ("+442079460001", "Europe/London"), ("+442079460002", "America/Chicago")]
    status, _, err = call(app, "POST", "/v1/campaigns/csvc/contacts", acme, raw=b"phone\n1\n",
                          headers={"Content-Type": "text/csv"})
    assert status == 400 and err["field"] == "csv"


def test_dnc_api_per_tenant(world):
    app, acme, beta = world["app"], world["acme"], world["beta"]
    status, _, body = call(app, "POST", "/v1/dnc", acme, {"numbers": ["020 7946 0009"]})
    assert status == 201 and body["numbers"] == ["+442079460009"]
    assert call(app, "GET", "/v1/dnc", beta)[2] == {"numbers": []}
    assert [n["number"] for n in call(app, "GET", "/v1/dnc", acme)[2]["numbers"]] == ["+442079460009"]
    status, _, err = call(app, "POST", "/v1/dnc", acme, {"numbers": ["+44207946000x"]})
    assert status == 400 and err["field"] == "numbers[0]"
    assert call(app, "DELETE", "/v1/dnc/+442079460009", beta)[0] == 404
    assert call(app, "DELETE", "/v1/dnc/+442079460009", acme)[0] == 204
    assert call(app, "GET", "/v1/dnc", acme)[2] == {"numbers": []}


# --- claims -----------------------------------------------------------------------------------------
def _campaign(url, name="c", pace="1000", max_concurrent=100000, n=200, hours=None, **extra):
    app = build_app(url, admin_token=ADMIN)
    body = {"name": name, "tenant": "acme", "pace_cps": pace, "max_concurrent": max_concurrent,
            "contacts": [{"number": f"+44207946{1000 + i}"} for i in range(n)], "start": True,
            **extra}
    if hours:
        body["calling_hours"] = hours
    status, _, out = call(app, "POST", "/v1/campaigns", ADMIN, body)
    assert status == 201, out
    return rows(url, "SELECT id FROM campaigns WHERE name = %s", name)[0][0]


def test_two_claimers_racing_never_claim_one_contact_twice(world_url):
    cid = _campaign(world_url)
    got: dict[str, list] = {"a": [], "b": []}

    def claimer(node):
        with psycopg.connect(world_url, autocommit=True) as conn:
            while True:
                claimed = store.claim(conn, cid, node, ["Europe/London"], 100000, 30, 3600,
                                      most=7)
                if not claimed:
                    return
                got[node] += [c["number"] for c in claimed]
    threads = [threading.Thread(target=claimer, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = got["a"] + got["b"]
    assert len(claimed) == len(set(claimed)) == 200
    assert got["a"] and got["b"]             # both took part


def test_claims_follow_the_pace_and_the_concurrency_limit(world_url):
    cid = _campaign(world_url, pace="5", max_concurrent=3, n=10)
    with psycopg.connect(world_url, autocommit=True) as conn:
        slots = [c["slot"] for c in store.claim(conn, cid, "n1", ["Europe/London"], 3, 30, 3600,
                                                most=2)]
        slots += [c["slot"] for c in store.claim(conn, cid, "n1", ["Europe/London"], 3, 30, 3600,
                                                 most=5)]                   # only 1 more fits
        assert len(slots) == 3
        assert store.claim(conn, cid, "n1", ["Europe/London"], 3, 30, 3600) == []   # 3 in flight
        gaps = [(b - a).total_seconds() for a, b in zip(slots, slots[1:])]
        assert gaps == [0.2, 0.2]
        # the next slot is 0.2 s after the last: not claimed with a shorter lookahead
        first = rows(world_url, "SELECT id FROM campaign_contacts WHERE state = 'dialing' "
                                "ORDER BY id LIMIT 1")[0][0]
        store.finish(conn, first, "n1", "answered", None, None, None)
        assert store.claim(conn, cid, "n1", ["Europe/London"], 3, 30, 0.0) == []


# --- the dialer with an injected clock and a stand-in originate -------------------------------------
class FakeOriginate:
    """The originator's contract: an OriginateRequest in, its answer out."""

    def __init__(self, answered=lambda number: False, error=None):
        self.requests = []
        self.answered = answered
        self.error = error

    def __call__(self, request):
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        ok = self.answered(request.destination)
        call_uuid = str(uuid.uuid4())
        if ok:      # the answered call ends a moment later, as the registry would say
            ended = SimpleNamespace(call_uuid=call_uuid, campaign=request.campaign,
                                    answered_us=1, hangup_cause="NORMAL_CLEARING")
            gevent.spawn_later(0.01, self.dialer.call_ended, ended)
        return {"call_uuid": call_uuid, "answered": ok, "max_duration": 60,
                "attempts": [{"hangup_cause": None if ok else "NO_ANSWER"}]}


def _dialer(url, originate, now, names):
    world = World(campaigns={n: Campaign(n, "acme") for n in names})
    originate.dialer = Dialer(url, originate, world=lambda: world, now=lambda: now, lease_s=30)
    return originate.dialer


def _run_until(dialer, predicate, timeout=20):
    stopping = Event()
    runner = gevent.spawn(dialer.run, stopping)
    try:
        with gevent.Timeout(timeout, AssertionError("condition not reached")):
            while not predicate():
                gevent.sleep(0.02)
    finally:
        stopping.set()
        runner.join(5)


def test_calling_hours_in_each_contacts_zone_with_an_injected_clock(world_url):
    app = build_app(world_url, admin_token=ADMIN)
    status, _, _ = call(app, "POST", "/v1/campaigns", ADMIN, {
        "name": "hours", "tenant": "acme", "pace_cps": 100, "calling_hours": "09:00-17:00",
        "start": True, "contacts": [{"number": "+442079460001"}, {"number": "+12125550100"},
                                    {"number": "+442079460002", "timezone": "Asia/Tokyo"}]})
    assert status == 201
    originate = FakeOriginate()
    # Monday 13:30 UTC: 13:30 London (open), 08:30 New York (not yet), 22:30 Tokyo (closed)
    now = datetime(2026, 11, 30, 13, 30, tzinfo=UTC)
    dialer = _dialer(world_url, originate, now, ["hours"])
    _run_until(dialer, lambda: rows(world_url, "SELECT count(*) FROM campaign_contacts "
                                               "WHERE state = 'done'")[0][0] == 1)
    assert [r.destination for r in originate.requests] == ["+442079460001"]
    assert rows(world_url, "SELECT state FROM campaigns WHERE name = 'hours'") == [("running",)]
    dialer.now = lambda: now + timedelta(hours=1)        # 09:30 in New York
    _run_until(dialer, lambda: len(originate.requests) == 2)
    assert originate.requests[1].destination == "+12125550100"
    assert originate.requests[1].campaign == "hours"


def test_dnc_is_checked_at_dial_time(world_url):
    cid = _campaign(world_url, name="dncc", pace="100", n=4)
    with psycopg.connect(world_url, autocommit=True) as conn:     # added after the upload
        store.dnc_add(conn, "acme", ["+442079461001"])
    originate = FakeOriginate()
    _run_until(_dialer(world_url, originate, datetime.now(UTC), ["dncc"]),
               lambda: rows(world_url, "SELECT state FROM campaigns WHERE id = %s", cid)
               == [("completed",)])
    dialled = sorted(r.destination for r in originate.requests)
    assert dialled == ["+442079461000", "+442079461002", "+442079461003"]
    assert rows(world_url, "SELECT outcome FROM campaign_contacts WHERE number = "
                           "'+442079461001'") == [("dnc",)]


def test_low_answer_rate_pauses_with_the_reason_and_a_webhook_event(world_url):
    with psycopg.connect(world_url, autocommit=True) as conn:
        webhooks.set_webhook(conn, "acme", "http://127.0.0.1:9/hook")
    cid = _campaign(world_url, name="arate", pace="200", n=40, max_concurrent=1,
                    min_answer_rate="0.5", answer_rate_window=10)
    originate = FakeOriginate(answered=lambda n: n.endswith("0"))       # 1 in 10
    _run_until(_dialer(world_url, originate, datetime.now(UTC), ["arate"]),
               lambda: rows(world_url, "SELECT state FROM campaigns WHERE id = %s", cid)
               == [("paused",)])
    (reason,), = rows(world_url, "SELECT state_reason FROM campaigns WHERE id = %s", cid)
    assert reason == "answer rate 0.10 over the last 10 attempts is below 0.50"
    assert 10 <= len(originate.requests) < 40
    (event, body), = rows(world_url, "SELECT event, body FROM webhook_outbox")
    assert event == "campaign.paused" and body["data"]["reason"] == reason


def test_budget_refusal_pauses_and_leaves_the_contact_to_dial(world_url):
    cid = _campaign(world_url, name="budget", pace="100", n=3)
    originate = FakeOriginate(error=OriginateError("monthly budget exhausted", 409, 402))
    _run_until(_dialer(world_url, originate, datetime.now(UTC), ["budget"]),
               lambda: rows(world_url, "SELECT state FROM campaigns WHERE id = %s", cid)
               == [("paused",)])
    assert rows(world_url, "SELECT state_reason FROM campaigns WHERE id = %s", cid) == [
        ("budget: monthly budget exhausted",)]
    assert rows(world_url, "SELECT state, count(*) FROM campaign_contacts GROUP BY 1") == [
        ("pending", 3)]


def test_claims_of_a_dead_daemon_are_settled_and_only_unsent_ones_dialled(world_url):
    cid = _campaign(world_url, name="dead", pace="1000", n=4)
    with psycopg.connect(world_url, autocommit=True) as conn:
        a, b, c, d = store.claim(conn, cid, "dead-node", ["Europe/London"], 100, 0.2, 60, most=4)
        for sent in (a, b, c):
            assert store.mark_sent(conn, sent["id"], "dead-node")
        call_b = str(uuid.uuid4())
        store.mark_live(conn, c["id"], "dead-node", str(uuid.uuid4()))
        # b's originate reached the switch: its call record exists
        conn.execute("INSERT INTO calls (call_uuid, tenant, direction, destination, started_at, "
                     "answered_at, ended_at, hangup_cause) VALUES (%s, 'acme', 'outbound', %s, "
                     "now(), NULL, now(), 'USER_BUSY')", (call_b, b["number"]))
        while conn.execute("SELECT count(*) FROM campaign_contacts WHERE lease_until >= now()"
                           ).fetchone()[0]:
            gevent.sleep(0.05)                   # the leases (0.2 s) run out
        assert store.recover(conn) == 4
        assert not store.mark_sent(conn, d["id"], "dead-node")    # no longer its claim
    got = {n: (o, u) for n, o, u in rows(world_url, "SELECT number, outcome, call_uuid "
                                                    "FROM campaign_contacts")}
    assert got[a["number"]] == ("unknown", None)     # sent, no record: never again by itself
    assert got[b["number"]] == ("busy", call_b)
    assert got[c["number"]][0] == "answered"
    assert got[d["number"]] == (None, None)          # never sent: pending again
    originate = FakeOriginate()
    _run_until(_dialer(world_url, originate, datetime.now(UTC), ["dead"]),
               lambda: rows(world_url, "SELECT state FROM campaigns WHERE id = %s", cid)
               == [("completed",)])
    assert [r.destination for r in originate.requests] == [d["number"]]
    with psycopg.connect(world_url, autocommit=True) as conn:
        assert store.requeue_unknown(conn, cid) == 1
    assert rows(world_url, "SELECT state FROM campaign_contacts WHERE number = %s",
                a["number"]) == [("pending",)]
    assert rows(world_url, "SELECT state, state_reason FROM campaigns WHERE id = %s", cid) == [
        ("paused", "1 unknown contact(s) requeued")]
