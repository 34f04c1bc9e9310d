"""A caller ID that sofia cannot put on the wire must not take carriers down: the call
routes with a sanitised caller ID, or is refused cleanly, and no carrier loses health
(DESIGN §4: a leg that never reached the wire is nobody's failure)."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from . import world

pytestmark = pytest.mark.realswitch

URI = b" <sip:1000@127.0.0.1>"
HOSTILE = [
    pytest.param(b'"a \\"b\\" <x>"' + URI, id="escaped-quotes-angle"),
    pytest.param(b'"a \\"b\\" ${x}"' + URI, id="escaped-quotes-var"),
    pytest.param(b'"a%0Ab"' + URI, id="percent-0A"),
    pytest.param(b'"evil <x>"' + URI, id="angle-brackets"),
    pytest.param(b'"<x> ${uuid}"' + URI, id="angle-and-var"),
    pytest.param(b'"${uuid}"' + URI, id="var"),
    pytest.param(b'"' + b"x" * 300 + b'"' + URI, id="300-chars"),
    pytest.param(b'"caf\xe9"' + URI, id="not-utf8"),
    pytest.param(b"evil <x>" + URI, id="unquoted-angle"),       # sofia answers 400 itself
]


@pytest.mark.parametrize("from_header", HOSTILE)
def test_hostile_caller_id_routes_sanitised_or_is_refused(realswitch, rs_daemon, from_header):
    dialled, carrier, _ = world.DESTINATIONS[0]
    result = realswitch.call(dialled, from_header=from_header, hold_ms=500)
    legs = realswitch.wait_call(result)
    if legs:
        rs_daemon.wait_cdr(legs[0].uuid)
    if result.answered:
        assert realswitch.invites() == {"gw_a": 1, "gw_b": 0, "gw_c": 0}
        sent_from = realswitch.carrier(world.GATEWAY_OF[carrier]).invite_log()[0]["from"]
        assert "${" not in sent_from and sent_from.count('"') in (0, 2), sent_from
    else:     # refused: by switchd (the A-leg only) or by sofia itself (no channel at all)
        assert 400 <= result.code < 500 and len(legs) <= 1, (result, legs)
        assert realswitch.invites() == {"gw_a": 0, "gw_b": 0, "gw_c": 0}
    assert all(v == 100 for v in carrier_health(rs_daemon).values()), carrier_health(rs_daemon)


def carrier_health(rs_daemon) -> dict[str, float]:
    """switchd_carrier_health per carrier, for the carriers it has a sample of."""
    status, text = rs_daemon.process.get("/metrics")
    assert status == 200
    return {s.labels["carrier"]: s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "switchd_carrier_health"}
