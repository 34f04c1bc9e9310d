"""A caller who gives up, and the first BYE after an answer, on a real FreeSWITCH 1.10.12.

What the switch does (its own CHANNEL_HANGUP_COMPLETE events, read here first):

- The caller CANCELs while the carrier rings (180) or plays early media (183 with SDP):
  FreeSWITCH answers the caller 487, CANCELs the carrier leg and asks nobody for another
  route (no continuation lookup: only gw_a ever sees an INVITE). Both legs end
  ORIGINATOR_CANCEL, billsec 0; the caller's leg has sip_term_status 487
  (sip_hangup_disposition recv_cancel), the carrier's leg none (send_cancel: the 487 it
  got answered our own CANCEL). Early media sets the legs' progress_media time, ringing
  their progress time. After a failover the same holds for the second carrier's leg.
- The caller CANCELs right after the switch's 100 Trying, while FreeSWITCH still waits
  for switchd's route (a slow answer makes sure of it): FreeSWITCH never dials anyone,
  only the caller's leg ends, ORIGINATOR_CANCEL 487, and the routing log holds the
  decision switchd made for it.
- Answered, then the caller's BYE at once (hold 1 ms), or the carrier's BYE 1.5 s after its
  answer: both legs NORMAL_CLEARING with billsec = end_epoch - answer_epoch (whole
  seconds: 40 ms of talk is billsec 0, 1.52 s is billsec 1 or 2); the leg that received
  the BYE has sip_hangup_disposition recv_bye and sip_term_status 200.

switchd must agree: one CDR per call, merged with the switch's own (mod_json_cdr) with no
provisional leg left; a cancelled call costs 0 (rated, not unrated), is filed `cancelled`
(dialled or not) and charges no carrier; every caps slot comes back; an answered call is billed on
FreeSWITCH's billsec by the tariff (world.py) and counts as the carrier's success.
"""
from __future__ import annotations

import http.client
import http.server
import threading
import time
from decimal import Decimal

import pytest

from daemon_harness import free_port, metric

from . import world
from .test_cdr import FRANCE, hand_cost

pytestmark = pytest.mark.realswitch

CANCEL_AFTER_MS = 500
# What the carrier leg's progress event is, per carrier mode: (event, time header).
PROGRESS = {"ring": ("CHANNEL_PROGRESS", "Caller-Channel-Progress-Time"),
            "early": ("CHANNEL_PROGRESS_MEDIA", "Caller-Channel-Progress-Media-Time")}
# With _one_of_each_cap: one call on the platform.
ONE_CALL = {"SWITCHD_CAPS_GLOBAL_MAX_CALLS": "1"}


def _one_of_each_cap(*carriers: str) -> str:
    """acme may have one call up, each of `carriers` (alpha by default) one channel (with
    ONE_CALL: one call on the platform): a slot a cancelled call kept would refuse the next."""
    toml = world.WORLD_TOML.replace('max_call_seconds = 3600\n',
                                    'max_call_seconds = 3600\nmax_concurrent = 1\n', 1)
    for carrier in carriers or ("alpha",):
        toml = toml.replace(f'name = "{carrier}"\n', f'name = "{carrier}"\nmax_channels = 1\n', 1)
    return toml


def _health(rs, carrier: str) -> int:
    return rs.rows("SELECT health FROM carriers WHERE name = %s", carrier)[0][0]


def _settled(rs, call_uuid: str):
    """The call's row once both records are in: the switch's CDRs (cdr_source 'switch':
    every leg from mod_json_cdr) and ESL's (the disposition), in whichever order."""
    query = ("SELECT disposition, cdr_source, provisional, unrated, pdd_ms FROM calls "
             "WHERE call_uuid = %s")
    try:
        return rs.wait_until(lambda: [r for r in rs.rows(query, call_uuid)
                                      if r[1] == "switch" and r[0] is not None],
                             what=f"the switch's CDRs and ESL's record of {call_uuid}")[0]
    except AssertionError as exc:
        raise AssertionError(f"(disposition, cdr_source, provisional, unrated, pdd_ms) of "
                             f"{call_uuid}: {rs.rows(query, call_uuid)}\n{exc}") from None


def _legs(rs, call_uuid: str) -> dict[str, dict]:
    cols = ("leg_uuid", "carrier", "hangup_cause", "sip_status", "disposition", "billsec",
            "billed_seconds", "cost", "cdr_source", "provisional", "unrated", "answered_at",
            "progress_at", "pdd_ms")
    found = rs.rows(f"SELECT {', '.join(cols)} FROM call_legs WHERE call_uuid = %s", call_uuid)
    return {str(row[0]): dict(zip(cols, row)) for row in found}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ring", "early"])
