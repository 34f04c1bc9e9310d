"""Hostile caller IDs on a real FreeSWITCH 1.10.12. Unsanitised, a display name with an
escaped quote or `<>` made sofia fail every carrier leg before sending
(DESTINATION_OUT_OF_ORDER), and a number with `${…}` ended every leg with status 900 — and
switchd charged every carrier for it. Now every call routes with a sanitised caller ID
(docs/routing.md §7), the carrier's From header holds exactly that, and no carrier loses
health."""
from __future__ import annotations

import re

import pytest

from daemon_harness import metric

from . import world

pytestmark = pytest.mark.realswitch

# (From header value the caller sends, the From display and user the carrier must get)
HOSTILE = [
    (b'"Bad \\"q\\" <x>" <sip:1000@127.0.0.1>', "Bad q x", "1000"),
    (b'"x${uuid}" <sip:1000@127.0.0.1>', "xuuid", "1000"),
    (b'"$${hostname}{a}" <sip:1000@127.0.0.1>', "hostnamea", "1000"),
    (b'"a%0Ab%0d%0AX-Evil: 1" <sip:1000@127.0.0.1>', "a b X-Evil 1", "1000"),
    (b'"A.B-C_D (E) & F + G # H!?*:/@" <sip:1000@127.0.0.1>', "A.B-C_D (E) & F + G # H", "1000"),
    (b'"' + b"A" * 300 + b'" <sip:1000@127.0.0.1>', "A" * 48, "1000"),
    (b'"Jos\xff\xfe" <sip:1000@127.0.0.1>', "Jos", "1000"),               # not UTF-8
    (b'"sipp" <sip:12${uuid}34@127.0.0.1>', "sipp", "anonymous"),         # was sofia's 900
]


def _from(invite_text: str) -> tuple[str, str]:
    line = next(l for l in invite_text.splitlines() if l.lower().startswith(("from:", "f:")))
    m = re.match(r'(?i)(?:from|f):\s*(?:"([^"]*)"\s*)?<sip:([^@>]*)@', line)
    assert m, line
    return m.group(1) or "", m.group(2)


@pytest.mark.slow
@pytest.mark.parametrize("from_header, name, user", HOSTILE,
                         ids=[f"h{i}" for i in range(len(HOSTILE))])
def test_hostile_caller_id_routes_sanitised_and_costs_no_health(realswitch, rs_daemon,
                                                                from_header, name, user):
    result = realswitch.call(world.US_NUMBER, from_header=from_header,
                             headers={"X-Tenant": "acme"}, hold_ms=500)
    assert result.code == 200, result
    legs = realswitch.wait_call(result)
    assert [leg.gateway for leg in legs[1:]] == ["gw_a"]       # the first carrier took it
    invites = realswitch.carrier("gw_a").invite_log()
    assert len(invites) == 1
    assert _from(invites[0]["text"]) == (name, user)
    cdr = rs_daemon.wait_cdr(legs[0].uuid)
    assert (cdr["carrier"], cdr["attempts"]) == ("alpha", 1)
    assert metric(rs_daemon.process, "switchd_failovers_total") == 0


@pytest.mark.slow
def test_ten_hostile_calls_leave_routing_up(realswitch, rs_daemon):
    """The field failure: ten such calls used to disable every carrier."""
    for _ in range(10):
        result = realswitch.call(world.US_NUMBER, from_header=b'"x${uuid}" <sip:1${x}@127.0.0.1>',
                                 headers={"X-Tenant": "acme"}, hold_ms=200)
        assert result.code == 200, result
        realswitch.wait_call(result)
    ok = realswitch.call(world.US_NUMBER, headers={"X-Tenant": "acme"}, hold_ms=200)
    assert ok.code == 200
    realswitch.wait_call(ok)
    assert metric(rs_daemon.process, "switchd_failovers_total") == 0
    assert rs_daemon.rows("SELECT min(health) FROM carriers")[0][0] == 100
