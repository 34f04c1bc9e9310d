"""GreenConnection against a real PostgreSQL: its waits park on gevent's hub, let other
greenlets run, wake only when the socket is ready (or once at a bounded wait's deadline),
and end with an error, not a hang, when the server drops the connection."""
from __future__ import annotations

import gevent
import gevent.socket
import psycopg
import pytest
from psycopg.waiting import Ready

from switchd.adapters.db import green


class Counting:
    """Wraps a psycopg generator and records every readiness it is woken with."""

    def __init__(self, gen):
        self.gen, self.woken = gen, []

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.gen)

    def send(self, ready):
        self.woken.append(ready)
        return self.gen.send(ready)


def test_a_query_waits_on_the_hub_while_other_greenlets_run(pg_url):
    with green.connect(pg_url, autocommit=True) as conn, \
            psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(4711)")
        conn.execute("SET lock_timeout = '10s'")    # a wait that held the hub fails here
        # Only a greenlet that runs while `conn` waits can release the lock it waits for.
        releaser = gevent.spawn(holder.execute, "SELECT pg_advisory_unlock(4711)")
        assert conn.execute("SELECT pg_advisory_lock(4711), 42").fetchone()[1] == 42
        assert releaser.get().fetchone() == (True,)


def test_an_untimed_wait_is_woken_only_by_its_socket(pg_url):
    with green.connect(pg_url, autocommit=True) as conn:
        conn.pgconn.send_query(b"SELECT pg_sleep(0.5)")
        gen = Counting(psycopg.generators.execute(conn.pgconn))
        results = conn.wait(gen)
        assert [r.status for r in results] == [psycopg.pq.ExecStatus.TUPLES_OK]
        # psycopg's own wait sends READY_NONE every 0.1 s while it waits: ≈ 5 here
        assert Ready.NONE not in gen.woken
        assert 1 <= len(gen.woken) <= 3


def test_a_bounded_wait_wakes_at_its_deadline_only(pg_url):
    with green.connect(pg_url, autocommit=True) as conn:
        conn.execute("LISTEN green_test")
        gen = Counting(psycopg.generators.notifies(conn.pgconn))
        started = gevent.get_hub().loop.now()
        with pytest.raises(psycopg.errors._WaitTimeout):
            conn.wait(gen, timeout=0.5)
        assert gevent.get_hub().loop.now() - started >= 0.45
        assert len(gen.woken) <= 1       # not every 0.1 s


def test_notifications_arrive_through_a_bounded_wait(pg_url):
    with green.connect(pg_url, autocommit=True) as listen, \
            psycopg.connect(pg_url, autocommit=True) as talk:
        listen.execute("LISTEN green_test")
        gevent.spawn_later(0.1, talk.execute, "NOTIFY green_test, 'hello'")
        got = [n.payload for n in listen.notifies(timeout=5, stop_after=1)]
        assert got == ["hello"]
        assert list(listen.notifies(timeout=0)) == []     # a timeout of 0 polls once


def test_a_large_copy_goes_through_write_waits(pg_url):
    rows = [(i, "x" * 200) for i in range(20_000)]      # ≈ 4 MB: more than a socket buffer
    with green.connect(pg_url) as conn:
        conn.execute("CREATE TEMP TABLE green_copy (n bigint, s text)")
        with conn.cursor() as cur, cur.copy("COPY green_copy (n, s) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        assert conn.execute("SELECT count(*), sum(n) FROM green_copy").fetchone() == (
            len(rows), sum(n for n, _ in rows))


def test_a_connection_the_server_drops_mid_wait_raises(pg_url):
    with green.connect(pg_url, autocommit=True) as conn, \
            psycopg.connect(pg_url, autocommit=True) as admin:
        pid = conn.info.backend_pid
        gevent.spawn_later(0.2, admin.execute, "SELECT pg_terminate_backend(%s)", (pid,))
        with gevent.Timeout(10), pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT pg_sleep(5)")


def test_a_zero_timeout_wait_polls_a_socket_numbered_past_select_s_limit(pg_url):
    import os
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if min(soft, hard) < 1200:
        pytest.skip(f"needs 1200 open files, the limit is {soft}")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1030)]   # push the next fd past 1024
    try:
        with green.connect(pg_url, autocommit=True) as listen, \
                psycopg.connect(pg_url, autocommit=True) as talk:
            assert listen.fileno() >= 1024
            listen.execute("LISTEN green_test")
            talk.execute("NOTIFY green_test, 'far'")
            gevent.socket.wait_read(listen.fileno(), timeout=5)     # it has arrived
            assert [n.payload for n in listen.notifies(timeout=0)] == ["far"]
    finally:
        for fd in held:
            os.close(fd)
