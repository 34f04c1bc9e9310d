from __future__ import annotations

import pytest

from dialplan.causes import (CAUSE_RULES, FREESWITCH_CAUSES, SIP_RULES, Outcome, classify,
                             no_failover_causes, rule_for, should_failover, switch_refused)

C, E, L, S = Outcome.CARRIER_FAILURE, Outcome.CALLEE, Outcome.LOCAL, Outcome.SUCCESS

# Every row of CAUSE_RULES, restated: a change to the table must change this test too.
EXPECTED_CAUSES = {
    "NORMAL_TEMPORARY_FAILURE": (C, True), "NETWORK_OUT_OF_ORDER": (C, True),
    "RECOVERY_ON_TIMER_EXPIRE": (C, True), "GATEWAY_DOWN": (C, True),
    "NORMAL_CIRCUIT_CONGESTION": (C, True), "REQUESTED_CHAN_UNAVAIL": (C, True),
    "SERVICE_UNAVAILABLE": (C, True), "SERVICE_NOT_IMPLEMENTED": (C, True),
    "FACILITY_REJECTED": (C, True), "INTERWORKING": (C, True),
    "EXCHANGE_ROUTING_ERROR": (C, True), "INCOMPATIBLE_DESTINATION": (C, True),
    "BEARERCAPABILITY_NOTAVAIL": (C, True), "NO_ROUTE_TRANSIT_NET": (C, True),
    "NO_ROUTE_DESTINATION": (C, True), "OUTGOING_CALL_BARRED": (C, True),
    "MEDIA_TIMEOUT": (C, True), "NORMAL_UNSPECIFIED": (C, True),
    "USER_BUSY": (E, False), "CALL_REJECTED": (E, False), "NO_ANSWER": (E, False),
    "NO_USER_RESPONSE": (E, False), "SUBSCRIBER_ABSENT": (E, False),
    "UNALLOCATED_NUMBER": (E, False), "NUMBER_CHANGED": (E, False),
    "INVALID_NUMBER_FORMAT": (E, False), "USER_NOT_REGISTERED": (E, False),
    "NORMAL_CLEARING": (E, False), "ORIGINATOR_CANCEL": (E, False), "LOSE_RACE": (E, False),
    "PICKED_OFF": (E, False),
    "DESTINATION_OUT_OF_ORDER": (L, True), "ALLOTTED_TIMEOUT": (E, False),
    "SWITCH_CONGESTION": (L, True), "CHAN_NOT_IMPLEMENTED": (L, True),
    "INVALID_GATEWAY": (L, True), "INVALID_PROFILE": (L, True),
    "MANAGER_REQUEST": (L, False), "SYSTEM_SHUTDOWN": (L, False), "CRASH": (L, False),
}
EXPECTED_SIP = {486: (E, False), 600: (E, False), 603: (E, False), 404: (E, False),
                604: (E, False), 410: (E, False), 484: (E, False), 480: (C, True),
                487: (E, False), 401: (C, True), 402: (C, True), 403: (C, True),
                407: (C, True), 408: (C, True), 500: (C, True), 502: (C, True),
                503: (C, True), 504: (C, True)}


def test_tables_are_fully_covered():
    assert set(EXPECTED_CAUSES) == set(CAUSE_RULES)
    assert set(EXPECTED_SIP) == set(SIP_RULES)


@pytest.mark.parametrize("cause", sorted(EXPECTED_CAUSES))
def test_every_cause_row(cause):
    outcome, failover = EXPECTED_CAUSES[cause]
    assert classify(cause, None, answered=False) is outcome
    assert should_failover(cause) is failover
    assert classify(cause.lower(), None, answered=False) is outcome    # case-insensitive
    assert cause in FREESWITCH_CAUSES


@pytest.mark.parametrize("code", sorted(EXPECTED_SIP))
def test_every_sip_row(code):
    outcome, failover = EXPECTED_SIP[code]
    # with a non-authoritative cause the SIP status decides
    assert classify("NORMAL_UNSPECIFIED", code, answered=False) is outcome
    assert should_failover("NORMAL_UNSPECIFIED", code) is failover


@pytest.mark.parametrize("cause", sorted(EXPECTED_CAUSES) + ["", None, "WHATEVER"])
def test_answered_is_success_whatever_the_cause(cause):
    assert classify(cause, 200, answered=True) is S
    assert classify(cause, None, answered=True) is S


def test_design_11_cases():
    # busy and decline are the callee's answer: never fail over, never hurt health
    assert classify("USER_BUSY", 486, False) is E and not should_failover("USER_BUSY", 486)
    assert classify("CALL_REJECTED", 603, False) is E and not should_failover("CALL_REJECTED", 603)
    # FreeSWITCH's sps throttle is ours, not the carrier's
    assert classify("DESTINATION_OUT_OF_ORDER", None, False) is L
    # carrier 503 then failover (capture scenario b), ICMP failure (scenario f, sip 503)
    assert classify("NORMAL_TEMPORARY_FAILURE", 503, False) is C
    assert should_failover("NORMAL_TEMPORARY_FAILURE", 503)
    # carrier 403 (auth/credit) is the carrier's, though FreeSWITCH calls it CALL_REJECTED.
    # This test used to stop here, asserting a failover that never happened: in a `|` dial
    # string FreeSWITCH sees only the cause, and CALL_REJECTED (= 603 decline too) is in
    # fail_on_single_reject, so a real FreeSWITCH 1.10.12 ended the call on a carrier's 403.
    assert classify("CALL_REJECTED", 403, False) is C
    assert "CALL_REJECTED" in no_failover_causes()      # what a `|` list really does with 403
    # The routing answer therefore bridges one carrier per attempt and asks switchd again,
    # which reads the SIP code and follows the table: 403 next, 603 stop.
    from dialplan.failover import FailoverTable, decide
    assert decide(FailoverTable(), "CALL_REJECTED", 403).action == "next"
    assert decide(FailoverTable(), "CALL_REJECTED", 603).action == "stop"


