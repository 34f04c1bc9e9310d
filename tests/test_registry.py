"""Call registry: replay of the FreeSWITCH 1.10 captures a-f, reorders, duplicates, sweeps."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from _fixture_events import channel_events
from switchd.calls.model import (
    CAUSE_SWEPT, CallAnswered, CallEnded, CallRenamed, CallStarted, CarrierOutcome, LegEnded,
)
from switchd.calls.registry import EVENT_KIND, LEG_TRANSITIONS, CallRegistry, RegistryError

A_A, B_A = "3ea30e5f-6258-4225-b4a4-31cbc0030d47", "aa761064"          # capture a legs
A_B = "2aa200b6"
A_C = "c9e6b4b9-ffef-468f-adb1-3c5159f480c2"


def run(events, reg=None):
    reg = CallRegistry() if reg is None else reg   # an empty registry is falsy (__len__)
    effects = []
    for ev in events:
        effects += reg.apply(ev)
    return reg, effects


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def uuid_of(events, prefix):
    return next(e.uuid for e in events if e.uuid.startswith(prefix))


def test_transition_table_is_data_and_total_from_created():
    # a brand-new leg can take any event: creating unknown legs never needs a rollback
    assert all(("created", name) in LEG_TRANSITIONS for name in EVENT_KIND)
    assert ("complete", "CHANNEL_ANSWER") not in LEG_TRANSITIONS


def test_a_simple_call():
    reg, eff = run(channel_events("a"))
    assert len(reg) == 0
    assert len(of(eff, CallStarted)) == 1 and len(of(eff, CallAnswered)) == 1
    assert [e.leg.uuid[:8] for e in of(eff, LegEnded)] == ["aa761064", "3ea30e5f"]
    [ended] = of(eff, CallEnded)
    call = ended.call
    assert call.call_uuid == A_A and call.state == "ended"
    assert call.attempts == 1 and call.carrier == "carrier_a" and call.gateway == "carrier_a"
    assert call.first_choice_carrier == "carrier_a"
    assert call.hangup_cause == "NORMAL_CLEARING" and call.direction == "outbound"
    assert call.destination == "1001" and call.answered_us > 0 and not call.reconstructed
    [out] = of(eff, CarrierOutcome)
    # The carrier's success is told at its answer, before the leg ends (no cause yet).
    assert (out.carrier, out.answered, out.hangup_cause) == ("carrier_a", True, None)
    assert eff.index(out) < eff.index(of(eff, LegEnded)[0])
    assert eff.index(ended) == len(eff) - 1
    b_leg = of(eff, LegEnded)[0].leg
    assert b_leg.billmsec == 1040 and b_leg.call_uuid == A_A


def test_an_answered_leg_cut_for_want_of_rtp_is_also_the_carriers_failure():
    """Capture a with its carrier leg ended MEDIA_TIMEOUT (the gateway's media_timeout,
    tests/fixtures/media-timeout/): the success told at the answer, then the carrier's
    failure when the leg ends, still as an answered leg."""
    events = [replace(e, hangup_cause="MEDIA_TIMEOUT")
              if e.uuid.startswith(B_A) and e.name == "CHANNEL_HANGUP_COMPLETE" else e
              for e in channel_events("a")]
    _, eff = run(events)
    outcomes = of(eff, CarrierOutcome)
    assert [(o.carrier, o.answered, o.hangup_cause) for o in outcomes] == [
        ("carrier_a", True, None), ("carrier_a", True, "MEDIA_TIMEOUT")]
    from dialplan import failover
    assert [failover.blame(o.hangup_cause, o.sip_status, o.answered) for o in outcomes] == \
        ["success", "carrier"]


def test_b_failover_counts_attempts_and_outcomes():
    reg, eff = run(channel_events("b"))
    [ended] = of(eff, CallEnded)
    call = ended.call
    assert call.call_uuid.startswith(A_B)
    assert call.attempts == 2 and call.first_choice_carrier == "carrier_a"
    assert call.carrier == "carrier_b"
    failed, won = of(eff, CarrierOutcome)
    assert (failed.carrier, failed.answered, failed.hangup_cause, failed.sip_status) == \
        ("carrier_a", False, "NORMAL_TEMPORARY_FAILURE", 503)
    assert (won.carrier, won.answered) == ("carrier_b", True)
    # the failed leg completes first; the call ends only with its A-leg, last
    assert [e.leg.uuid[:8] for e in of(eff, LegEnded)] == ["dab161bd", "05e55dea", A_B]
    assert len(of(eff, CallAnswered)) == 1


def test_switchd_variables_win_over_gateway_names():
    carrier_of = {"carrier_a": "Acme", "carrier_b": "Bolt"}

    def with_vars(ev):
        extra = {}
        if ev.gateway:
            extra["switchd_carrier"] = carrier_of[ev.gateway]
        if ev.uuid.startswith(A_B):
            extra.update(switchd_tenant="t1", switchd_max_duration="300",
                         switchd_route_id="r-1", switchd_direction="outbound")
        return replace(ev, vars={**ev.vars, **extra})

    _, eff = run(with_vars(e) for e in channel_events("b"))
    call = of(eff, CallEnded)[0].call
    assert (call.tenant, call.max_duration, call.route_id) == ("t1", 300, "r-1")
    assert (call.first_choice_carrier, call.carrier, call.gateway) == ("Acme", "Bolt", "carrier_b")
    assert [o.carrier for o in of(eff, CarrierOutcome)] == ["Acme", "Bolt"]


def test_c_allotted_timeout_on_the_a_leg():
    _, eff = run(channel_events("c"))
    call = of(eff, CallEnded)[0].call
    assert call.call_uuid == A_C and call.hangup_cause == "ALLOTTED_TIMEOUT"
    b = next(l for l in call.legs if l.uuid != A_C)
    assert b.hangup_cause == "NORMAL_CLEARING" and b.billmsec == 5040


@pytest.mark.parametrize("letter, answered, cause, sip, carrier", [
    ("d", True, "NORMAL_CLEARING", None, "carrier_a"),
    ("e", False, "USER_BUSY", 486, "carrier_a"),
    ("f", False, "NORMAL_TEMPORARY_FAILURE", 503, "carrier_b"),
])
def test_originated_single_leg_calls(letter, answered, cause, sip, carrier):
    events = channel_events(letter)
    _, eff = run(events)
    [ended] = of(eff, CallEnded)
    assert ended.call.call_uuid == events[0].uuid and len(ended.call.legs) == 1
    assert ended.call.direction == "outbound" and ended.call.attempts == 1
    assert len(of(eff, LegEnded)) == 1
    [out] = of(eff, CarrierOutcome)
    # An answered attempt is told at its answer (no cause yet), a failed one at its end.
    assert (out.carrier, out.answered, out.hangup_cause, out.sip_status) == \
        (carrier, answered, None if answered else cause, sip)
    assert len(of(eff, CallAnswered)) == int(answered)


@pytest.mark.parametrize("letter", "abcdef")
def test_duplicates_do_not_double_emit(letter):
    once = run(channel_events(letter))[1]
    twice = run(e for ev in channel_events(letter) for e in (ev, ev))[1]
    assert Counter(type(e) for e in twice) == Counter(type(e) for e in once)


# What the daemon subscribes to (switchd/adapters/esl/events.py SUBSCRIBED_EVENTS, copied so these
# tests do not depend on the parser module).
SUBSCRIBED = {"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_HANGUP",
              "CHANNEL_HANGUP_COMPLETE", "CHANNEL_UUID"}


@pytest.mark.parametrize("letter", "abcdef")
def test_the_subscribed_subset_gives_the_same_story(letter):
    full = run(channel_events(letter))[1]
    subset = run(e for e in channel_events(letter) if e.name in SUBSCRIBED)[1]
    assert [type(e) for e in subset] == [type(e) for e in full]
    assert of(subset, CallEnded)[0].call.attempts == of(full, CallEnded)[0].call.attempts
    assert [o.leg.uuid for o in of(subset, CarrierOutcome)] == \
        [o.leg.uuid for o in of(full, CarrierOutcome)]


def test_a_leg_completing_before_b_leg_waits_for_it():
    events = channel_events("a")
    b_done = next(e for e in events
                  if e.uuid.startswith(B_A) and e.name == "CHANNEL_HANGUP_COMPLETE")
    rest = [e for e in events if e is not b_done]
    reg, eff = run(rest)
    assert of(eff, CallEnded) == [] and len(reg) == 1
    assert reg.get(A_A).state == "ending"
    eff = reg.apply(b_done)
    assert [type(e) for e in eff] == [LegEnded, CallEnded]   # success told at the answer
    assert len(reg) == 0


def test_hangup_complete_alone_is_enough():
    only = [e for e in channel_events("b") if e.name == "CHANNEL_HANGUP_COMPLETE"]
    _, eff = run(only)
    assert len(of(eff, LegEnded)) == 3 and len(of(eff, CallEnded)) == 1
    assert of(eff, CallEnded)[0].call.attempts == 2


def test_unknown_leg_first_seen_answering_is_created():
    ev = next(e for e in channel_events("d") if e.name == "CHANNEL_ANSWER")
    reg, eff = run([ev])
    assert [type(e) for e in eff] == [CallStarted, CarrierOutcome, CallAnswered]
    assert reg.leg(ev.uuid).state == "answered"


def test_b_leg_first_seen_with_own_call_uuid_joins_its_a_leg():
    # capture a: the B-leg's HANGUP_COMPLETE says Channel-Call-UUID = itself
    b_done = next(e for e in channel_events("a")
                  if e.uuid.startswith(B_A) and e.name == "CHANNEL_HANGUP_COMPLETE")
    assert b_done.call_uuid == b_done.uuid
    reg, _ = run([b_done])
    assert reg.leg(b_done.uuid).call_uuid == A_A
    assert reg.get(A_A).a_leg.placeholder


def test_impossible_transition_is_counted_not_raised():
    events = channel_events("a")
    b_hangup = next(i for i, e in enumerate(events)
                    if e.uuid.startswith(B_A) and e.name == "CHANNEL_HANGUP")
    answer = next(e for e in events if e.uuid.startswith(B_A) and e.name == "CHANNEL_ANSWER")
    reg, _ = run(events[:b_hangup + 1])
    assert reg.apply(answer) == []
    assert reg.counters["rejected"] == 1
    assert reg.leg(answer.uuid).state == "hungup"
    _, eff = run(events[b_hangup + 1:], reg)
    assert len(of(eff, CallEnded)) == 1


def test_event_without_uuid_and_foreign_events():
    reg = CallRegistry()
    ev = channel_events("d")[0]
    assert reg.apply(replace(ev, uuid="")) == []
    assert reg.apply(replace(ev, name="CHANNEL_STATE")) == []
    assert reg.counters["rejected"] == 1 and reg.counters["ignored"] == 1 and len(reg) == 0


def test_registry_error_is_the_internal_signal():
    """_apply raises RegistryError for what cannot apply; apply() counts it, never raises."""
    events = channel_events("a")
    reg, _ = run(events)
    done = next(e for e in events if e.name == "CHANNEL_HANGUP_COMPLETE")
    answer_again = next(e for e in events if e.name == "CHANNEL_ANSWER" and e.uuid == done.uuid)
    with pytest.raises(RegistryError, match="without Unique-ID"):
        reg._apply(replace(answer_again, uuid=""))
    with pytest.raises(RegistryError, match="impossible"):
        reg._apply(answer_again)
    rejected = reg.counters["rejected"]
    assert reg.apply(answer_again) == [] and reg.counters["rejected"] == rejected + 1


@pytest.mark.parametrize("via", ["Old-Unique-ID", "old_unique_id", "other_leg"])
def test_channel_uuid_renames_the_call(via):
    events = channel_events("d")
    old = events[0].uuid
    new = "11111111-2222-3333-4444-555555555555"
    answer = next(i for i, e in enumerate(events) if e.name == "CHANNEL_ANSWER")
    reg, _ = run(events[:answer + 1])
    rename = replace(events[answer], name="CHANNEL_UUID", uuid=new, call_uuid=new,
                     vars={} if via == "other_leg" else {via: old},
                     other_leg_uuid=old if via == "other_leg" else None)
    assert reg.apply(rename) == [CallRenamed(old, new)]
    assert reg.get(new).call_uuid == new and reg.get(old).call_uuid == new
    later = [replace(e, uuid=new, call_uuid=new) for e in events[answer + 1:]]
    _, eff = run(later, reg)
    [ended] = of(eff, CallEnded)
    assert ended.call.call_uuid == new and ended.call.aliases == [old] and len(reg) == 0
    assert not any(k in ended.call.a_leg.vars for k in ("Old-Unique-ID", "old_unique_id"))


def test_answered_calls_over_limit():
    events = [replace(e, vars={**e.vars, "switchd_max_duration": "5"}) if e.uuid == A_C else e
              for e in channel_events("c")]
    bridge = next(i for i, e in enumerate(events) if e.name == "CHANNEL_BRIDGE")
    reg, eff = run(events[:bridge + 1])
    answered = of(eff, CallAnswered)[0].call.answered_us
    assert reg.answered_calls_over_limit(answered + 7_000_000, grace_s=2) == []
    [late] = reg.answered_calls_over_limit(answered + 7_000_001, grace_s=2)
    assert late.call_uuid == A_C and late.max_duration == 5


def test_sweep_force_ends_calls_whose_b_leg_never_reported():
    events = [e for e in channel_events("a")
              if not (e.uuid.startswith(B_A) and e.name in ("CHANNEL_HANGUP_COMPLETE",
                                                             "CHANNEL_DESTROY"))]
    reg, eff = run(events)
    assert len(reg) == 1 and not of(eff, CallEnded)
    a_end = reg.get(A_A).a_leg.hangup_us
    assert reg.sweep(a_end + 10_000_000, grace_us=30_000_000) == []
    eff = reg.sweep(a_end + 31_000_000, grace_us=30_000_000)
    assert [type(e) for e in eff] == [LegEnded, CallEnded]
    assert eff[0].leg.reconstructed and eff[0].leg.uuid.startswith(B_A)
    assert eff[0].leg.hangup_cause == "NORMAL_CLEARING"   # the HANGUP did arrive
    assert eff[1].call.reconstructed and len(reg) == 0
    assert reg.sweep(a_end + 99_000_000, grace_us=0) == []


def test_sweep_uses_its_cause_when_nothing_was_heard():
    events = [e for e in channel_events("a") if not e.uuid.startswith(B_A)
              or e.name in ("CHANNEL_CREATE", "CHANNEL_ANSWER")]
    reg, _ = run(events)
    eff = reg.sweep(10**18, grace_us=0)
    assert eff[0].leg.hangup_cause == CAUSE_SWEPT


def test_straggler_leg_after_the_end_gets_rated_but_no_second_call_end():
    events = channel_events("e")
    reg, eff = run(events)
    straggler = [replace(e, uuid="99999999-0000-0000-0000-000000000000",
                         call_uuid=events[0].uuid, other_leg_uuid=None) for e in events]
    _, late = run(straggler, reg)
    assert of(late, CallEnded) == [] and len(of(late, LegEnded)) == 1
    assert len(reg) == 0


def test_originate_failover_keeps_the_call_until_the_job_answers():
    first = channel_events("e")           # carrier_a busy
    second = channel_events("d")          # answered
    route = {"switchd_route_id": "r-9", "switchd_tenant": "t9"}
    u = first[0].uuid
    first = [replace(e, vars={**e.vars, **route}) for e in first]
    shift = 100_000_000                   # capture d was recorded before e: make it later
    second = [replace(e, vars={**e.vars, **route}, gateway=e.gateway and "carrier_b",
                      **{f: getattr(e, f) and getattr(e, f) + shift for f in
                         ("timestamp_us", "created_us", "answered_us", "hangup_us")})
              for e in second]
    reg = CallRegistry()
    reg.expect_originate(u)
    _, eff = run(first, reg)
    assert of(eff, CallEnded) == [] and len(of(eff, LegEnded)) == 1
    answer = next(i for i, e in enumerate(second) if e.name == "CHANNEL_ANSWER")
    _, eff = run(second[:answer + 1], reg)
    assert len(of(eff, CallAnswered)) == 1
    assert reg.originate_finished(u) == []          # +OK arrived; the call is up
    _, eff = run(second[answer + 1:], reg)
    [ended] = of(eff, CallEnded)
    assert ended.call.call_uuid == u and ended.call.attempts == 2
    assert (ended.call.first_choice_carrier, ended.call.carrier) == ("carrier_a", "carrier_b")
    assert ended.call.tenant == "t9" and len(reg) == 0


def test_originate_finished_ends_a_call_that_only_failed():
    events = channel_events("f")
    reg = CallRegistry()
    reg.expect_originate(events[0].uuid)
    _, eff = run(events, reg)
    assert not of(eff, CallEnded) and len(reg) == 1
    assert [type(e) for e in reg.originate_finished(events[0].uuid)] == [CallEnded]


def test_effects_hold_snapshots():
    events = channel_events("a")
    reg = CallRegistry()
    started = reg.apply(next(e for e in events if e.name == "CHANNEL_CREATE"))[0]
    run(events, reg)
    assert started.call.state == "setup" and len(started.call.legs) == 1


def _interesting(letter):
    return [e for e in channel_events(letter) if e.name in EVENT_KIND]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), letter=st.sampled_from("abcdef"))
def test_any_interleaving_or_duplication_ends_each_call_once(data, letter):
    events = _interesting(letter)
    dup = data.draw(st.lists(st.sampled_from(range(len(events))), max_size=10))
    order = data.draw(st.permutations(list(range(len(events))) + dup))
    _, eff = run(events[i] for i in order)
    ended = of(eff, CallEnded)
    assert len(ended) == 1
    assert ended[0].call.call_uuid == events[0].call_uuid or letter in "def"
    legs = Counter(e.leg.uuid for e in of(eff, LegEnded))
    assert set(legs.values()) == {1} and len(legs) == len({e.uuid for e in events})


def _attempts(route_id):
    first = channel_events("e")           # carrier_a busy
    second = channel_events("d")          # answered
    route = {"switchd_route_id": route_id, "switchd_tenant": "t9"}
    first = [replace(e, vars={**e.vars, **route}) for e in first]
    shift = 100_000_000
    second = [replace(e, vars={**e.vars, **route}, gateway=e.gateway and "carrier_b",
                      **{f: getattr(e, f) and getattr(e, f) + shift for f in
                         ("timestamp_us", "created_us", "answered_us", "hangup_us")})
              for e in second]
    return first, second


def test_originate_attempts_join_the_call_and_its_cause_is_the_answered_legs():
    first, second = _attempts("r-10")
    u = first[0].uuid
    reg = CallRegistry()
    reg.expect_originate(u, "r-10")
    run(first, reg)
    run(second, reg)
    [ended] = of(reg.originate_finished(u), CallEnded)
    assert ended.call.call_uuid == u and ended.call.originated
    assert ended.call.hangup_cause == second[-1].hangup_cause != first[-1].hangup_cause
    assert [l.uuid for l in ended.call.legs] == [first[0].uuid, second[0].uuid]


def test_an_attempt_after_one_that_made_no_channel_is_keyed_by_the_call_uuid():
    # The first attempt failed before FreeSWITCH made a channel: only the second's events
    # come, with a UUID of their own; the call (and its caps slots) keep the call UUID.
    _, second = _attempts("r-11")
    reg = CallRegistry()
    reg.expect_originate("c0ffee00-0000-4000-8000-000000000011", "r-11")
    _, eff = run(second, reg)
    assert not of(eff, CallEnded)
    [ended] = of(reg.originate_finished("c0ffee00-0000-4000-8000-000000000011"), CallEnded)
    assert ended.call.call_uuid == "c0ffee00-0000-4000-8000-000000000011"
    assert [l.uuid for l in ended.call.legs] == [second[0].uuid] and ended.call.answered_us
    assert len(reg) == 0


def test_snapshots_carry_every_field_and_copy_the_mutable_ones():
    """Leg.snapshot and Call.snapshot spell their fields out (the hot path): a field added
    to the dataclass and forgotten there would come back as its default."""
    from dataclasses import fields
    from switchd.calls.model import Call, Leg

    def filled(cls, **given):
        values = {f.name: given.get(f.name, object()) for f in fields(cls)}
        return cls(**values), values

    leg, leg_values = filled(Leg, vars={"switchd_tenant": "acme"})
    snap = leg.snapshot()
    for name, value in leg_values.items():
        if name == "vars":
            assert snap.vars == value and snap.vars is not value
        else:
            assert getattr(snap, name) is value, name
    call, call_values = filled(Call, legs=[leg], aliases=["old"])
    csnap = call.snapshot()
    for name, value in call_values.items():
        if name == "legs":
            assert csnap.legs == [leg] and csnap.legs[0] is not leg
        elif name == "aliases":
            assert csnap.aliases == ["old"] and csnap.aliases is not value
        else:
            assert getattr(csnap, name) is value, name


def _as_call(events, n: int):
    """A capture's events as the n-th of many calls: every leg UUID made distinct."""
    def u(value):
        return f"{value[:-6]}{n:06d}" if value else value
    return [replace(e, uuid=u(e.uuid), call_uuid=u(e.call_uuid),
                    other_leg_uuid=u(e.other_leg_uuid)) for e in events]


