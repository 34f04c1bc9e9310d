"""Typed events from the captured scenarios, and the command builders."""
from __future__ import annotations

from pathlib import Path

import pytest

from switchd.adapters.esl import commands
from switchd.adapters.esl.events import (
    OLD_UUID_VAR, SUBSCRIBED_EVENTS, ChannelEvent, GatewayEvent, HeartbeatEvent, JobEvent,
    subscription_command, to_typed,
)
from switchd.adapters.esl.framing import FrameParser, parse_event

FIXTURES = Path(__file__).parent / "fixtures" / "freeswitch-1.10"


def typed(letter: str, kind: str = "plain") -> list:
    parser = FrameParser()
    parser.feed((FIXTURES / f"events-{kind}-{letter}.txt").read_bytes())
    out = []
    for frame in parser.frames():
        headers = parse_event(frame)
        if headers is not None and (event := to_typed(headers)) is not None:
            out.append(event)
    return out


def completes(letter: str) -> list[ChannelEvent]:
    return [e for e in typed(letter) if isinstance(e, ChannelEvent)
            and e.name == "CHANNEL_HANGUP_COMPLETE"]


@pytest.mark.parametrize("letter", "abcdefg")
def test_plain_and_json_give_the_same_typed_events(letter):
    plain = typed(letter, "plain")
    assert plain and plain == typed(letter, "json")


def test_scenario_a_answered_call_through_carrier_a():
    legs = {e.direction: e for e in completes("a")}
    a, b = legs["inbound"], legs["outbound"]
    assert b.gateway == "carrier_a" and a.other_leg_uuid == b.uuid and b.other_leg_uuid == a.uuid
    # FreeSWITCH fact: after a bridged call ends, the B-leg's HANGUP_COMPLETE may carry its
    # own UUID as Channel-Call-UUID; only its CHANNEL_CREATE reliably names the A-leg.
    assert b.call_uuid == b.uuid
    create = next(e for e in typed("a") if isinstance(e, ChannelEvent)
                  and e.name == "CHANNEL_CREATE" and e.uuid == b.uuid)
    assert create.call_uuid == a.uuid
    assert a.hangup_cause == b.hangup_cause == "NORMAL_CLEARING"
    assert b.answered_us > 0 and b.billmsec > 0 and a.destination_number == "1001"


def test_scenario_b_failover_gives_two_carrier_legs():
    legs = [e for e in completes("b") if e.gateway]
    assert [e.gateway for e in legs] == ["carrier_a", "carrier_b"]
    failed, answered = legs
    assert failed.hangup_cause == "NORMAL_TEMPORARY_FAILURE" and failed.sip_status == 503
    assert failed.answered_us == 0 and failed.billmsec == 0
    assert answered.hangup_cause == "NORMAL_CLEARING" and answered.billmsec == 1040
    assert answered.answered_us > 0
    assert {e.call_uuid for e in legs} == {"2aa200b6-027b-44b3-ae1f-77fe4177ff38"}


def test_scenario_c_allotted_timeout_on_a_leg():
    legs = {e.direction: e for e in completes("c")}
    assert legs["inbound"].hangup_cause == "ALLOTTED_TIMEOUT"
    assert legs["outbound"].hangup_cause == "NORMAL_CLEARING"


def test_scenario_d_originate_job_and_leg():
    events = typed("d")
    jobs = [e for e in events if isinstance(e, JobEvent)]
    assert jobs == [JobEvent(job_uuid="7b72d502-f41e-46a7-a781-ef3f4bb42122",
                             body="+OK 8f74583b-42d4-4ee6-bbb0-548d0e499fae\n")]
    assert jobs[0].ok
    (leg,) = completes("d")
    assert leg.uuid == leg.origination_uuid == "8f74583b-42d4-4ee6-bbb0-548d0e499fae"
    assert leg.gateway == "carrier_a" and leg.direction == "outbound"


@pytest.mark.parametrize("letter, body, cause, sip", [
    ("e", "-ERR USER_BUSY\n", "USER_BUSY", 486),
    ("f", "-ERR NORMAL_TEMPORARY_FAILURE\n", "NORMAL_TEMPORARY_FAILURE", 503),
])
def test_failed_originates(letter, body, cause, sip):
    (job,) = [e for e in typed(letter) if isinstance(e, JobEvent)]
    assert job.body == body and not job.ok
    (leg,) = completes(letter)
    assert leg.hangup_cause == cause and leg.sip_status == sip and leg.answered_us == 0


