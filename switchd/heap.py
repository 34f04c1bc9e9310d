"""When the garbage collector may stop the daemon, and for how long (docs/operations.md).

CPython's cyclic collector runs by itself as objects are allocated. Its young collections
are short. Its full collection traverses every tracked object that outlived two of them:
in switchd the live calls and the ended calls kept for late events (40,000 objects with
a thousand calls up: 25-30 ms on a 2-core Xeon, more with more calls up), every few
seconds under load. It stops everything while it does: lookups waiting in FreeSWITCH,
ESL events, CDR writes. And it finds nothing: a call's objects hold no reference cycles,
so reference counting frees them once the call's tombstone goes (tests/test_e2e_heap.py
and tests/test_registry.py hold the call path to that).

So the daemon takes the full collection over:

- at start, `settle()` collects once and freezes what is alive (gc.freeze): decks,
  world and modules live long and are never traversed again (a deck loaded later is, by
  the timed full collection only);
- `own_full_collections()` stops the automatic full collection; the daemon runs
  `full_collection()` every gc.full_interval seconds instead (5 minutes), so cyclic
  garbage (an exception's traceback, say) is still freed, within minutes.

Young collections are left as they are.
"""
from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

# A threshold the oldest generation's count (young collections since the last full one)
# never reaches: about 10^10 young collections.
_NEVER = 2 ** 31 - 1


def settle() -> None:
    """Free what is garbage now, then keep everything alive now out of every collection:
    the collector never traverses it again. Reference counting still frees it."""
    gc.collect()
    gc.freeze()


def own_full_collections() -> tuple[int, int, int]:
    """Stop the automatic full collection (young ones go on); returns the thresholds
    before, for `restore`."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    return before


def restore(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(*thresholds)


def full_collection() -> int:
    """One full collection, timed in the log; how many unreachable objects it found."""
    started = time.perf_counter()
    found = gc.collect()
    log.debug("full garbage collection: %d unreachable objects, %.1f ms", found,
              (time.perf_counter() - started) * 1000)
    return found