def test_a_carriers_answers_count_while_their_calls_are_up():
    """A carrier answering calls while some of its other attempts fail is not failing ten
    times in a row: its success is told at the answer, not when the call ends (a minute
    later, or ten). Ten calls answered by carrier_a (capture a, still up), each followed by
    an attempt carrier_a rejects with 503 (capture b): carrier_a stays routable."""
    from datetime import datetime, timezone

    from switchd.routing.books import HealthBook
    answered = channel_events("a")
    up_to_answer = [e for e in answered if e.name not in ("CHANNEL_HANGUP",
                                                          "CHANNEL_HANGUP_COMPLETE")]
    hangups = [e for e in answered if e not in up_to_answer]
    book, reg = HealthBook(), CallRegistry()
    now = datetime(2025, 3, 10, 12, tzinfo=timezone.utc)

    def feed(events):
        for o in of(run(events, reg)[1], CarrierOutcome):
            book.record_leg(o.carrier, o.hangup_cause, o.sip_status, o.answered, now)

    for n in range(10):
        feed(_as_call(up_to_answer, n))
        feed(_as_call(channel_events("b"), 100 + n))
    assert book.get("carrier_a").disabled_at is None
    assert book.get("carrier_a").consecutive_failures == 1
    feed(e for n in range(10) for e in _as_call(hangups, n))
    assert book.get("carrier_a").disabled_at is None
    assert len(reg) == 0


