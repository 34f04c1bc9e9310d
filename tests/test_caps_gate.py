"""CapsGate's lease refresh over each backend (LocalCaps, PolicyCaps over a real Redis).

The refresh extends the leases of the live calls the gate counted. A call whose lease ran
out while it was up is counted again with the slots it held; a live call the gate never
counted (refused at the lookup) holds nothing, before or after.
"""
from __future__ import annotations

import logging

import pytest

from dialplan.model import Carrier, Tenant
from switchd.adapters.caps import Scope
from switchd.calls.policing import CapsGate
from switchd.config import load_config

from test_caps_contract import Clock, clock, make_caps  # noqa: F401  (fixtures)

ACME = Tenant(name="acme", max_concurrent=1)
TELCO = Carrier(name="telco", max_channels=5)
OTHER = Carrier(name="other", max_channels=5)
LOST = "lost their caps lease"


@pytest.fixture
def gate(make_caps):
    made = CapsGate(make_caps(ttl=60.0), load_config(environ={}))
    yield made
    made._worker.kill()


def _held(gate, call_uuid):
    return gate.backend.held(call_uuid)


def test_a_counted_call_whose_lease_ran_out_is_counted_again(gate, clock, caplog):
    assert gate.admit("c1", ACME, TELCO).admitted
    assert gate.move_to_carrier("c1", OTHER).admitted       # failed over: holds `other` now
    clock.advance(61)                                        # the refresh was late: lease gone
    assert _held(gate, "c1") is None
    with caplog.at_level(logging.WARNING, logger="switchd.calls.policing"):
        gate.refresh(["c1"])
    assert _held(gate, "c1") == {("global", "all"), ("tenant", "acme"), ("carrier", "other")}
    assert gate.backend.count(Scope("carrier", "other")) == 1
    assert gate.backend.count(Scope("carrier", "telco")) == 0
    assert [r.getMessage() for r in caplog.records if LOST in r.getMessage()] == [
        "1 live call(s) had lost their caps lease; they are counted again"]
    # The tenant's one slot is the call's again: a second call is refused.
    assert not gate.admit("c2", ACME, TELCO).admitted


def test_a_live_call_never_counted_takes_no_slot_and_no_warning(gate, clock, caplog):
    assert gate.admit("c1", ACME, TELCO).admitted
    refused = gate.admit("c2", ACME, TELCO)                 # the tenant is at its cap
    assert not refused.admitted
    clock.advance(30)
    with caplog.at_level(logging.WARNING, logger="switchd.calls.policing"):
        gate.refresh(["c1", "c2", "an-internal-call"])
    assert _held(gate, "c2") is None and _held(gate, "an-internal-call") is None
    assert gate.backend.count(Scope("tenant", "acme")) == 1
    assert gate.backend.count(Scope("global", "all")) == 1
    assert not [r for r in caplog.records if LOST in r.getMessage()]
    clock.advance(45)                                        # c1 was extended at 30 s
    assert _held(gate, "c1") is not None


def test_a_counted_call_missing_from_the_live_calls_is_kept_while_its_lease_lives(gate, clock):
    """Missing from the live calls: a lookup whose channel the registry has not seen yet
    (events behind), or a call whose end was never seen. Its record stays while its lease
    lives, so a call that shows up in time is refreshed; once the lease has run out it is
    forgotten, and nothing counts it again."""
    assert gate.admit("late", ACME, TELCO).admitted           # not in the registry yet
    assert gate.admit("gone", Tenant(name="beta"), TELCO).admitted   # its end was lost
    clock.advance(40)
    gate.refresh([])
    assert set(gate.slots_of_call) == {"late", "gone"}
    gate.refresh(["late"])                                    # it shows up: extended
    clock.advance(40)                                         # 80 s: gone's lease ran out
    gate.refresh(["late"])
    assert set(gate.slots_of_call) == {"late"}
    assert gate.carrier_of("gone") is None
    assert _held(gate, "gone") is None and _held(gate, "late") is not None
    assert gate.backend.count(Scope("tenant", "beta")) == 0
    assert gate.backend.count(Scope("tenant", "acme")) == 1
