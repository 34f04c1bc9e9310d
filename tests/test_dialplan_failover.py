"""The failover table (dialplan/failover.py) and caller-ID sanitising (dialplan/callerid.py):
every default row, whose failure each outcome is, operator overrides and their errors."""
from __future__ import annotations

import pytest

from dialplan import callerid, failover
from dialplan.failover import (DEFAULT_TABLE, FailoverTable, TableError, decide, parse_table,
                              route_to_repeat)

TABLE = FailoverTable()

# (hangup cause FreeSWITCH reports, SIP status or None) -> (key, action, blame, caller hears)
# The causes are what FreeSWITCH 1.10.12 really posts (docs/routing.md, verified by hand).
ROWS = {
    ("NORMAL_TEMPORARY_FAILURE", 500): ("5xx", "next", "carrier", 500),
    ("NORMAL_TEMPORARY_FAILURE", 503): ("5xx", "next", "carrier", 503),
    ("NETWORK_OUT_OF_ORDER", 502): ("5xx", "next", "carrier", 502),
    ("RECOVERY_ON_TIMER_EXPIRE", 408): ("408", "next", "carrier", 408),
    ("ALLOTTED_TIMEOUT", None): ("timeout", "next", "callee", 480),      # ring-out at leg_timeout
    ("ALLOTTED_TIMEOUT", 487): ("timeout", "next", "callee", 480),       # 487 answered our CANCEL
    ("RECOVERY_ON_TIMER_EXPIRE", None): ("unreachable", "next", "carrier", 503),
    ("CALL_REJECTED", 403): ("403", "next", "carrier", 403),
    ("CALL_REJECTED", 401): ("401", "next", "carrier", 401),
    ("CALL_REJECTED", 407): ("407", "next", "carrier", 407),
    ("NO_USER_RESPONSE", 480): ("480", "next", "carrier", 480),
    ("USER_BUSY", 486): ("486", "stop", "callee", 486),
    ("USER_BUSY", 600): ("600", "stop", "callee", 600),
    ("CALL_REJECTED", 603): ("603", "stop", "callee", 603),
    ("UNALLOCATED_NUMBER", 404): ("404", "stop", "callee", 404),
    ("INVALID_NUMBER_FORMAT", 484): ("484", "stop", "callee", 484),
    ("ORIGINATOR_CANCEL", 487): ("487", "stop", "callee", 487),
    ("NORMAL_UNSPECIFIED", 900): ("not_sent", "next", "nobody", 503),   # sofia: From unbuildable
    ("DESTINATION_OUT_OF_ORDER", None): ("not_sent", "next", "nobody", 503),
    ("GATEWAY_DOWN", None): ("not_sent", "next", "nobody", 503),
    # switchd's own kill of a leg to a carrier at its channel cap: try the next, blame nobody
    ("NORMAL_CIRCUIT_CONGESTION", None): ("other", "next", "nobody", 503),
    ("ORIGINATOR_CANCEL", None): ("other", "next", "callee", 503),
}


@pytest.mark.parametrize("cause, sip", sorted(ROWS, key=str))
def test_every_default_row(cause, sip):
    key, action, blame, code = ROWS[(cause, sip)]
    verdict = decide(TABLE, cause, sip)
    assert (verdict.key, verdict.action, verdict.blame) == (key, action, blame)
    assert failover.caller_code(verdict) == code
    assert failover.blame(cause, sip, answered=False) == blame
    assert failover.blame(cause, sip, answered=True) == "success"


def test_an_answered_leg_the_carrier_left_silent_is_the_carriers_failure():
    assert failover.blame("MEDIA_TIMEOUT", None, answered=True) == "carrier"
    assert failover.blame("media_timeout", 200, answered=True) == "carrier"
    assert failover.blame(None, None, answered=True) == "success"      # told at the answer
    assert failover.blame("NORMAL_CLEARING", 200, answered=True) == "success"
    assert [failover.failed_after_answer(c) for c in ("MEDIA_TIMEOUT", " media_timeout",
                                                      "NORMAL_CLEARING", None)] == \
        [True, True, False, False]


def test_design_rows_are_in_the_default_table():
    for key in ("5xx", "408", "timeout", "unreachable", "403", "401", "407", "480"):
        assert DEFAULT_TABLE[key] == "next", key
    for key in ("486", "600", "603", "404", "484", "487"):
        assert DEFAULT_TABLE[key] == "stop", key