def test_authoritative_causes_beat_sip_status():
    assert classify("ORIGINATOR_CANCEL", 503, False) is E
    assert classify("DESTINATION_OUT_OF_ORDER", 503, False) is L
    assert classify("NO_ANSWER", 503, False) is E


def test_unknown_codes_and_causes():
    assert classify("SOMETHING_NEW", None, False) is C
    assert should_failover("SOMETHING_NEW")
    assert classify(None, None, False) is C
    assert classify(None, 599, False) is C
    assert classify(None, 499, False) is C
    assert classify(None, 699, False) is E and not should_failover(None, 699)
    assert classify("USER_BUSY", 199, False) is E       # provisional code ignored
    assert classify("USER_BUSY", True, False) is E      # bool is not a status


def test_no_failover_causes_for_freeswitch():
    causes = no_failover_causes()
    assert "USER_BUSY" in causes and "CALL_REJECTED" in causes
    assert "NORMAL_TEMPORARY_FAILURE" not in causes and "DESTINATION_OUT_OF_ORDER" not in causes
    joined = ",".join(causes)
    # FreeSWITCH matches with a substring search: no carrier-failure cause may be hit
    for cause, rule in CAUSE_RULES.items():
        if rule.failover:
            assert cause not in joined, cause
    assert all(c in FREESWITCH_CAUSES for c in causes)


def test_rule_has_explanation():
    for rule in list(CAUSE_RULES.values()) + list(SIP_RULES.values()):
        assert rule.why
    assert rule_for("USER_BUSY", None, False).why


def test_docs_list_every_rule():
    from pathlib import Path
    from dialplan.policy import REFUSALS
    doc = (Path(__file__).resolve().parent.parent / "docs" / "routing.md").read_text()
    for cause in CAUSE_RULES:
        assert f"| `{cause}` |" in doc, cause
    for code in SIP_RULES:
        assert f"| {code} |" in doc, code
    for reason, r in REFUSALS.items():
        assert f"| `{reason}` | {r.sip_code} | `{r.cause}` |" in doc, reason


@pytest.mark.parametrize("cause,sip,answered,expected", [
    ("ALLOTTED_TIMEOUT", None, False, "no_answer"),       # ring-out at leg_timeout (FS 1.10)
    ("ALLOTTED_TIMEOUT", 200, True, "max_duration"),      # our sched_hangup / watchdog
    ("MEDIA_TIMEOUT", None, True, "media_timeout"),       # the carrier's RTP stopped
    ("MEDIA_TIMEOUT", None, False, "carrier_failure"),
    ("NORMAL_CLEARING", 200, True, "answered"),
    ("NO_ANSWER", None, False, "no_answer"),
    ("ORIGINATOR_CANCEL", 487, False, "cancelled"),
    ("CALL_REJECTED", 603, False, "callee"),
    ("CALL_REJECTED", 403, False, "carrier_failure"),
    ("DESTINATION_OUT_OF_ORDER", None, False, "local"),
])
def test_disposition(cause, sip, answered, expected):
    from dialplan.causes import disposition
    assert disposition(cause, sip, answered) == expected


def test_ring_out_is_no_carrier_failure_and_no_failover():
    assert classify("ALLOTTED_TIMEOUT", None, answered=False) is E
    assert should_failover("ALLOTTED_TIMEOUT", 487) is False


@pytest.mark.parametrize("cause, sip, refused", [
    ("DESTINATION_OUT_OF_ORDER", None, True),     # throttle, max-sessions, RTP ports
    ("destination_out_of_order", None, True),
    ("DESTINATION_OUT_OF_ORDER", 502, False),     # a SIP answer: it left the switch
    ("NORMAL_TEMPORARY_FAILURE", None, False),
    ("GATEWAY_DOWN", None, False),                # that carrier's, not every carrier's
    (None, None, False),
])
def test_switch_refused_is_our_switch_failing_the_leg_before_any_answer(cause, sip, refused):
    assert switch_refused(cause, sip) is refused


@pytest.mark.parametrize("carrier_leg, tried, caller_cause, expected", [
    ("cancelled", True, "ORIGINATOR_CANCEL", "cancelled"),    # CANCEL while a carrier rang
    ("answered", True, "NORMAL_CLEARING", "answered"),
    ("carrier_failure", True, "NORMAL_TEMPORARY_FAILURE", "carrier_failure"),
    (None, True, "ORIGINATOR_CANCEL", None),                   # the leg's own (none stored)
    (None, False, "ORIGINATOR_CANCEL", "cancelled"),           # CANCEL before any carrier
    (None, False, "originator_cancel", "cancelled"),
    (None, False, "NORMAL_CIRCUIT_CONGESTION", None),          # refused: the routing log says
    (None, False, None, None),
])
def test_call_disposition(carrier_leg, tried, caller_cause, expected):
    from dialplan.causes import call_disposition
    assert call_disposition(carrier_leg, tried, caller_cause) == expected
