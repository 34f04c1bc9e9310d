"""The campaign dialer: one greenlet per daemon that claims contacts of running campaigns and
dials each through the originator (docs/campaigns.md).

Every tick it applies what finished calls wrote, keeps its claims' leases alive, settles
the claims of daemons that died (store.recover), completes campaigns with nothing left, and
claims the next contacts whose slot in the shared pace is due within LOOKAHEAD_S. Each
claimed contact gets a greenlet: wait for its slot, originate, wait for the call's end
(told by `call_ended`, called from the daemon's event greenlet: memory only), report.
All database work runs in the dialer greenlet, on its one connection, in order.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from datetime import datetime, timezone

import gevent
import gevent.lock
import psycopg
from gevent.event import AsyncResult

from dialplan import campaigns as rules
from switchd import metrics
from switchd.adapters.db import green
from switchd.calls.originate import OriginateError, OriginateRequest
from switchd.campaigns import store

log = logging.getLogger(__name__)

LOOKAHEAD_S = 0.5          # claim a contact when its slot is at most this far away
MAX_CLAIMS_PER_TICK = 50
CAPS_BACKOFF_S = 1.0       # after a cap refusal or a switch away, this campaign waits
CAMPAIGNS_POLL_S = 0.25    # how often the running campaigns are read again
ENDED_KEPT = 10_000        # ends of campaign calls nobody here waits for (bounded)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Dialer:
    def __init__(self, db_url: str, originate, *, world, tenant_live=lambda tenant: 0,
                 lease_s: float = 15.0, horizon_s: float = 259200.0, now=_now,
                 tick_s: float = 0.05, node: str | None = None):
        self.db_url = db_url
        self.originate = originate          # OriginateRequest -> the originator's answer
        self.world = world                  # callable: the daemon's World (campaigns known)
        self.tenant_live = tenant_live      # tenant -> its live calls on this daemon
        self.lease_s = lease_s
        self.horizon_s = horizon_s
        self.now = now                      # calling hours are judged at this time (tests)
        self.tick_s = tick_s
        self.node = node or f"{socket.gethostname()}:{os.getpid()}"
        self._conn: psycopg.Connection | None = None
        self._sent_conn: psycopg.Connection | None = None
        self._sent_lock = gevent.lock.Semaphore()
        self._writes: deque = deque()       # (function, args) run in the dialer greenlet
        self._checks: set[int] = set()      # campaigns whose answer rate to look at
        self._inflight: dict[int, gevent.Greenlet] = {}   # contact id -> its greenlet
        self._before_dial: set[int] = set()                # claimed, originate not sent
        self._waiting: dict[str, AsyncResult] = {}         # call UUID -> its end
        self._ended: dict[str, tuple] = {}
        self._backoff: dict[int, float] = {}               # campaign id -> monotonic until
        self._campaigns: list[dict] = []
        self._zones: dict[int, list[str]] = {}
        self._last = {"campaigns": 0.0, "zones": 0.0, "leases": 0.0, "recover": 0.0}

    # --- the event greenlet ---------------------------------------------------------------------
    def call_ended(self, call) -> None:
        """A call ended (registry effect). Memory only: the event path never waits."""
        if not call.campaign:
            return
        info = (bool(call.answered_us), call.hangup_cause)
        waiter = self._waiting.pop(call.call_uuid, None)
        if waiter is not None:
            waiter.set(info)
        elif len(self._ended) < ENDED_KEPT:
            self._ended[call.call_uuid] = info

    # --- the dialer greenlet ------------------------------------------------------------------------
    def run(self, stopping) -> None:
        try:
            while not stopping.is_set():
                try:
                    self.step()
                except psycopg.Error as exc:     # the database is away: keep trying
                    metrics.DB_ERRORS.labels("campaigns").inc()
                    log.warning("campaign dialer: database error (retrying): %s",
                                str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
                    self._close()
                    stopping.wait(1.0)
                    continue
                stopping.wait(self.tick_s if self._busy() else self._until_campaigns_read())
        finally:
            self._shutdown()

    def _busy(self) -> bool:
        """Whether a tick may find work before the next read of the campaigns: with none
        running and nothing claimed or to write, it cannot."""
        return bool(self._campaigns or self._inflight or self._writes or self._checks)

    def _until_campaigns_read(self) -> float:
        return max(self._last["campaigns"] + CAMPAIGNS_POLL_S - time.monotonic(), self.tick_s)

    def _db(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = green.connect(self.db_url, autocommit=True, connect_timeout=5)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def step(self) -> None:
        conn = self._db()
        mono = time.monotonic()
        while self._writes:
            func, args = self._writes[0]
            func(conn, *args)
            self._writes.popleft()
        for campaign_id in list(self._checks):
            self._check_answer_rate(conn, campaign_id)
            self._checks.discard(campaign_id)
        if mono - self._last["leases"] >= self.lease_s / 3:
            store.refresh_leases(conn, self.node, list(self._inflight), self.lease_s)
            self._last["leases"] = mono
        if mono - self._last["recover"] >= 1.0:
            settled = store.recover(conn)
            if settled:
                log.warning("campaigns: settled %d contact(s) left by a daemon that stopped",
                            settled)
            for name in store.complete_finished(conn, self.horizon_s):
                log.info("campaign %s completed", name)
            self._last["recover"] = mono
        if mono - self._last["campaigns"] >= CAMPAIGNS_POLL_S:
            self._campaigns = store.running(conn)
            self._last["campaigns"] = mono
        refresh_zones = mono - self._last["zones"] >= 2.0
        if refresh_zones:
            self._last["zones"] = mono
        known = self.world().campaigns
        now = self.now()
        live: dict[str, int] = {}       # tenant -> live calls here, read once per step
        for camp in self._campaigns:
            cid = camp["id"]
            if camp["name"] not in known or self._backoff.get(cid, 0) > mono:
                continue        # not in this daemon's world yet (reload), or backing off
            if refresh_zones or cid not in self._zones:
                self._zones[cid] = store.zone_keys(conn, cid)
            hours = store.hours_of(camp)
            open_zones = [z for z in self._zones[cid] if rules.window_open(hours, z, now)]
            if not open_zones:
                continue
            if camp["tenant"] not in live:
                live[camp["tenant"]] = self.tenant_live(camp["tenant"])
            room = rules.dial_room(None, 0, camp["tenant_max"],
                                   live[camp["tenant"]] + len(self._before_dial))
            if room <= 0:
                continue
            claimed = store.claim(conn, cid, self.node, open_zones,
                                  camp["max_concurrent"] or 1_000_000, self.lease_s,
                                  LOOKAHEAD_S, most=min(room, MAX_CLAIMS_PER_TICK))
            for contact in claimed:
                self._before_dial.add(contact["id"])
                self._inflight[contact["id"]] = gevent.spawn(self._dial, contact, camp)

    def _shutdown(self) -> None:
        """Stopping: contacts claimed but not yet dialled go back to pending."""
        unsent = list(self._before_dial)
        for contact_id in unsent:
            greenlet = self._inflight.get(contact_id)
            if greenlet is not None:
                greenlet.kill(block=False)
        try:
            conn = self._db()
            while self._writes:
                func, args = self._writes.popleft()
                func(conn, *args)
            for contact_id in unsent:
                store.release(conn, contact_id, self.node)
        except psycopg.Error as exc:       # their leases run out; recover settles them
            log.warning("campaign dialer: could not release claims at stop: %s", exc)
        finally:
            self._close()
            if self._sent_conn is not None:
                self._sent_conn.close()

    # --- one contact ---------------------------------------------------------------------------------
    def _dial(self, contact: dict, camp: dict) -> None:
        cid, contact_id = camp["id"], contact["id"]
        try:
            gevent.sleep(contact["delay_s"])
            if not any(c["id"] == cid for c in self._campaigns):
                # paused or stopped since the claim (as last read, every 0.25 s): not dialled
                self._write(store.release, contact_id, self.node)
                return
            if not self._mark_sent(contact_id):
                return              # the claim is no longer ours (lease lost): never dial
            self._before_dial.discard(contact_id)
            request = OriginateRequest(tenant=camp["tenant"], destination=contact["number"],
                                       caller_id=camp["caller_id"], campaign=camp["name"],
                                       timeout_s=camp["timeout_s"])
            try:
                answer = self.originate(request)
            except OriginateError as exc:
                self._refused(contact_id, camp, exc)
                return
            call_uuid = answer["call_uuid"]
            attempts = answer.get("attempts") or [{}]
            if not answer.get("answered"):
                cause = attempts[-1].get("hangup_cause")
                self._write(store.finish, contact_id, self.node, rules.outcome_of(False, cause),
                            call_uuid, cause, None)
                self._checks.add(cid)
                return
            ended = self._ended.pop(call_uuid, None)
            if ended is None:
                waiter = self._waiting[call_uuid] = AsyncResult()
                self._write(store.mark_live, contact_id, self.node, call_uuid)
                self._checks.add(cid)
                try:
                    ended = waiter.get(timeout=(answer.get("max_duration") or 3600) + 120)
                except gevent.Timeout:
                    ended = (True, None)       # its end never came: the lease keeps it ours
                finally:
                    self._waiting.pop(call_uuid, None)
            self._write(store.finish, contact_id, self.node, "answered", call_uuid, ended[1],
                        None)
            self._checks.add(cid)
        except gevent.GreenletExit:
            raise
        except Exception:    # greenlet boundary: the claim's lease runs out, recover settles it
            log.exception("campaign %s: dialling contact %s failed", camp["name"], contact_id)
        finally:
            self._before_dial.discard(contact_id)
            self._inflight.pop(contact_id, None)

    def _mark_sent(self, contact_id: int) -> bool:
        """Commit `sent_at` before the originate, on a connection of its own (the dialer
        greenlet's may be inside a claim transaction). Any doubt: do not dial, put it back."""
        try:
            with self._sent_lock:
                if self._sent_conn is None or self._sent_conn.closed:
                    self._sent_conn = green.connect(self.db_url, autocommit=True,
                                                    connect_timeout=5)
                sent = store.mark_sent(self._sent_conn, contact_id, self.node)
            if sent:
                return True
            log.warning("campaign contact %s: claim no longer ours; not dialled", contact_id)
            return False
        except psycopg.Error as exc:
            log.warning("campaign contact %s not dialled: could not mark it sent: %s",
                        contact_id, exc)
            if self._sent_conn is not None:
                self._sent_conn.close()
            self._sent_conn = None
            self._write(store.release, contact_id, self.node)
            return False

    def _refused(self, contact_id: int, camp: dict, exc: OriginateError) -> None:
        """The originate was refused before a call: budget pauses the campaign; caps and
        an absent switch put the contact back and slow down; anything else is the
        contact's outcome (an invalid number, a forbidden destination)."""
        cid = camp["id"]
        if exc.sip_code == 402:
            self._write(store.release, contact_id, self.node)
            self._write(store.pause_if, cid, f"budget: {exc}", self.horizon_s)
            log.warning("campaign %s paused: %s", camp["name"], exc)
        elif exc.status in (502, 503) or exc.sip_code == 503 or exc.status == 404:
            self._write(store.release, contact_id, self.node)
            self._backoff[cid] = time.monotonic() + CAPS_BACKOFF_S
        else:
            self._write(store.finish, contact_id, self.node, "refused", None, None, str(exc))

    def _write(self, func, *args) -> None:
        self._writes.append((func, args))
        if func is store.finish:
            metrics.CAMPAIGN_CONTACTS.labels(args[2]).inc()

    def _check_answer_rate(self, conn, campaign_id: int) -> None:
        camp = next((c for c in self._campaigns if c["id"] == campaign_id), None)
        if camp is None or camp["min_answer_rate"] is None:
            return
        window = camp["answer_rate_window"]
        reason = rules.answer_rate_pause(store.recent_outcomes(conn, campaign_id, window),
                                         window, camp["min_answer_rate"])
        if reason and store.pause_if(conn, campaign_id, reason, self.horizon_s):
            log.warning("campaign %s paused: %s", camp["name"], reason)