def test_the_caller_cancels_while_the_carrier_rings(realswitch, make_rs_daemon, mode):
    rs = make_rs_daemon(extra_env=ONE_CALL, world_toml=_one_of_each_cap())
    before = {c: _health(rs, c) for c in world.GATEWAY_OF}
    realswitch.carrier("gw_a").set_mode(mode)
    result = realswitch.call(world.US_NUMBER, cancel_after_ms=CANCEL_AFTER_MS)
    assert result.code == 487 and result.progress_after is not None, result
    a, *carriers = realswitch.wait_call(result)

    # What FreeSWITCH did: the caller's CANCEL ended both legs, no other carrier was tried.
    assert [leg.gateway for leg in carriers] == ["gw_a"]
    [b] = carriers
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
    assert (a.cause, a.sip_term_status, a.headers.get("variable_sip_hangup_disposition")) == \
        ("ORIGINATOR_CANCEL", 487, "recv_cancel")
    assert (b.cause, b.sip_term_status, b.headers.get("variable_sip_hangup_disposition")) == \
        ("ORIGINATOR_CANCEL", None, "send_cancel")
    assert (a.billsec, b.billsec, b.headers.get("variable_answer_uepoch")) == (0, 0, "0")
    event, header = PROGRESS[mode]
    [progress] = [e for e in realswitch.events(event) if e.get("Unique-ID") == b.uuid]
    progress_us = int(progress[header])
    start_us = int(b.headers["variable_start_uepoch"])

    # switchd's record: one call, not answered, cost 0 (rated), filed as the caller's cancel.
    disposition, source, provisional, unrated, _ = _settled(rs, a.uuid)
    assert (disposition, source, provisional, unrated) == ("cancelled", "switch", False, False)
    cdr = rs.cdr(a.uuid)
    assert (cdr["answered_at"], cdr["cost"], cdr["billed_seconds"]) == (None, Decimal("0"), 0)
    assert (cdr["hangup_cause"], cdr["carrier"], cdr["attempts"]) == \
        ("ORIGINATOR_CANCEL", "alpha", 1)
    assert rs.rows("SELECT count(*) FROM calls WHERE call_uuid = %s", a.uuid) == [(1,)]
    legs = _legs(rs, a.uuid)
    assert set(legs) == {a.uuid, b.uuid}
    for leg in legs.values():                       # merged: no ESL-only or provisional leg
        assert (leg["cdr_source"], leg["provisional"], leg["unrated"]) == ("switch", False, False)
        assert (leg["disposition"], leg["cost"], leg["answered_at"]) == \
            ("cancelled", Decimal("0"), None)
    # PDD of the carrier leg: its start to its progress event (180, or the 183's media).
    carrier_leg = legs[b.uuid]
    assert carrier_leg["carrier"] == "alpha"
    assert carrier_leg["progress_at"].timestamp() == pytest.approx(progress_us / 1e6, abs=1e-6)
    assert carrier_leg["pdd_ms"] == (progress_us - start_us) // 1000

    # Nobody's failure: no failover step, no health moved.
    assert rs.rows("SELECT result, reason FROM routing_decisions WHERE call_uuid = %s",
                   a.uuid) == [("routed", "lcr")]
    assert metric(rs.process, "switchd_failovers_total") == 0
    assert metric(rs.process, "switchd_carrier_health", carrier="alpha") in (0, 100)
    assert {c: _health(rs, c) for c in world.GATEWAY_OF} == before == \
        {"alpha": 100, "bravo": 100, "charlie": 100}

    # Every slot came back: global (1), acme (1) and alpha (1) all admit the next call.
    assert rs.process.get("/v1/calls")[1]["calls"] == []
    realswitch.carrier("gw_a").set_mode("answer")
    again = realswitch.call(world.US_NUMBER, hold_ms=300)
    assert again.answered, again
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 0, "gw_c": 0}
    assert metric(rs.process, "switchd_cap_rejections_total") == 0