# --- the call's derived fields ------------------------------------------------------------
from switchd.calls.model import Call, Leg  # noqa: E402


def _reference_refresh(call: Call, awaiting: set[str]) -> dict:
    """The derived fields written plainly: A-leg by lookup, variables merged leg by leg
    (the A-leg's last), the carrier legs, winner and first answer each by its own scan."""
    legs = sorted(call.legs, key=lambda l: (l.created_us == 0, l.created_us))
    a = next((l for l in legs if l.uuid == call.call_uuid), None)
    merged = {}
    for l in legs:
        if l is not a:
            merged.update(l.vars)
    out = {"caller": call.caller, "destination": call.destination, "started_us": call.started_us,
           "ended_us": call.ended_us, "hangup_cause": call.hangup_cause}
    if a is not None:
        merged.update(a.vars)
        out.update(caller=a.caller or call.caller, destination=a.destination or call.destination,
                   started_us=a.created_us or call.started_us, ended_us=a.hangup_us,
                   hangup_cause=a.hangup_cause)
    out["started_us"] = out["started_us"] or min((l.created_us for l in legs if l.created_us),
                                                 default=0)
    carrier_legs = [l for l in legs if l.carrier and l.direction == "outbound"]
    winner = next((l for l in carrier_legs if l.answered_us), None)
    out.update(tenant=merged.get("switchd_tenant", call.tenant),
               route_id=merged.get("switchd_route_id", call.route_id),
               attempts=len(carrier_legs),
               first_choice_carrier=carrier_legs[0].carrier if carrier_legs else None,
               carrier=winner.carrier if winner else None,
               gateway=winner.gateway if winner else None,
               answered_us=min((l.answered_us for l in legs if l.answered_us), default=0),
               legs=[l.uuid for l in legs])
    if call.originated or (call.call_uuid in awaiting and a is not None
                           and a.direction == "outbound"):
        last = winner or (carrier_legs[-1] if carrier_legs else None)
        if last is not None:
            out.update(ended_us=last.hangup_us, hangup_cause=last.hangup_cause)
    out["direction"] = merged.get("switchd_direction") or (
        "outbound" if carrier_legs or (a and a.direction == "outbound" and not a.placeholder)
        else "inbound")
    return out


