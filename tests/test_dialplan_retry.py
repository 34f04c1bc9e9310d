"""dialplan/retry.py: the retry table, the tenant's overrides, the request's ask and the
backoff schedule (bounds, jitter range, cap), without a clock or randomness."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from dialplan import retry
from dialplan.retry import (DEFAULT_POLICY, JITTER_SPAN, RetryAsk, RetryError, bounds_ms,
                            classify, delay_ms, jitter_unit, next_step, parse_ask,
                            parse_policy, policy_from)


@pytest.mark.parametrize("answered, cause, sip, outcome", [
    (True, "NORMAL_CLEARING", 200, "answered"),
    (True, "ALLOTTED_TIMEOUT", None, "answered"),
    (False, "USER_BUSY", 486, "busy"),
    (False, "USER_BUSY", None, "busy"),
    (False, "USER_BUSY", 600, "busy"),
    (False, "NO_ANSWER", None, "no_answer"),
    (False, "ALLOTTED_TIMEOUT", 487, "no_answer"),     # rang out: the 487 answered our CANCEL
    (False, "UNALLOCATED_NUMBER", 404, "invalid_number"),
    (False, "UNALLOCATED_NUMBER", None, "invalid_number"),
    (False, "INVALID_NUMBER_FORMAT", 484, "invalid_number"),
    (False, "NUMBER_CHANGED", 410, "invalid_number"),
    (False, "CALL_REJECTED", 603, "declined"),
    (False, "CALL_REJECTED", 403, "carrier_failure"),
    (False, "NORMAL_TEMPORARY_FAILURE", 503, "congestion"),
    (False, "NORMAL_CIRCUIT_CONGESTION", None, "congestion"),
    (False, "DESTINATION_OUT_OF_ORDER", None, "congestion"),
    (False, "RECOVERY_ON_TIMER_EXPIRE", 408, "carrier_failure"),
    (False, "NETWORK_OUT_OF_ORDER", None, "carrier_failure"),
    (False, "ORIGINATOR_CANCEL", 487, "cancelled"),
    (False, "MANAGER_REQUEST", None, "cancelled"),
    (False, None, None, "carrier_failure"),
])
def test_classify(answered, cause, sip, outcome):
    assert classify(answered, cause, sip) == outcome


def test_default_table_retries_busy_and_no_answer_later_and_never_invalid_numbers():
    assert DEFAULT_POLICY.base_s("busy") == 60 and DEFAULT_POLICY.base_s("no_answer") == 300
    assert DEFAULT_POLICY.base_s("congestion") == 30
    assert DEFAULT_POLICY.base_s("declined") is None
    ask = RetryAsk(5)
    assert next_step(DEFAULT_POLICY, ask, 1, "invalid_number", "c").action == "final"
    assert next_step(DEFAULT_POLICY, ask, 1, "cancelled", "c").action == "final"
    assert next_step(DEFAULT_POLICY, ask, 1, "declined", "c").action == "final"
    assert next_step(DEFAULT_POLICY, ask, 1, "answered", "c").reason == "answered"
    step = next_step(DEFAULT_POLICY, ask, 1, "busy", "c")
    assert step.action == "retry" and step.delay_ms == delay_ms(DEFAULT_POLICY, "busy", 1,
                                                                jitter_unit("c", 1))


def test_no_retry_unless_the_request_asks_and_within_its_limits():
    assert next_step(DEFAULT_POLICY, None, 1, "busy", "c").reason == "no retries asked"
    ask = RetryAsk(2, ("no_answer",))
    assert next_step(DEFAULT_POLICY, ask, 1, "busy", "c").action == "final"
    assert next_step(DEFAULT_POLICY, ask, 1, "no_answer", "c").action == "retry"
    assert next_step(DEFAULT_POLICY, ask, 2, "no_answer", "c").reason == "max_attempts (2) reached"


def test_tenant_overrides_are_validated_and_merged():
    policy = policy_from({"busy": 5, "declined": 600, "no_answer": "never", "factor": 3,
                          "max_delay_s": 100, "jitter_percent": 0, "daily_cap": 4})
    assert policy.base_s("busy") == 5 and policy.base_s("declined") == 600
    assert policy.base_s("no_answer") is None and policy.base_s("congestion") == 30
    assert (policy.factor, policy.max_delay_s, policy.jitter_percent, policy.daily_cap) == (
        3, 100, 0, 4)
    assert [delay_ms(policy, "busy", n, 0) for n in (1, 2, 3, 4)] == [5000, 15000, 45000, 100000]
    assert policy_from({"daily_cap": "none"}).daily_cap is None
    assert policy_from(None) is DEFAULT_POLICY


@pytest.mark.parametrize("raw, message", [
    ({"invalid_number": 60}, "retry.invalid_number: cannot be set"),
    ({"cancelled": 60}, "retry.cancelled: cannot be set"),
    ({"busy": 0}, "retry.busy: 0 is not between 1 and 604800"),
    ({"busy": "soon"}, "retry.busy: 'soon' is not a whole number"),
    ({"busy": 1.5}, "retry.busy: 1.5 is not a whole number"),
    ({"factor": 11}, "retry.factor: 11 is not between 1 and 10"),
    ({"jitter_percent": True}, "retry.jitter_percent: True is not a whole number"),
    ({"daily_cap": 0}, "retry.daily_cap: 0 is not between 1 and 10000"),
    ({"bsuy": 5}, "retry.bsuy: unknown key"),
    ([1], "retry: must be a table"),
])
def test_bad_policies_name_the_key(raw, message):
    with pytest.raises(RetryError) as err:
        parse_policy(raw)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("raw, message", [
    ({}, "retry.max_attempts: required"),
    ({"max_attempts": 11}, "retry.max_attempts: 11 is not between 1 and 10"),
    ({"max_attempts": 2, "on": ["invalid_number"]}, "retry.on: 'invalid_number' is never"),
    ({"max_attempts": 2, "on": ["ringing"]}, "retry.on: 'ringing' is not one of"),
    ({"max_attempts": 2, "on": []}, "retry.on: a non-empty list"),
    ({"max_attempts": 2, "when": 1}, "retry.when: unknown key"),
    ("3", "retry: must be an object"),
])
def test_bad_asks_name_the_key(raw, message):
    with pytest.raises(RetryError) as err:
        parse_ask(raw)
    assert str(err.value).startswith(message)


def test_ask_round_trips():
    ask = parse_ask({"max_attempts": 3, "on": ["busy", "busy", "no_answer"]})
    assert ask == RetryAsk(3, ("busy", "no_answer"))
    assert parse_ask(ask.as_dict()) == ask and parse_ask(None) is None


policies = st.builds(
    lambda busy, factor, cap, jitter: policy_from(
        {"busy": busy, "factor": factor, "max_delay_s": cap, "jitter_percent": jitter}),
    st.integers(1, 86400), st.integers(1, 10), st.integers(1, 604800), st.integers(0, 100))


@given(policies, st.integers(1, retry.MAX_ATTEMPTS), st.integers(0, JITTER_SPAN - 1))
def test_delay_within_jitter_bounds_and_never_over_the_cap(policy, n, unit):
    low, high = bounds_ms(policy, "busy", n)
    raw = min(policy.max_delay_s * 1000, policy.base_s("busy") * 1000 * policy.factor ** (n - 1))
    got = delay_ms(policy, "busy", n, unit)
    assert low <= got <= high <= policy.max_delay_s * 1000
    # the jitter range is ±jitter_percent of the un-jittered delay
    assert low == raw - raw * policy.jitter_percent // 100
    assert high == min(raw + raw * policy.jitter_percent // 100, policy.max_delay_s * 1000)


@given(policies, st.integers(1, retry.MAX_ATTEMPTS - 1))
def test_backoff_grows_until_the_cap(policy, n):
    # the bounds of retry n+1 are never below those of retry n (growth), and equal once capped
    assert bounds_ms(policy, "busy", n + 1) >= bounds_ms(policy, "busy", n)


@given(st.integers(0, JITTER_SPAN - 1))
def test_jitter_extremes(unit):
    policy = policy_from({"busy": 100, "jitter_percent": 20, "max_delay_s": 604800})
    assert 80_000 <= delay_ms(policy, "busy", 1, unit) < 120_000
    assert delay_ms(policy, "busy", 1, 0) == 80_000


def test_jitter_is_fixed_per_call_and_attempt_and_spreads_calls():
    assert jitter_unit("a", 1) == jitter_unit("a", 1)
    units = {jitter_unit(f"call-{i}", 1) for i in range(200)}
    assert len(units) == 200
    assert min(units) < JITTER_SPAN // 4 and max(units) > 3 * JITTER_SPAN // 4