@pytest.mark.slow
def test_the_caller_cancels_while_the_second_carrier_rings(realswitch, make_rs_daemon):
    """alpha refuses (503), the call fails over to bravo, which rings, and the caller gives
    up: alpha is charged for its own 503 only, bravo for nothing, and the carrier slot the
    failover moved to bravo comes back."""
    rs = make_rs_daemon(extra_env=ONE_CALL, world_toml=_one_of_each_cap("alpha", "bravo"))
    realswitch.carrier("gw_a").set_mode("503")
    realswitch.carrier("gw_b").set_mode("ring")
    result = realswitch.call(world.US_NUMBER, cancel_after_ms=CANCEL_AFTER_MS)
    assert result.code == 487 and result.progress_after is not None, result
    a, *carriers = realswitch.wait_call(result)
    assert [(b.gateway, b.cause, b.sip_term_status) for b in carriers] == [
        ("gw_a", "NORMAL_TEMPORARY_FAILURE", 503), ("gw_b", "ORIGINATOR_CANCEL", None)]
    assert (a.cause, a.sip_term_status) == ("ORIGINATOR_CANCEL", 487)
    assert realswitch.invites() == {"gw_a": 1, "gw_b": 1, "gw_c": 0}

    disposition, source, provisional, unrated, _ = _settled(rs, a.uuid)
    assert (disposition, source, provisional, unrated) == ("cancelled", "switch", False, False)
    cdr = rs.cdr(a.uuid)
    assert (cdr["carrier"], cdr["first_choice_carrier"], cdr["attempts"]) == ("bravo", "alpha", 2)
    assert (cdr["answered_at"], cdr["cost"]) == (None, Decimal("0"))
    legs = _legs(rs, a.uuid)
    assert {leg["carrier"]: leg["disposition"] for leg in legs.values() if leg["carrier"]} == \
        {"alpha": "carrier_failure", "bravo": "cancelled"}
    assert metric(rs.process, "switchd_failovers_total", carrier="alpha") == 1
    assert metric(rs.process, "switchd_failovers_total", carrier="bravo") == 0
    rs.wait_until(lambda: _health(rs, "alpha") == 95, what="alpha's health 95 (its 503)")
    assert (_health(rs, "bravo"), _health(rs, "charlie")) == (100, 100)

    # bravo's slot came back: the next call fails over to bravo again and is answered there.
    realswitch.carrier("gw_b").set_mode("answer")
    again = realswitch.call(world.US_NUMBER, hold_ms=300)
    assert again.answered, again
    assert realswitch.invites() == {"gw_a": 2, "gw_b": 2, "gw_c": 0}
    assert metric(rs.process, "switchd_cap_rejections_total") == 0


class SlowLookups:
    """An HTTP proxy on the port FreeSWITCH's mod_xml_curl posts to, in front of switchd:
    a dialplan lookup is answered `delay` s late (switchd's answer, held), everything else
    at once. A controller that slow makes a CANCEL sent after the 100 Trying arrive while
    FreeSWITCH still waits for its route, every time."""

    def __init__(self, port: int, upstream: int, delay: float):
        upstream_url, held = f"127.0.0.1:{upstream}", []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection(upstream_url, timeout=30)
                conn.request(self.command, self.path, body or None,
                             {k: v for k, v in self.headers.items()
                              if k.lower() not in ("host", "connection")})
                answer = conn.getresponse()
                payload = answer.read()
                conn.close()
                if self.path.startswith("/fs/dialplan"):
                    held.append(self.path)
                    time.sleep(delay)          # the slow controller this proxy plays
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

            def log_message(self, *args):
                pass

        self.held = held
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slow_lookups(realswitch):
    """switchd behind a SlowLookups on the switch's xml_curl port; (proxy, extra_env)."""
    daemon_port = free_port()
    proxy = SlowLookups(realswitch.plan.http, daemon_port, delay=1.0)
    yield proxy, {"SWITCHD_HTTP_PORT": str(daemon_port)}
    proxy.close()