_LEG = st.builds(
    Leg, uuid=st.sampled_from(["c", "x", "y", "z"]), call_uuid=st.just("c"),
    direction=st.sampled_from(["inbound", "outbound"]),
    gateway=st.sampled_from([None, "gw1", "gw2"]), carrier=st.sampled_from([None, "k1", "k2"]),
    created_us=st.sampled_from([0, 1, 2, 3]), answered_us=st.sampled_from([0, 5, 4, 6]),
    hangup_us=st.sampled_from([0, 9, 8]), hangup_cause=st.sampled_from([None, "NORMAL_CLEARING"]),
    vars=st.dictionaries(st.sampled_from(["switchd_tenant", "switchd_route_id",
                                          "switchd_direction", "other"]),
                         st.sampled_from(["", "t1", "t2", "outbound"]), max_size=3),
    caller=st.sampled_from(["", "100"]), placeholder=st.booleans())


@settings(max_examples=500, deadline=None)
@given(st.lists(_LEG, max_size=4), st.booleans(), st.booleans())
def test_derived_fields_equal_a_plain_recomputation(legs, originated, awaited):
    call = Call(call_uuid="c", legs=list(legs), originated=originated, tenant="before",
                caller="kept", started_us=0)
    reg = CallRegistry()
    if awaited:
        reg._awaiting.add("c")
    expected = _reference_refresh(call, reg._awaiting)
    reg._refresh(call)
    got = {key: getattr(call, key) for key in expected if key != "legs"}
    got["legs"] = [l.uuid for l in call.legs]
    assert got == expected


