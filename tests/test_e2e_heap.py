"""Calls leave nothing for Python's cycle collector: what lets `switchd run` turn its
automatic full collection off (switchd/heap.py, docs/operations.md). A call's objects,
from the dialplan lookup to its CDR, must be freed by reference counting alone; one
reference cycle a call would be garbage only the timed full collection finds."""
from __future__ import annotations

from daemon_harness import metric, rows

CALLS = 60


def _full_collections(daemon) -> float:
    return metric(daemon, "python_gc_collections_total", generation="2")


def _after_another_full_collection(daemon) -> None:
    seen = _full_collections(daemon)
    daemon.wait_until(lambda: _full_collections(daemon) > seen or None,
                      what="the daemon's next timed full collection")


def _answered_and_stored(daemon, url, calls) -> None:
    for call in calls:
        assert call.wait(60) and call.result == "answered", (call.result, call.causes)
    uuids = [call.uuid for call in calls]
    daemon.wait_until(lambda: rows(url, "SELECT count(*) FROM calls WHERE call_uuid = ANY(%s)",
                                   uuids)[0][0] == len(uuids) or None,
                      what=f"the CDRs of {len(uuids)} calls")


def test_calls_leave_no_garbage_for_the_cycle_collector(world_url, start_switch):
    sim, daemon = start_switch(world_url, extra_env={"SWITCHD_GC_FULL_INTERVAL": "0.5"})
    # First use (imports, caches, the first connections) is not the calls' garbage.
    _answered_and_stored(daemon, world_url, [
        sim.place_call("02079460123", accountcode="acme", hold_seconds=5)])
    _after_another_full_collection(daemon)
    before = metric(daemon, "python_gc_objects_collected_total")

    for batch in range(0, CALLS, 10):         # within the demo tenants' caps
        _answered_and_stored(daemon, world_url, [
            sim.place_call(f"020794601{i:02d}", accountcode="acme", hold_seconds=5)
            for i in range(batch, batch + 10)])
    _after_another_full_collection(daemon)      # what the calls left is garbage by now
    found = metric(daemon, "python_gc_objects_collected_total") - before
    # A cycle is two objects at least: one a call would be 120 here.
    assert found < CALLS, f"{found:.0f} objects in reference cycles after {CALLS} calls"
