"""The daemon's schedule for the garbage collector (switchd/heap.py): no automatic full
collection under load, a full one on a timer that still frees cycles."""
from __future__ import annotations

import gc

import pytest

from switchd import heap


@pytest.fixture
def empty_old_generation():
    """Everything alive now frozen (so the automatic full collection is due as soon as
    its count allows); the process's collector as it was afterwards."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    # CPython runs a full collection only once the objects moved to the old generation
    # since the last one exceed a quarter of what that one left there: a full collection
    # of the now empty old generation, or a big test process would hold the control back.
    gc.collect()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _collections_while_allocating() -> tuple[int, int]:
    """Full and young collections while 200,000 containers are made and kept alive, as
    live calls and tombstones are."""
    full, young = gc.get_stats()[2]["collections"], gc.get_stats()[0]["collections"]
    kept = [[i] for i in range(200_000)]
    assert len(kept) == 200_000
    return gc.get_stats()[2]["collections"] - full, gc.get_stats()[0]["collections"] - young


def test_automatic_full_collections_stop_once_the_daemon_owns_them(empty_old_generation):
    gc.set_threshold(700, 10, 10)           # CPython's defaults
    full, young = _collections_while_allocating()
    assert full > 0, "the control: left alone, the collector runs full collections"

    before = heap.own_full_collections()
    assert before == (700, 10, 10)
    full, young = _collections_while_allocating()
    assert full == 0
    assert young > 100                      # the young collections go on

    heap.restore(before)
    assert gc.get_threshold() == (700, 10, 10)


class _Node:
    def __init__(self):
        self.me = self                      # a cycle: reference counting never frees it


def test_the_timed_full_collection_frees_a_cycle_in_the_old_generation(empty_old_generation):
    heap.own_full_collections()             # the fixture puts the thresholds back
    node = _Node()
    gc.collect(1)                           # still reachable: moved to the old generation
    del node
    assert gc.collect(1) == 0               # young collections do not look there
    assert heap.full_collection() >= 1


def test_settle_freezes_what_is_alive(empty_old_generation):
    gc.unfreeze()
    kept = [[i] for i in range(1000)]
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