def test_scenario_g_gateway_lifecycle():
    events = [e for e in typed("g") if not isinstance(e, ChannelEvent)]
    gateways = [(e.kind, e.gateway) for e in events if isinstance(e, GatewayEvent)]
    assert gateways == [("delete", "carrier_b"), ("add", "carrier_b"), ("add", "probe"),
                        ("state", "probe"), ("state", "probe"), ("delete", "probe")]
    state = next(e for e in events if isinstance(e, GatewayEvent) and e.kind == "state")
    assert (state.state, state.ping_status, state.status) == ("NOREG", "DOWN", "503")
    assert any(isinstance(e, HeartbeatEvent) and e.timestamp_us > 0 for e in events)


def test_vars_hold_switchd_variables_only():
    event = to_typed({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Unique-ID": "u",
                      "variable_switchd_tenant": "acme", "variable_switchd_rate": "0.0123",
                      "variable_sip_gateway_name": "carrier_a", "variable_other": "x"})
    assert event.vars == {"switchd_tenant": "acme", "switchd_rate": "0.0123"}
    assert event.call_uuid == "u" and event.sip_status is None and event.billmsec is None


def test_uuid_rename_carries_old_uuid():
    event = to_typed({"Event-Name": "CHANNEL_UUID", "Unique-ID": "new", "Old-Unique-ID": "old"})
    assert event.uuid == "new" and event.vars[OLD_UUID_VAR] == "old"


@pytest.mark.parametrize("headers", [
    {"Event-Name": "CHANNEL_STATE", "Unique-ID": "u"},
    {"Event-Name": "CHANNEL_CREATE"},                            # no Unique-ID
    {"Event-Name": "CUSTOM", "Event-Subclass": "sofia::register", "Gateway": "g"},
    {"Event-Name": "BACKGROUND_JOB"},                            # no Job-UUID
    {},
])
def test_unused_or_incomplete_events_are_none(headers):
    assert to_typed(headers) is None


def test_bad_numbers_do_not_raise():
    event = to_typed({"Event-Name": "CHANNEL_HANGUP", "Unique-ID": "u",
                      "Event-Sequence": "x", "variable_sip_term_status": "abc"})
    assert event.sequence == 0 and event.sip_status is None


def test_subscription_line():
    assert subscription_command() == (
        "event plain " + " ".join(SUBSCRIBED_EVENTS))
    assert subscription_command("json").startswith("event json CHANNEL_CREATE ")


# --- commands -------------------------------------------------------------------------------
def test_command_builders():
    assert commands.auth("ClueCon") == "auth ClueCon"
    assert commands.api("uuid_getvar", "u", "billmsec") == "api uuid_getvar u billmsec"
    assert commands.bgapi("status", job_uuid="j-1") == "bgapi status\nJob-UUID: j-1"
    assert commands.job_uuid_of(commands.bgapi("status", job_uuid="j-1")) == "j-1"
    assert commands.uuid_kill("u") == "api uuid_kill u NORMAL_CLEARING"
    assert commands.sched_hangup("u", 30, "ALLOTTED_TIMEOUT") == \
        "api sched_hangup +30 u ALLOTTED_TIMEOUT"
    assert commands.show_channels_json() == "api show channels as json"
    assert commands.originate("sofia/gateway/carrier_a/2001", vars={
        "origination_uuid": "8f74", "switchd_tenant": "acme"}) == \
        "{origination_uuid=8f74,switchd_tenant=acme}sofia/gateway/carrier_a/2001 &park()"
    assert commands.event_subscription(["sofia::gateway_add", "HEARTBEAT"]) == \
        "event plain HEARTBEAT CUSTOM sofia::gateway_add"


@pytest.mark.parametrize("build", [
    lambda: commands.api("status\napi fsctl shutdown"),
    lambda: commands.api("status", "a\rb"),
    lambda: commands.api("status", "a\0b"),
    lambda: commands.bgapi("status", job_uuid="j\n"),
    lambda: commands.auth("pass\n\nevent plain ALL"),
    lambda: commands.uuid_kill("u\n"),
    lambda: commands.originate("sofia/gateway/a/1", vars={"x": "1}&bridge(evil)"}),
    lambda: commands.originate("sofia/gateway/a/1", vars={"x": "a,b"}),
    lambda: commands.originate("sofia/gateway/a/1 &bridge(x)"),
    lambda: commands.sched_hangup("u", 30, "ALLOTED_TIMEOUT"),    # the classic typo
    lambda: commands.uuid_kill("u", "alloted_timeout"),
    lambda: commands.sched_hangup("u", -1, "ALLOTTED_TIMEOUT"),
    lambda: commands.sched_hangup("u", 1.5, "ALLOTTED_TIMEOUT"),
    lambda: commands.api(""),
])
def test_builders_refuse_bad_arguments(build):
    with pytest.raises(ValueError):
        build()


def test_cause_list_covers_causes_seen_in_captures():
    for cause in ("NORMAL_CLEARING", "NORMAL_TEMPORARY_FAILURE", "USER_BUSY",
                  "ALLOTTED_TIMEOUT", "DESTINATION_OUT_OF_ORDER", "CALL_REJECTED"):
        assert commands.hangup_cause(cause) == cause