_A, _B, _C = ("a0000000-0000-4000-8000-00000000000a", "b0000000-0000-4000-8000-00000000000b",
              "c0000000-0000-4000-8000-00000000000c")
_ROUTED_AGAIN = {"switchd_tenant": "brief", "switchd_route_id": "r2", "switchd_max_duration": "3"}


def _blind_transfer_events() -> list:
    """A caller's blind transfer as FreeSWITCH 1.10.12 sent it (tests/realswitch/
    test_transfer.py): the caller A REFERs, A ends, the callee's leg B (alpha) is routed
    again and bridged to C (bravo), whose Channel-Call-UUID is B. B's variables from its
    new routing first show in its hangup."""
    from switchd.adapters.esl.events import ChannelEvent
    A, B, C = _A, _B, _C
    first = {"switchd_tenant": "brief", "switchd_route_id": "r1", "switchd_max_duration": "3"}
    alpha = {"switchd_carrier": "alpha", "switchd_rate": "0.005"}
    bravo = {"switchd_carrier": "bravo", "switchd_rate": "0.010"}

    def ev(name, uuid, call, other=None, direction="outbound", t=0, **kw):
        return ChannelEvent(name=name, uuid=uuid, call_uuid=call, other_leg_uuid=other,
                            direction=direction, timestamp_us=t, created_us=kw.pop("created", 0),
                            **kw)
    return [
        ev("CHANNEL_CREATE", A, A, direction="inbound", t=1, created=1, vars=first,
           destination_number="+12125550123"),
        ev("CHANNEL_CREATE", B, A, A, t=2, created=2, gateway="gw_a", vars=alpha),
        ev("CHANNEL_ANSWER", B, A, A, t=3, answered_us=3, gateway="gw_a", vars=alpha),
        ev("CHANNEL_ANSWER", A, A, B, direction="inbound", t=3, answered_us=3, vars=first),
        ev("CHANNEL_HANGUP_COMPLETE", A, A, B, direction="inbound", t=4, answered_us=3,
           hangup_us=4, hangup_cause="NORMAL_CLEARING", vars=first),
        ev("CHANNEL_CREATE", C, B, B, t=5, created=5, gateway="gw_b", vars=bravo),
        ev("CHANNEL_ANSWER", C, B, B, t=6, answered_us=6, gateway="gw_b", vars=bravo),
        ev("CHANNEL_HANGUP_COMPLETE", C, B, B, t=9, answered_us=6, hangup_us=9,
           hangup_cause="NORMAL_CLEARING", gateway="gw_b", vars=bravo),
        ev("CHANNEL_HANGUP_COMPLETE", B, A, None, t=9, answered_us=3, hangup_us=9,
           hangup_cause="ALLOTTED_TIMEOUT", gateway="gw_a", vars={**alpha, **_ROUTED_AGAIN},
           destination_number="+33142685300"),
    ]


