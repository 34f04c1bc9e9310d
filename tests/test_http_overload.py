"""Past capacity: a flood of dialplan lookups is refused fast (503, counted in
switchd_http_requests_shed_total) while the ESL events and CDRs of real calls keep flowing,
and /healthz and /readyz keep answering. The flood runs in its own process; `switchd run`
is a subprocess with http.max_in_flight = 2, so the flood is far past it."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import E2E_PASSWORD
from daemon_harness import DaemonProcess, metric, rows, wait_for

FLOOD = Path(__file__).with_name("http_flood.py")


def _shed(endpoint: str, reason: str = "in_flight") -> float:
    from switchd import metrics
    return metrics.REGISTRY.get_sample_value("switchd_http_requests_shed_total",
                                            {"endpoint": endpoint, "reason": reason}) or 0.0


def _holding(held_path: str):
    """InFlight with a limit of 1 over an app that holds the first request to `held_path`
    until `release` is set: (bounded, call, inside, release, reached), where
    call(path) -> (status, body) goes through the middleware as the server would."""
    from gevent.event import Event
    from switchd.adapters.http.connections import InFlight

    inside, release, reached = Event(), Event(), []

    def app(environ, start_response):
        reached.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == held_path and not inside.is_set():
            inside.set()
            release.wait(5)
        start_response("200 OK", [])
        return [b"ok"]

    bounded = InFlight(app, 1)

    def call(path):
        status = []
        body = bounded({"PATH_INFO": path}, lambda s, h: status.append(s))
        return status[0], b"".join(body)
    return bounded, call, inside, release, reached


def test_in_flight_bound_refuses_at_once_and_never_health():
    """InFlight with a limit of 1: while one request is inside the application, the next
    lookup gets 503 without reaching it, and /healthz, /readyz and /metrics still do."""
    import gevent
    bounded, call, inside, release, reached = _holding("/fs/dialplan")

    first = gevent.spawn(call, "/fs/dialplan")
    assert inside.wait(5)
    before = _shed("dialplan")
    assert call("/fs/dialplan")[0].startswith("503")
    assert _shed("dialplan") == before + 1
    for path in ("/healthz", "/readyz", "/metrics"):
        assert call(path) == ("200 OK", b"ok")
    assert reached == ["/fs/dialplan", "/healthz", "/readyz", "/metrics"]
    release.set()
    assert first.get(timeout=5) == ("200 OK", b"ok")
    assert call("/fs/dialplan") == ("200 OK", b"ok")          # a slot is free again
    assert bounded.in_flight["dialplan"] == 0


def test_cdr_posts_waiting_never_take_a_dialplan_lookups_turn():
    """Each kind has its own bound: with CDR posts filling theirs (PostgreSQL slow), the
    next post is shed and a dialplan lookup still runs."""
    import gevent
    _, call, inside, release, _ = _holding("/fs/cdr")

    post = gevent.spawn(call, "/fs/cdr")
    assert inside.wait(5)
    before = _shed("cdr"), _shed("dialplan")
    assert call("/fs/cdr")[0].startswith("503")
    assert call("/fs/dialplan") == ("200 OK", b"ok")
    assert (_shed("cdr"), _shed("dialplan")) == (before[0] + 1, before[1])
    release.set()
    assert post.get(timeout=5) == ("200 OK", b"ok")


def test_lookups_are_refused_while_events_are_behind_and_nothing_else_is():
    """The daemon's `refuse_lookups` (ESL events esl.max_event_lag behind): a dialplan lookup
    gets 503 without reaching the application, counted with the reason; CDR posts, API
    requests and health still reach it; lookups are admitted again once it says None."""
    from switchd.adapters.http.connections import InFlight
    reached, behind = [], ["events_behind"]

    def app(environ, start_response):
        reached.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]
    bounded = InFlight(app, 64, refuse_lookups=lambda: behind[0])

    def call(path):
        status = []
        body = bounded({"PATH_INFO": path}, lambda s, h: status.append(s))
        return status[0], b"".join(body)
    before = _shed("dialplan", "events_behind"), _shed("dialplan")
    for path in ("/fs/dialplan", "/dialplan"):
        status, body = call(path)
        assert status.startswith("503") and b"calls already up" in body
    assert (_shed("dialplan", "events_behind"), _shed("dialplan")) == (before[0] + 2, before[1])
    for path in ("/fs/cdr", "/v1/calls", "/healthz", "/readyz", "/metrics"):
        assert call(path) == ("200 OK", b"ok")
    assert reached == ["/fs/cdr", "/v1/calls", "/healthz", "/readyz", "/metrics"]
    behind[0] = None
    assert call("/fs/dialplan") == ("200 OK", b"ok")
    assert _shed("dialplan", "events_behind") == before[0] + 2
    assert bounded.in_flight == dict.fromkeys(bounded.limits, 0)


@pytest.mark.slow
def test_flood_is_shed_while_events_and_cdrs_flow(world_url, tmp_path):
    from switchd.sim import GatewayBehaviour, Simulator
    sim = Simulator(password=E2E_PASSWORD, seed=5, time_scale=50.0, heartbeat_interval=None,
                    default_gateway=GatewayBehaviour(answer_delay_s=1.0))
    _, esl_port = sim.start()
    daemon = DaemonProcess(world_url, esl_port, E2E_PASSWORD, tmp_path,
                           extra_env={"SWITCHD_HTTP_MAX_IN_FLIGHT": "2"})
    flood = None
    try:
        daemon.start()
        sim.dialplan_url = daemon.base_url + "/fs/dialplan"
        events_before = metric(daemon, "switchd_esl_events_total", event="CHANNEL_HANGUP_COMPLETE")
        flood = subprocess.Popen([sys.executable, str(FLOOD), str(daemon.http_port), "200"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert flood.stdout.readline().strip() == "flooding"
        daemon.wait_until(lambda: metric(daemon, "switchd_http_requests_shed_total",
                                         endpoint="dialplan") > 0 or None,
                          what="the flood past http.max_in_flight is being shed")
        # Health is answered through the flood, from the first request.
        started = time.monotonic()
        assert daemon.get("/healthz")[0] == 200
        assert daemon.get("/readyz")[0] == 200
        assert time.monotonic() - started < 5
        # Real calls during the flood: each gets an answer (routed, or refused by the static
        # fallback when its lookup was shed), and its events and CDR arrive all the same.
        calls = [sim.place_call("+442079460000", accountcode="acme", hold_seconds=2.0)
                 for _ in range(8)]
        for call in calls:
            assert call.done.wait(60), f"call {call.uuid} did not end"
        uuids = [c.uuid for c in calls]
        wait_for(lambda: len(rows(world_url, "SELECT call_uuid FROM calls WHERE call_uuid = "
                                  "ANY(%s)", uuids)) == len(uuids) or None,
                 30, "a CDR of every call placed during the flood", daemon)
        wait_for(lambda: len(rows(world_url, "SELECT DISTINCT call_uuid FROM call_events "
                                  "WHERE call_uuid = ANY(%s)", uuids)) == len(uuids) or None,
                 30, "the events of every call placed during the flood", daemon)
        assert (metric(daemon, "switchd_esl_events_total", event="CHANNEL_HANGUP_COMPLETE")
                >= events_before + len(uuids))
        flood.stdin.close()
        counts = json.loads(flood.stdout.readline())
        flood.wait(30)
        flood = None
        assert counts.get("503", 0) > 0 and counts.get("200", 0) > 0, counts
    finally:
        if flood is not None:
            flood.kill()
            flood.wait()
        rc = daemon.terminate()
        sim.stop()
    assert rc == 0, daemon.log()[-3000:]


def _lookup(daemon: DaemonProcess) -> tuple[int, str]:
    """One mod_xml_curl lookup, as FreeSWITCH posts it: (status, body)."""
    import urllib.error
    import urllib.request
    import uuid

    import gevent
    form = (f"section=dialplan&Unique-ID={uuid.uuid4()}&Hunt-Context=public&"
            "Caller-Context=public&Caller-Destination-Number=%2B442079460000&"
            "Caller-Caller-ID-Number=1000&variable_accountcode=acme").encode()

    def post():
        try:
            with urllib.request.urlopen(daemon.base_url + "/fs/dialplan", form, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
    return gevent.get_hub().threadpool.apply(post)


def test_refusals_are_logged_once_an_episode_with_what_was_refused(caplog):
    """A WARNING when a kind of request starts being refused (and one more for each new
    reason), nothing per refusal, and an INFO line with the counts once a request is let
    in after QUIET_S without refusals; then the next refusal starts a new episode."""
    from switchd.adapters.http.shed_log import ShedLog
    now = [100.0]
    shed_log = ShedLog(quiet_s=5.0, clock=lambda: now[0])
    caplog.set_level("INFO", logger="switchd.adapters.http.shed_log")

    def lines():
        return [(r.levelname, r.getMessage()) for r in caplog.records]
    for _ in range(1000):
        shed_log.shed("dialplan", "events_behind")
    now[0] += 1
    shed_log.shed("dialplan", "in_flight")
    shed_log.shed("dialplan", "in_flight")
    assert [level for level, _ in lines()] == ["WARNING", "WARNING"]
    assert "dialplan requests with 503 (reason events_behind)" in lines()[0][1]
    assert "esl.max_event_lag" in lines()[0][1]
    assert "(reason in_flight)" in lines()[1][1] and "http.max_in_flight" in lines()[1][1]
    now[0] += 4.9
    shed_log.admitted()                       # still within the quiet period
    assert shed_log.overloaded and len(lines()) == 2
    now[0] += 0.1
    shed_log.admitted()
    assert not shed_log.overloaded
    assert lines()[2] == ("INFO", "no longer overloaded: refused 1000 dialplan "
                                  "(events_behind), 2 dialplan (in_flight) over 1.0 s")
    shed_log.shed("cdr", "in_flight")
    assert lines()[3][0] == "WARNING" and "http.max_cdr_in_flight" in lines()[3][1]


@pytest.mark.slow
def test_lookups_are_refused_while_events_are_behind_then_answered_again(world_url, tmp_path):
    """Past capacity the events of the calls already up come first: a burst of events
    switchd cannot handle within esl.max_event_lag gets new calls' lookups refused (503,
    reason events_behind), every event of the burst is still handled, and lookups are
    answered again once the events have caught up."""
    from switchd.sim import Simulator, wire
    sim = Simulator(password=E2E_PASSWORD, seed=6, time_scale=50.0, heartbeat_interval=None)
    _, esl_port = sim.start()
    daemon = DaemonProcess(world_url, esl_port, E2E_PASSWORD, tmp_path,
                           extra_env={"SWITCHD_ESL_MAX_EVENT_LAG": "0.05"})
    try:
        daemon.start()
        assert _lookup(daemon)[0] == 200
        # A burst: one full-size CHANNEL_CREATE repeated (a leg's duplicates change nothing,
        # yet each is read, typed and handled like any other event).
        leg = "b0b0b0b0-0000-4000-8000-000000000001"
        headers = [(k, leg if k in ("Unique-ID", "Channel-Call-UUID") else v)
                   for k, v in wire.templates()["events"]["a.CHANNEL_CREATE"]]
        created = metric(daemon, "switchd_esl_events_total", event="CHANNEL_CREATE")
        burst = 8000
        for _ in range(burst):
            sim.emit(headers)
        daemon.wait_until(lambda: metric(daemon, "switchd_esl_event_backlog_seconds") > 0.05
                          or None, what="the events to fall behind esl.max_event_lag")
        status, body = _lookup(daemon)
        assert status == 503 and "calls already up" in body, (status, body)
        assert "refusing dialplan requests with 503 (reason events_behind)" in daemon.log()
        assert metric(daemon, "switchd_http_requests_shed_total", endpoint="dialplan",
                      reason="events_behind") >= 1
        # The burst is handled in full (none dropped), and then lookups are answered again.
        daemon.wait_until(lambda: metric(daemon, "switchd_esl_event_backlog_seconds") == 0
                          or None, what="the events to catch up")
        assert metric(daemon, "switchd_esl_events_total", event="CHANNEL_CREATE") == created + burst
        assert metric(daemon, "switchd_esl_events_dropped_total") == 0
        status, body = _lookup(daemon)
        assert status == 200 and "bridge" in body, (status, body[:300])
    finally:
        rc = daemon.terminate()
        sim.stop()
    assert rc == 0, daemon.log()[-3000:]