def test_the_caller_cancels_before_any_carrier_is_dialled(realswitch, make_rs_daemon,
                                                          slow_lookups):
    """The caller CANCELs right after the switch's 100 Trying, while FreeSWITCH still waits
    for switchd's route (held 1 s here). FreeSWITCH never dials the carrier: only the
    caller's leg ends, ORIGINATOR_CANCEL 487. switchd made its decision (and took the
    slots) for a call that then never left the switch: the CDR is a cancelled call with no
    carrier, and every slot comes back (one per scope: a kept slot refuses the next call)."""
    proxy, env = slow_lookups
    rs = make_rs_daemon(extra_env={**ONE_CALL, **env}, world_toml=_one_of_each_cap())
    realswitch.carrier("gw_a").set_mode("ring")
    result = realswitch.call(world.US_NUMBER, cancel_after_ms=0, cancel_from="trying")
    assert result.code == 487, result
    (a,) = realswitch.wait_call(result)
    assert (a.cause, a.sip_term_status) == ("ORIGINATOR_CANCEL", 487)
    assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 0}
    assert len(proxy.held) == 1                        # switchd was asked, and answered
    (decision,) = rs.rows("SELECT result FROM routing_decisions WHERE call_uuid = %s", a.uuid)
    assert decision == ("routed",)

    disposition, source, provisional, unrated, _ = _settled(rs, a.uuid)
    assert (disposition, source, provisional, unrated) == ("cancelled", "switch", False, False)
    cdr = rs.cdr(a.uuid)
    assert (cdr["answered_at"], cdr["cost"], cdr["attempts"], cdr["carrier"]) == \
        (None, Decimal("0"), 0, None)
    # every slot came back: the next call is admitted and answered
    realswitch.carrier("gw_a").set_mode("answer")
    again = realswitch.call(world.US_NUMBER, hold_ms=300)
    assert again.answered, again
    assert realswitch.invites()["gw_a"] == 1
    assert metric(rs.process, "switchd_cap_rejections_total") == 0
    assert metric(rs.process, "switchd_failovers_total") == 0
    assert {c: _health(rs, c) for c in world.GATEWAY_OF} == \
        {"alpha": 100, "bravo": 100, "charlie": 100}


def _lower_bravo(realswitch, rs) -> None:
    """bravo refuses one call (503: the call goes on to charlie): health 95, so that its
    next success shows (+2, at most 100)."""
    realswitch.carrier("gw_b").set_mode("503")
    refused = realswitch.call(FRANCE, hold_ms=200)
    assert refused.answered
    realswitch.wait_call(refused)
    rs.wait_until(lambda: _health(rs, "bravo") == 95, what="bravo's health 95")


@pytest.mark.slow
@pytest.mark.parametrize("who", ["caller", "carrier"])
def test_the_first_bye_after_an_answer(realswitch, rs_daemon, who):
    """`caller`: the caller's BYE as soon as it has the 200 (hold 1 ms); `carrier`: the
    carrier's BYE 1.5 s after its answer (carrier mode `hangup`). France: bravo, 0.0100/min,
    0.0050 connect fee, 6/6."""
    _lower_bravo(realswitch, rs_daemon)
    realswitch.carrier("gw_b").set_mode("answer" if who == "caller" else "hangup")
    result = realswitch.call(FRANCE, hold_ms=1 if who == "caller" else 20_000)
    assert result.answered and result.ended_by == ("caller" if who == "caller" else "switch")
    a, *carriers = realswitch.wait_call(result)
    [b] = carriers
    assert b.gateway == "gw_b" and (a.cause, b.cause) == ("NORMAL_CLEARING", "NORMAL_CLEARING")
    hung_up_first, other = (a, b) if who == "caller" else (b, a)
    assert hung_up_first.headers.get("variable_sip_hangup_disposition") == "recv_bye"
    assert other.headers.get("variable_sip_hangup_disposition") == "send_bye"
    assert hung_up_first.sip_term_status == 200
    if who == "carrier":
        assert 1 <= b.billsec <= 2 and 1400 <= b.billmsec < 3000, b

    disposition, source, provisional, unrated, _ = _settled(rs_daemon, a.uuid)
    assert (disposition, source, provisional, unrated) == ("answered", "switch", False, False)
    billed, cost = hand_cost(b.billsec)
    legs = _legs(rs_daemon, a.uuid)
    assert set(legs) == {a.uuid, b.uuid}
    leg = legs[b.uuid]
    assert (leg["carrier"], leg["billsec"], leg["billed_seconds"], leg["cost"]) == \
        ("bravo", b.billsec, billed, cost)
    cdr = rs_daemon.cdr(a.uuid)
    assert cdr["answered_at"] is not None
    assert (cdr["carrier"], cdr["billed_seconds"], cdr["cost"], cdr["hangup_cause"]) == \
        ("bravo", billed, cost, "NORMAL_CLEARING")
    assert rs_daemon.rows("SELECT count(*) FROM calls WHERE call_uuid = %s", a.uuid) == [(1,)]
    # The carrier carried the call: a success, whoever hung up (95 + 2).
    rs_daemon.wait_until(lambda: _health(rs_daemon, "bravo") == 97, what="bravo's health 97")
    assert metric(rs_daemon.process, "switchd_carrier_health", carrier="bravo") == 97
    print(f"\n{who} hung up first: billsec={b.billsec} billmsec={b.billmsec} -> billed "
          f"{billed}s, cost {cost}")