def test_a_callers_blind_transfer_is_a_call_of_its_own_headed_by_the_transferred_leg():
    """C belongs to the transfer's call, keyed by B (as its routing, caps and switch CDR
    are), not to A's: A's call keeps its one carrier leg."""
    A, B, C = _A, _B, _C
    reg, eff = run(_blind_transfer_events())
    assert len(reg) == 0
    assert sorted(e.call.call_uuid for e in of(eff, CallStarted)) == [A, B]
    ended = {e.call.call_uuid: e.call for e in of(eff, CallEnded)}
    first_call, transfer = ended[A], ended[B]
    assert (first_call.attempts, first_call.carrier, first_call.tenant) == (1, "alpha", "brief")
    assert [l.uuid for l in first_call.legs] == [A, B]
    assert (transfer.tenant, transfer.carrier, transfer.attempts) == ("brief", "bravo", 1)
    assert transfer.route_id == "r2" and transfer.destination == "+33142685300"
    assert (transfer.answered_us, transfer.ended_us) == (6, 9)
    # one leg row per real leg, each under the call that bills it; the head's placeholder none
    assert sorted((e.leg.uuid, e.call.call_uuid) for e in of(eff, LegEnded)) == [
        (A, A), (B, A), (C, B)]
    assert reg.leg(C) is None and reg.counters["transfer_legs"] == 1


