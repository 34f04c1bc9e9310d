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


def test_a_call_whose_end_was_never_seen_is_forgotten_at_the_second_refresh(gate, clock):
    assert gate.admit("gone", ACME, TELCO).admitted          # its end was lost
    assert gate.admit("up", Tenant(name="beta"), TELCO).admitted
    gate.refresh(["up"])            # once missing: maybe a lookup not in the registry yet
    assert set(gate.slots_of_call) == {"gone", "up"}
    gate.refresh(["up"])
    assert set(gate.slots_of_call) == {"up"}
    assert "gone" not in gate.carrier_of_call
    clock.advance(61)               # its lease runs out: nothing counts it again
    gate.refresh(["up"])
    assert _held(gate, "gone") is None
    assert gate.backend.count(Scope("tenant", "acme")) == 0
