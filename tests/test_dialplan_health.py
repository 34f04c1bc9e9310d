from __future__ import annotations

import dataclasses

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialplan.health import (CarrierHealth, apply_gateway_event, availability,
                             gateway_event_state, is_routable, on_failure, on_gateway_down,
                             on_gateway_up, on_success)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_defaults():
    h = CarrierHealth()
    assert (h.score, h.consecutive_failures, h.disabled_at) == (100, 0, None)
    assert availability(h, T0) == "up" and is_routable(h, T0)


def test_success_and_failure_steps():
    h = on_failure(CarrierHealth(), T0)
    assert (h.score, h.consecutive_failures) == (95, 1)
    h = on_success(h, T0)
    assert (h.score, h.consecutive_failures) == (97, 0)
    assert on_success(CarrierHealth(score=99), T0).score == 100
    assert on_success(CarrierHealth(), T0).score == 100


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CarrierHealth().score = 5  # type: ignore[misc]


def test_ten_consecutive_failures_disable():
    h = CarrierHealth()
    for i in range(9):
        h = on_failure(h, at(i))
        assert h.disabled_at is None
    assert h.score == 55
    h = on_failure(h, at(9))
    assert h.disabled_at == at(9) and h.score == 50 and h.consecutive_failures == 10
    assert availability(h, at(10), cooldown_s=60) == "disabled"
    assert not is_routable(h, at(10), 60)


def test_success_resets_the_consecutive_count():
    h = CarrierHealth()
    for i in range(9):
        h = on_failure(h, at(i))
    h = on_success(h, at(9))
    h = on_failure(h, at(10))
    assert h.disabled_at is None and h.consecutive_failures == 1


def test_half_open_after_cooldown_then_success_reenables():
    h = CarrierHealth(score=50, consecutive_failures=10, disabled_at=T0)
    assert availability(h, at(59), 60) == "disabled"
    assert availability(h, at(60), 60) == "half_open"
    assert is_routable(h, at(60), 60)
    back = on_success(h, at(61), 60)
    assert back.disabled_at is None and back.consecutive_failures == 0 and back.score == 52
    assert availability(back, at(61), 60) == "up"


def test_probe_failure_restarts_cooldown():
    h = CarrierHealth(score=50, consecutive_failures=10, disabled_at=T0)
    again = on_failure(h, at(70), 60)
    assert again.disabled_at == at(70) and again.score == 45
    assert availability(again, at(100), 60) == "disabled"


def test_late_events_during_cooldown():
    h = CarrierHealth(score=50, consecutive_failures=10, disabled_at=T0)
    f = on_failure(h, at(10), 60)
    assert f.disabled_at == T0            # a late failure does not extend the cool-down
    s = on_success(h, at(10), 60)
    assert s.disabled_at == T0 and s.consecutive_failures == 0 and s.score == 52


def test_low_score_disables_and_recovers_routable():
    h = CarrierHealth(score=32, consecutive_failures=0)
    h = on_failure(h, at(0))
    assert h.score == 27 and h.disabled_at == at(0)
    assert availability(h, at(1)) == "disabled"
    back = on_success(h, at(61), 60)
    assert back.score == 30 and availability(back, at(61)) == "up"


def test_low_score_without_timestamp_is_probe_able():
    assert availability(CarrierHealth(score=10), T0) == "half_open"


def test_score_floor():
    h = CarrierHealth(score=3)
    assert on_failure(h, T0).score == 0


@given(st.lists(st.booleans(), max_size=200))
def test_score_stays_in_bounds(outcomes):
    h = CarrierHealth()
    for i, ok in enumerate(outcomes):
        h = (on_success if ok else on_failure)(h, at(i * 7))
        assert 0 <= h.score <= 100
        if h.disabled_at is None:
            assert h.score >= 30 and h.consecutive_failures < 10


@pytest.mark.parametrize("event,state,ping,out", [
    ("gateway_state", "NOREG", "DOWN", "down"),      # capture g
    ("gateway_state", "NOREG", "UP", "up"),
    ("gateway_state", "FAIL_WAIT", None, "down"),
    ("gateway_state", "FAILED", None, "down"),
    ("gateway_state", "REGED", None, "up"),
    ("gateway_state", "TRYING", None, None),
    ("gateway_state", "NOREG", None, None),
    ("sofia::gateway_delete", None, None, "down"),
    ("gateway_add", None, None, "up"),
    ("something_else", None, None, None),
])
def test_gateway_event_state(event, state, ping, out):
    assert gateway_event_state(event, state, ping) == out


def test_gateway_down_set():
    down = frozenset()
    down = apply_gateway_event(down, "probe", "gateway_state", "NOREG", "DOWN")
    assert down == {"probe"}
    assert apply_gateway_event(down, "probe", "gateway_state", "TRYING", None) == {"probe"}
    assert apply_gateway_event(down, "probe", "gateway_state", "NOREG", "UP") == frozenset()
    assert on_gateway_up(on_gateway_down(frozenset(), "a"), "a") == frozenset()