def test_a_transfer_knows_its_tenant_and_limit_from_its_routing_not_its_heads_hangup():
    """The daemon tells the registry what the transfer's routing set on B when it answers
    the lookup (leg_routed_again): the transfer starts with its tenant (call events,
    the tenant's live calls) and its limit (the watchdog), and A's call keeps its own."""
    A, B = _A, _B
    events = _blind_transfer_events()
    reg, eff = run(events[:5])
    reg.leg_routed_again(B, {**_ROUTED_AGAIN, "switchd_e164": "+33142685300",
                             "effective_caller_id_name": "x", "switchd_carrier": "bravo"})
    _, eff = run(events[5:7], reg)
    (started,) = of(eff, CallStarted)
    assert (started.call.call_uuid, started.call.tenant) == (B, "brief")
    transfer = reg.get(B)
    assert (transfer.max_duration, transfer.route_id, transfer.answered_us) == (3, "r2", 6)
    over = reg.answered_calls_over_limit(now_us=6 + 3_000_000 + 2_000_000, grace_s=1)
    assert B in [c.call_uuid for c in over]            # the watchdog sees its limit
    assert reg.get(A).route_id == "r1" and reg.leg(B).carrier == "alpha"
    # without it (as before), the transfer had neither until B's hangup
    plain, eff = run(events[:7])
    assert of(eff, CallStarted)[-1].call.tenant is None and plain.get(B).max_duration is None


