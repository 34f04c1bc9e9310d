"""The CDR writer's gather time (cdr.gather_ms): records queued in quick succession share
one batch, a full batch is written at once, and stop() never waits out the gather."""
from __future__ import annotations

from switchd.adapters.db.cdr_writer import CdrWriter
from switchd.adapters.db.spool import Spool
from test_cdr_writer import call, count, wait_for

LONG = 60.0     # a gather no test could wait out: only a wake-up ends it


class BatchesSeen(CdrWriter):
    """The writer, noting the size of every batch it takes."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.batches: list[int] = []

    def _take_batch(self):
        batch = super()._take_batch()
        if batch:
            self.batches.append(len(batch))
        return batch


def gathering(writer) -> bool:
    """The writer holds its first record and waits for more."""
    return writer._full_at > 0


def make(url, tmp_path, **kw) -> BatchesSeen:
    return BatchesSeen(url, spool=Spool.in_data_dir(tmp_path), flush_interval=0.05, **kw)


def test_records_queued_in_quick_succession_share_one_batch(migrated_pg_url, tmp_path):
    writer = make(migrated_pg_url, tmp_path, batch_size=5, gather=LONG).start()
    try:
        writer.submit_call(call(0))
        assert wait_for(lambda: gathering(writer))
        for i in range(1, 5):        # the batch fills up: the writer wakes at once
            writer.submit_call(call(i))
        assert wait_for(lambda: writer.written == 5)
        assert writer.batches == [5]
    finally:
        writer.stop()
    assert count(migrated_pg_url, "calls") == 5


def test_without_gather_the_first_record_goes_alone(migrated_pg_url, tmp_path):
    """The same sequence with cdr.gather_ms = 0: what the gather changes."""
    writer = make(migrated_pg_url, tmp_path, batch_size=5, gather=0).start()
    try:
        writer.submit_call(call(0))
        assert wait_for(lambda: writer.batches == [1])
        for i in range(1, 5):
            writer.submit_call(call(i))
        assert wait_for(lambda: writer.written == 5)
        assert writer.batches == [1, 4]
    finally:
        writer.stop()


def test_stop_writes_a_gathering_batch_at_once(migrated_pg_url, tmp_path):
    """SIGTERM mid-gather: the writer stores what it holds now. Had it waited out the
    gather, stop() would have killed it after its timeout and spooled the records."""
    writer = make(migrated_pg_url, tmp_path, batch_size=100, gather=LONG).start()
    for i in range(3):
        writer.submit_call(call(i))
    assert wait_for(lambda: gathering(writer))
    writer.stop(timeout=LONG / 4)
    assert count(migrated_pg_url, "calls") == 3
    assert writer.spooled == 0 and writer.batches == [3]


def test_writer_killed_mid_gather_loses_nothing(migrated_pg_url, tmp_path):
    """What stop() does to a writer that outlives its timeout, done mid-gather: the record
    the writer held (and those still queued) go to the spool."""
    writer = make(migrated_pg_url, tmp_path, batch_size=100, gather=LONG).start()
    for i in range(3):
        writer.submit_call(call(i))
    assert wait_for(lambda: gathering(writer))
    writer._greenlet.kill(block=True)
    writer.stop()
    assert writer.spooled == 3 and writer.written == 0
    assert count(migrated_pg_url, "calls") == 0
    spool = Spool.in_data_dir(tmp_path)
    try:
        assert spool.records == 3
    finally:
        spool.close()