# --- the reader's fast path for channel events --------------------------------------------------
from urllib.parse import quote, unquote  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from switchd.adapters.esl.events import CHANNEL_EVENTS, channel_event_from_plain  # noqa: E402
from switchd.adapters.esl.framing import (  # noqa: E402
    ESLEventError, _unquote_many, parse_event_plain, peek_plain_event_name,
)


def _plain_bodies():
    for path in sorted(FIXTURES.glob("events-plain-*.txt")):
        parser = FrameParser()
        parser.feed(path.read_bytes())
        for frame in parser.frames():
            if frame.content_type == "text/event-plain":
                yield frame.body


def test_fast_path_equals_full_parse_on_every_captured_channel_event():
    seen = 0
    for body in _plain_bodies():
        full = to_typed(parse_event_plain(body))
        if peek_plain_event_name(body) in CHANNEL_EVENTS:
            seen += 1
            assert channel_event_from_plain(body) == full
        elif not isinstance(full, ChannelEvent):
            assert channel_event_from_plain(body) is None
    assert seen >= 40


_NAMES = st.sampled_from([
    "Event-Name", "Unique-ID", "Channel-Call-UUID", "Other-Leg-Unique-ID", "Call-Direction",
    "Event-Date-Timestamp", "Event-Sequence", "Core-UUID", "Caller-Caller-ID-Number",
    "Caller-Destination-Number", "variable_sip_gateway_name", "Caller-Channel-Created-Time",
    "Caller-Channel-Answered-Time", "Hangup-Cause", "variable_billmsec", "Old-Unique-ID",
    "variable_sip_hangup_disposition",
    "variable_switchd_tenant", "variable_switchd_rate", "variable_switchd_x: y",
    "X-Unique-ID", "Unique-ID-X", "variable_switchd_", "variable_switchd", "Content-Length",
])
_VALUES = st.one_of(
    st.sampled_from(["CHANNEL_CREATE", "CHANNEL_HANGUP_COMPLETE", "u-1", "u-2", "1700000000000000",
                     "12", "", "%0AUnique-ID: forged", "a%3A%20b", "%", "%zz", "%C3%A9", "%E2%82",
                     "100%", "x\\y", ": ", "a: b"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=12),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).map(lambda v: quote(v)),
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(CHANNEL_EVENTS)),
       st.lists(st.tuples(_NAMES, _VALUES), max_size=25),
       st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"),
                        max_size=8), max_size=3))
def test_fast_path_equals_full_parse_on_generated_events(name, headers, junk_lines):
    # Duplicates, look-alike names, encoded newlines, stray '%', lines without ": ".
    lines = [f"Event-Name: {name}"] + [f"{k}: {v}" for k, v in headers] + junk_lines
    body = ("\n".join(line for line in lines if line) + "\n\n").encode()
    try:
        full = to_typed(parse_event_plain(body))
    except ESLEventError:
        return                         # a bad nested Content-Length: the full path drops it
    fast = channel_event_from_plain(body)
    assert fast == (full if isinstance(full, ChannelEvent) else None)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=20),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).map(quote),
    st.text(alphabet="%0aAfFgz9\\é", max_size=12)), max_size=8))
def test_batched_url_decoding_equals_unquote(values):
    assert _unquote_many(values) == [unquote(v, errors="replace") for v in values]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["", "\n", "\n\n"]), st.sampled_from(sorted(CHANNEL_EVENTS)),
       st.lists(st.one_of(st.tuples(_NAMES, _VALUES).map(": ".join), st.just("")),
                max_size=12),
       st.sampled_from(["", "\n", "\n\n"]))
def test_fast_path_ends_the_header_block_where_the_full_parse_does(lead, name, lines, end):
    # Empty lines anywhere (each ends the header block), empty lines before the first, a
    # body without its final blank line.
    body = (lead + "\n".join([f"Event-Name: {name}", "Unique-ID: u"] + lines) + end).encode()
    try:
        full = to_typed(parse_event_plain(body))
    except ESLEventError:
        return
    assert channel_event_from_plain(body) == (full if isinstance(full, ChannelEvent) else None)


def test_first_of_duplicate_headers_wins_as_in_freeswitch():
    body = b"Event-Name: CHANNEL_CREATE\nUnique-ID: first\nUnique-ID: second\n\n"
    assert parse_event_plain(body)["Unique-ID"] == "first"
    assert channel_event_from_plain(body).uuid == "first"


@settings(max_examples=300, deadline=None)
@given(st.integers(-10, 10), st.integers(-10, 10))
def test_first_timestamp_is_the_earliest_non_zero_of_the_two(a, b):
    from switchd.adapters.esl.events import _first
    assert _first(a, b) == min((t for t in (a, b) if t), default=0)