def test_the_periodic_jobs_queries_read_live_calls_without_snapshots(mocker):
    """What the sweep, the lease refresh and resync ask for: the same figures as from
    live_calls(), without a snapshot of any call (one per call stopped the event loop for
    tens of ms at thousands of calls up)."""
    reg = CallRegistry()
    for capture in ("a", "b", "c"):
        events = channel_events(capture)
        creates = [i for i, e in enumerate(events) if e.name == "CHANNEL_CREATE"]
        run(events[:creates[-1] + 1], reg)          # up to the last leg's creation: live
    live = reg.live_calls()
    assert len(live) == 3
    want = Counter((c.tenant or "-", c.carrier or "-") for c in live)
    tenants = {c.tenant for c in live}

    mocker.patch("switchd.calls.model.Call.snapshot", side_effect=AssertionError("snapshot"))
    mocker.patch("switchd.calls.model.Leg.snapshot", side_effect=AssertionError("snapshot"))
    assert reg.live_by_tenant_and_carrier() == want
    assert sorted(reg.live_call_uuids()) == sorted(c.call_uuid for c in live)
    for tenant in tenants:
        assert reg.live_of_tenant(tenant) == sum(1 for c in live if c.tenant == tenant)


def test_a_tenants_live_calls_are_copied_without_anyone_elses(mocker):
    """The API's live calls for one tenant copy that tenant's calls only: every other
    call on the switch is passed over in place."""
    reg = CallRegistry()
    for capture, tenant in (("a", "acme"), ("b", "beta"), ("c", "acme")):
        events = channel_events(capture)
        creates = [i for i, e in enumerate(events) if e.name == "CHANNEL_CREATE"]
        run([replace(e, vars={**e.vars, "switchd_tenant": tenant})
             for e in events[:creates[-1] + 1]], reg)
    everyone = reg.live_calls()
    want = sorted(c.call_uuid for c in everyone if c.tenant == "acme")
    assert len(want) == 2 and len(everyone) == 3
    copies = mocker.spy(Call, "snapshot")
    assert sorted(c.call_uuid for c in reg.live_calls("acme")) == want
    assert copies.call_count == 2


def test_ended_calls_leave_no_reference_cycles():
    """The daemon turns Python's automatic full collection off (switchd/heap.py) because
    a call's objects are freed by reference counting once its tombstones go: no cycle."""
    import gc
    events = channel_events("a")
    reg = CallRegistry(tombstones=10)
    gc.collect()
    gc.disable()
    try:
        for n in range(50):             # each its own UUIDs; all but the last few evicted
            fresh: dict[str, str] = {}

            def own(uuid, n=n, fresh=fresh):
                return uuid and fresh.setdefault(uuid, f"{n:04d}{uuid[4:]}")
            run([replace(e, uuid=own(e.uuid), call_uuid=own(e.call_uuid),
                         other_leg_uuid=own(e.other_leg_uuid)) for e in events], reg)
        assert len(reg) == 0 and reg.counters["rejected"] == 0
        found = gc.collect()
    finally:
        gc.enable()
    assert found == 0