def test_unlisted_codes_fall_to_their_class():
    assert (decide(TABLE, "X", 499).key, decide(TABLE, "X", 499).action) == ("4xx", "next")
    assert (decide(TABLE, "X", 699).key, decide(TABLE, "X", 699).action) == ("6xx", "stop")
    assert decide(TABLE, "X", 699).blame == "callee"
    assert decide(TABLE, "WHATEVER", 599).blame == "carrier"


def test_operator_override_changes_the_action_not_the_blame():
    table = parse_table({"486": "next", "5xx": "stop", "503": "next", "TIMEOUT": "Stop"})
    assert decide(table, "USER_BUSY", 486).action == "next"
    assert decide(table, "USER_BUSY", 486).blame == "callee"    # still not the carrier's
    assert decide(table, "X", 500).action == "stop"
    assert decide(table, "X", 503).action == "next"             # exact code beats its class
    assert decide(table, "ALLOTTED_TIMEOUT", None).action == "stop"
    assert decide(table, "USER_BUSY", 600).action == "stop"     # untouched rows keep defaults


@pytest.mark.parametrize("raw, message", [
    ({"49x": "next"}, "failover.49x: not a SIP code (403), class (5xx) or condition"),
    ({"200": "next"}, "failover.200: only final failure codes"),
    ({"403": "retry"}, "failover.403: 'retry' is not \"next\" or \"stop\""),
    ({"403": 1}, "failover.403: 1 is not"),
    ({"busy": "stop"}, "failover.busy: not a SIP code"),
])
def test_bad_rows_name_the_key(raw, message):
    with pytest.raises(TableError) as caught:
        parse_table(raw)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_config_file_failover_section(tmp_path):
    from switchd.config import ConfigError, load_config
    good = tmp_path / "good.toml"
    good.write_text('[failover]\n"486" = "next"\n"5xx" = "stop"\n')
    table = load_config(good, environ={})["failover"]
    assert table.action("486") == "next" and table.action("5xx") == "stop"
    assert table.action("603") == "stop"
    assert load_config(None, environ={})["failover"] == FailoverTable()
    bad = tmp_path / "bad.toml"
    bad.write_text('[failover]\n"403" = "maybe"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(bad, environ={})
    assert str(caught.value) == f"{bad}: failover.403: 'maybe' is not \"next\" or \"stop\""


def test_proto_specific_cause():
    assert failover.parse_proto_cause("sip:403") == 403
    assert failover.parse_proto_cause("sip:900") == 900
    for junk in (None, "", "q850:17", "sip:", "sip:4033", "sip:abc"):
        assert failover.parse_proto_cause(junk) is None


# --- caller ID -------------------------------------------------------------------------
HOSTILE_NAMES = ['Bad \\"q\\" <x>', '"quoted"', "<sip:evil@x>", "x${uuid}", "$${hostname}",
                 "a%0Ab%0d%0AEvent-Name: X", "A" * 300, "bad\udcffbytes\ufffd", "tab\there",
                 "{a,b}[c]|d^e'f\\g", "\x00\x1b[31m"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_come_out_safe(name):
    from dialplan.xml_answer import check_value
    clean = callerid.sanitise_name(name)
    assert check_value(clean) == clean                 # safe in a FreeSWITCH `set`
    assert not set(clean) & set('"<>${}%\\\'\n\r\t')
    assert len(clean) <= callerid.MAX_NAME and clean == clean.strip()
    assert "\ufffd" not in clean and all(not 0xD800 <= ord(c) <= 0xDFFF for c in clean)


def test_names_keep_what_is_harmless():
    assert callerid.sanitise_name("José O'Neil (Sales) #2") == "José ONeil (Sales) #2"
    assert callerid.sanitise_name("a b X-Evil: 1") == "a b X-Evil 1"     # sofia cuts at ':'
    assert callerid.sanitise_name("A.B-C_D (E) & F + G # H!?*:/@") == "A.B-C_D (E) & F + G # H"
    assert callerid.sanitise_name('Bad \\"q\\" <x>') == "Bad q x"
    assert callerid.sanitise_name("a%0Ab") == "a b"


@pytest.mark.parametrize("number, clean", [
    ("+44 20 7946-0000", "+442079460000"), ("1001", "1001"), ("(555) 123.4567", "5551234567"),
    ("12${uuid}34", "anonymous"), ("<sip:x>", "anonymous"), ("", "anonymous"), (None, "anonymous"),
    ("1" * 21, "anonymous"), ("+", "anonymous"), ("1%0A2", "anonymous"), ("١٢٣", "anonymous"),
])
def test_numbers(number, clean):
    assert callerid.sanitise_number(number) == clean


def test_empty_name_takes_the_number():
    assert callerid.caller_id("", "+15551234567") == ("+15551234567", "+15551234567")
    assert callerid.caller_id('"<>"', "x") == ("Anonymous", "anonymous")


def test_check_config_prints_the_effective_table(tmp_path, capsys):
    from switchd.commands.admin import check_config
    from switchd.config import load_config
    path = tmp_path / "s.toml"
    path.write_text('[failover]\n"480" = "stop"\n')
    assert check_config(load_config(path, environ={}), None) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.split("#")[0].split() == ["failover.480", "=", '"stop"'] and str(path) in line
               for line in out), out
    assert any(line.split("#")[0].split() == ["failover.486", "=", '"stop"'] and "default" in line
               for line in out)


@pytest.mark.parametrize("tried, again, cause, sip, expected", [
    (["a/gw_a"], [], "DESTINATION_OUT_OF_ORDER", None, "a/gw_a"),
    (["a/gw_a"], ["a/gw_a"], "DESTINATION_OUT_OF_ORDER", None, None),    # once only
    (["a/gw_a", "b/gw_b"], ["a/gw_a"], "DESTINATION_OUT_OF_ORDER", None, "b/gw_b"),
    (["a/gw_a"], [], "DESTINATION_OUT_OF_ORDER", 502, None),             # it left the switch
    (["a/gw_a"], [], "GATEWAY_DOWN", None, None),                        # that carrier's
    ([], [], "DESTINATION_OUT_OF_ORDER", None, None),
])
def test_route_to_repeat_is_the_last_route_our_switch_failed_once(tried, again, cause, sip,
                                                                  expected):
    assert route_to_repeat(tried, again, cause, sip) == expected


# --- originated calls (switchd/calls/originate.py) -----------------------------------------
# Outcomes FreeSWITCH reports for an originate attempt, with and without the SIP status its
# hangup event carries (None: the event did not come, or the leg never reached the wire).
ORIGINATE_OUTCOMES = [(cause, sip) for cause, sip in ROWS] + [
    ("USER_BUSY", None), ("CALL_REJECTED", None), ("NO_ANSWER", None),
    ("GATEWAY_DOWN", None), ("DESTINATION_OUT_OF_ORDER", None), ("NORMAL_CLEARING", None)]


@pytest.mark.parametrize("cause,sip", ORIGINATE_OUTCOMES)
def test_without_overrides_an_originate_keeps_its_own_defaults(cause, sip):
    from dialplan import causes
    assert failover.originate_fails_over(TABLE, cause, sip) is causes.should_failover(cause, sip)


def test_an_originate_rings_out_and_stops_where_a_bridge_goes_on():
    assert decide(TABLE, "ALLOTTED_TIMEOUT", None).action == "next"
    assert failover.originate_fails_over(TABLE, "ALLOTTED_TIMEOUT", None) is False
    # a busy callee whose hangup event never came is not an unreachable carrier
    assert failover.originate_fails_over(TABLE, "USER_BUSY", None) is False


@pytest.mark.parametrize("overrides,cause,sip,go_on", [
    ({"403": "stop"}, "CALL_REJECTED", 403, False),
    ({"403": "stop"}, "NORMAL_TEMPORARY_FAILURE", 503, True),      # other rows untouched
    ({"486": "next"}, "USER_BUSY", 486, True),
    ({"5xx": "stop"}, "NORMAL_TEMPORARY_FAILURE", 503, False),
    ({"4xx": "stop"}, "CALL_REJECTED", 403, True),                 # the 403 row beats its class
    ({"timeout": "next"}, "ALLOTTED_TIMEOUT", None, True),
    ({"not_sent": "stop"}, "GATEWAY_DOWN", None, False),
])
def test_the_operators_rows_decide_an_originate_as_they_decide_a_bridge(overrides, cause, sip,
                                                                         go_on):
    table = parse_table(overrides)
    assert failover.originate_fails_over(table, cause, sip) is go_on
    assert (decide(table, cause, sip).action == "next") is go_on
