"""`switchd run`: wires the parts into one supervised gevent process.

Greenlets: the ESL supervisor (reader + dispatcher), the HTTP server, the CDR writer, the
caps worker, and a few periodic jobs (lease refresh, max-duration watchdog, registry sweep,
health persistence, reload listener). Handlers change memory and queue work; nothing in the
event path waits on the network (STYLE.md §6). A crashed long-lived greenlet stops the
daemon with a non-zero status so systemd restarts it (STYLE.md §9).
"""
from __future__ import annotations

import logging
import resource
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import gevent
import psycopg
from gevent.event import Event

from dialplan import numbers, rating
from dialplan.failover import FailoverTable
from switchd.accounting import billing
from switchd.accounting import spend_watch
from switchd import heap, metrics
from switchd.adapters import systemd
from switchd.adapters.db import green
from switchd.api import webhooks
from switchd.api.calls import Live
from switchd.api.routes import build_app
from switchd.routing.books import HealthBook
from switchd.accounting import budgets
from switchd.accounting.cdrs.importer import ErrDirWatch
from switchd.accounting.cdrs.ingest import CdrIngest
from switchd.config import Config
from switchd.adapters.db import store
from switchd.adapters.db.cdr_writer import CdrWriter, EventRecord
from switchd.adapters.db.migrate import apply_migrations
from switchd.adapters.db import partitions
from switchd.adapters.db.spool import Spool
from switchd.routing.deck_loader import DeckCache, DeckReloader, cooperative_yield
from switchd.adapters.esl import commands
from switchd.adapters.esl.events import ChannelEvent, GatewayEvent, JobEvent
from switchd.adapters.esl.gateways import GatewayStatusError, parse_xmlstatus
from switchd.adapters.esl.supervisor import ESLSupervisor
from switchd.adapters.http.connections import HttpLimits
from switchd.adapters.http.server import HttpApp, NotReady, serve
from switchd.calls.originate import OriginateRequest, Originator
from switchd.calls.policing import CapsGate, build_caps_backend
from switchd.calls.retries import AttemptStore, RetryScheduler
from switchd.calls.channels import parse_show_channels_json
from switchd.calls.model import (CallAdopted, CallAnswered, CallEnded, CallRenamed, CallStarted,
                                 CarrierOutcome, LegEnded)
from switchd.calls.reconcile import RESYNC_LAG_US
from switchd.calls.registry import CallRegistry
from switchd.campaigns.dialer import Dialer
from switchd.routing.router import Router
from switchd.watchers import Periodic, WorldReloader

log = logging.getLogger(__name__)

DECK_LOAD_TIMEOUT_S = 120.0


class DaemonStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class _GatewaySync:
    """`sofia xmlstatus gateway`, queued behind the events that preceded the reply."""
    statuses: dict
    connection: object = None


@dataclass(frozen=True)
class _Resync:
    """`show channels` rows, queued behind the events that preceded the reply."""
    rows: list
    connection: object = None     # the connection they came from: stale once it has closed
    requested_us: int = 0         # when we asked: younger legs may be missing (lag)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Daemon:
    def __init__(self, config: Config, db_url: str | None, clock_us=None):
        self.config = config
        # Call timing (watchdog, sweeps, resync) follows the switch's clock; the simulator
        # runs simulated time, so tests and the demo pass its clock here.
        self.now_us = clock_us or (lambda: int(time.time() * 1_000_000))
        self.db_url = db_url
        self.stopping = Event()
        self.crash: BaseException | None = None
        self.greenlets: list[gevent.Greenlet] = []
        self.http_server = None
        self.http_port: int | None = None
        self.killed_by_watchdog: set[str] = set()
        # Leg UUID -> (the ended leg, its LegRecord), for the call's CDR; emptied at call end.
        self._rated_legs: dict[str, tuple] = {}
        self.resynced = False
        self.starting: str | None = "starting"    # what /readyz says is still starting
        self.routing = False                      # lookups and originate are served
        self.stopped = False
        self.database_up: bool | None = None      # last probes (switchd_database_up / redis_up)
        self.redis_up: bool | None = None
        self._probe_conn = None
        self._gc_thresholds: tuple[int, int, int] | None = None   # until stop (heap.py)
        self.gap_started_us: int | None = None   # when ESL was lost, until the next resync
        self._follow_up_gap_us: int | None = None   # that gap, for the resync after that one
        self.switch_offset_us = 0                # switch clock - ours, from the last event

    # --- start / stop ----------------------------------------------------------------------
    def listen(self) -> "Daemon":
        """Serve HTTP at once: /healthz answers from the first second, /readyz says what is
        still starting, lookups get 503 (FreeSWITCH's static fallback) until routing is up."""
        cfg = self.config
        self.app = HttpApp(route_lookup=self._route_lookup, readiness=self.readiness,
                           live_calls=self.live_calls, originate=self._originate,
                           api_token=cfg["http.api_token"] or None,
                           cdr_credentials=cfg["cdr.credentials"] or None)
        self.http_server = serve(self.app, cfg["http.host"], cfg["http.port"], HttpLimits(
            read_timeout=cfg["http.read_timeout"], idle_timeout=cfg["http.idle_timeout"],
            max_connections=cfg["http.max_connections"],
            max_in_flight=cfg["http.max_in_flight"],
            max_cdr_in_flight=cfg["http.max_cdr_in_flight"]),
            refuse_lookups=self._events_behind)
        metrics.ESL_EVENT_BACKLOG.set_function(self._event_backlog)
        self.http_port = self.http_server.server_port
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < cfg["http.max_connections"] + 64:
            log.warning("open-file limit %d is below http.max_connections (%d) plus what "
                        "PostgreSQL, Redis and ESL need; raise it (LimitNOFILE in the unit) "
                        "or lower http.max_connections", soft, cfg["http.max_connections"])
        return self

    def _event_backlog(self) -> float:
        """How far the events are behind, in seconds (ESLConnection.backlog_age; 0 before
        ESL starts)."""
        esl = getattr(self, "esl", None)
        connection = esl.connection if esl is not None else None
        return connection.backlog_age() if connection is not None else 0.0

    def _events_behind(self) -> str | None:
        """Why a new call's lookup is refused before it is routed, or None. Past capacity
        the events of the calls already up come first: a hangup handled late holds a slot
        and lets a call run past its limit, a CDR written late is money not yet seen."""
        if self._event_backlog() > self.config["esl.max_event_lag"]:
            return "events_behind"
        return None

    def start(self) -> "Daemon":
        if self.http_server is None:
            self.listen()
        try:
            self._start()
        except BaseException:
            self.stop(drain_timeout=2)
            raise
        self.starting = None
        return self

    def _start(self) -> None:
        cfg = self.config
        self.starting = "applying database migrations"
        apply_migrations(self.db_url)
        self.starting = "loading tenants, carriers and DIDs"
        with green.connect(self.db_url) as conn:
            partitions.ensure_ahead(conn)       # this month's and next month's, before any CDR
            self.world = store.load_world(conn)
            health = store.load_carrier_health(conn)
            now = _now()
            spent = budgets.month_spend(conn, now)
        self.starting = "loading rate decks"
        self.decks = DeckCache()
        # The reloader's first load (LISTEN first, so no import slips between) is the
        # start-up load: loading here as well read every deck twice.
        self.deck_reloader = DeckReloader(self.db_url, self.decks, on_progress=cooperative_yield())
        self._spawn(self.deck_reloader.run)
        if not self.deck_reloader.loaded.wait(DECK_LOAD_TIMEOUT_S):
            raise DaemonStartError(f"rate decks not loaded within {DECK_LOAD_TIMEOUT_S}s; "
                               "is PostgreSQL reachable?")
        self.starting = "compiling number patterns"
        numbers.compile_type_patterns()     # once, not on each region's first call
        self.starting = "starting routing"
        self.health = HealthBook(_health_from_rows(health), cfg["routing.health_cooldown"])
        self.spend = budgets.build_book(cfg, {t.name: t.monthly_budget
                                              for t in self.world.tenants.values()}, spent)
        self.caps = CapsGate(build_caps_backend(cfg), cfg)
        # A failover leg to a carrier at its channel cap must not proceed: FreeSWITCH then
        # tries the next gateway of the bridge.
        self.caps.on_refused_leg = lambda call_uuid, leg_uuid: gevent.spawn(
            self._kill, call_uuid, leg_uuid, "NORMAL_CIRCUIT_CONGESTION")
        self.writer = CdrWriter(self.db_url, spool=Spool(cfg.data_dir / "spool"),
                                gather=cfg["cdr.gather_ms"] / 1000).start()
        self._reprice = billing.deck_repricer(lambda: self.decks.decks)
        # FreeSWITCH's own CDRs (POST /fs/cdr): durable before acknowledged; when PostgreSQL
        # is away they share the writer's spool, which the writer replays.
        self.cdr_ingest = CdrIngest(self.db_url, self.writer.spool,
                                    precision=cfg["rating.precision"],
                                    rounding_of=self._rounding_of, reprice=self._reprice,
                                    encoded_values=cfg["cdr.encoded_values"],
                                    commit_timeout=cfg["cdr.commit_timeout"],
                                    gather=cfg["cdr.post_gather_ms"] / 1000)
        self.registry = CallRegistry()
        self.router = Router(world=lambda: self.world, decks=lambda: self.decks.decks,
                             health=self.health, caps=self.caps, spend=self.spend,
                             settings=_routing_settings(cfg),
                             record=lambda d: self.writer.submit_decision(d.as_row()))
        # Originate attempts, the daily cap and scheduled retries live in PostgreSQL
        # (switchd/calls/retries.py, docs/originate.md).
        self.attempt_store = AttemptStore(self.db_url)
        self.originator = Originator(self.router, None, self.registry, self.caps,
                                     world=lambda: self.world,
                                     record=lambda d: self.writer.submit_decision(d.as_row()),
                                     attempts=self.attempt_store)
        self.retries = RetryScheduler(self.attempt_store, self.originator.place_retry,
                                      ready=lambda: self.routing and self.esl.connected,
                                      daemon=self.originator.daemon)
        self.retries.on_interrupted = self.originator.interrupted
        self.originator.on_effects = lambda effects: [self._act(e) for e in effects]
        # Campaigns (docs/campaigns.md): contacts claimed from PostgreSQL, dialled by the
        # originator; the event path only tells it that a campaign call ended.
        self.dialer = Dialer(self.db_url, self.originator.originate, world=lambda: self.world,
                             tenant_live=self.registry.live_of_tenant,
                             lease_s=cfg["dialer.lease_seconds"],
                             horizon_s=cfg["webhooks.give_up_after"])
        self.spend.on_alert = lambda alert: gevent.spawn(budgets.raise_alert, self.db_url,
                                                         alert, self.call_events)
        self.spend.live_call = self._budget_live_call
        self.spend.send = lambda line: self.esl.api(_bare(line))
        self.spend.on_extended = self.registry.set_max_duration
        self.app.cdr_ingest = self.cdr_ingest      # /fs/cdr answered 503 until now
        # Call events for applications (switchd/api/webhooks.py): the event greenlet only
        # appends to call_events; the outbox writer and the deliverer do the I/O.
        horizon = cfg["webhooks.give_up_after"]
        self.call_events = webhooks.CallEvents()
        self.outbox = webhooks.Outbox(self.db_url, self.call_events, horizon)
        self.deliverer = webhooks.Deliverer(self.db_url, base=cfg["webhooks.backoff_base"],
                                            cap=cfg["webhooks.backoff_max"],
                                            timeout=cfg["webhooks.timeout"])
        self.api = build_app(self.db_url, Live(live_calls=self.live_calls,
                                               live_call=self.live_call, originate=self._originate,
                                               hangup=self.hangup, router=self.router,
                                               reset_health=self.reset_health,
                                               cancel_retries=self.originator.cancel_retries),
                             admin_token=cfg["http.api_token"] or None, horizon_s=horizon)
        self.app.api = self.api                    # /v1 is served by switchd/api from here on
        self.esl = ESLSupervisor(
            cfg["esl.host"], cfg["esl.port"], cfg["esl.password"],
            on_event=self.handle_event, on_connected=self.on_esl_connected,
            on_disconnected=self.on_esl_disconnected,
            command_timeout=cfg["esl.command_timeout"],
            heartbeat_timeout=cfg["esl.heartbeat_timeout"], backoff_max=cfg["esl.backoff_max"])
        self.originator.esl = self.esl
        self.esl.start()
        lease = cfg["caps.lease_seconds"]
        self._spawn(Periodic(lease / 3, self._refresh_leases, "lease refresh").run)
        self._spawn(Periodic(1.0, self._watchdog, "max-duration watchdog").run)
        self._spawn(Periodic(5.0, self._sweep, "registry sweep").run)
        self._spawn(Periodic(2.0, self._persist_health, "health persistence").run)
        self._spawn(Periodic(60.0, self._budget_floor, "budget spend floor").run)
        # Reconcile against the switch now and then, not only after reconnects: FreeSWITCH
        # sometimes leaves stuck channels, and a lost hangup event would otherwise hold a slot.
        self._spawn(Periodic(cfg["esl.resync_interval"], self._periodic_resync,
                             "periodic resync").run)
        self._probe_backends()
        self._spawn(Periodic(5.0, self._probe_backends, "database and Redis probe").run)
        metrics.LIVE.source = self.metrics_state
        self.reloader = WorldReloader(self.db_url, on_world=self._reload_world)
        self._spawn(self.reloader.run)
        self._spawn(lambda: self.outbox.run(self.stopping))
        self._spawn(lambda: self.deliverer.run(self.stopping))
        self._spawn(lambda: self.dialer.run(self.stopping))
        self._spawn(Periodic(3600.0, self._api_housekeeping, "API housekeeping").run)
        # Hourly spend spikes and the month-end forecast (docs/reports.md).
        self.spend_watch = spend_watch.from_config(cfg, self.db_url, self.call_events)
        if self.spend_watch is not None:
            self._spawn(Periodic(cfg["spend_watch.interval"], self.spend_watch.check,
                                 "spend watch").run)
        self._spawn(Periodic(0.5, self.retries.step, "originate retries").run)
        self._spawn(Periodic(6 * 3600.0, self._ensure_partitions, "monthly partitions").run)
        if cfg["cdr.import_dir"]:
            # mod_json_cdr's error directory on this host: what FreeSWITCH could not post
            # is imported by itself, not left for an operator's `switchd cdr import`.
            watch = ErrDirWatch(self.cdr_ingest, cfg["cdr.import_dir"],
                                blocking=gevent.get_hub().threadpool.apply)
            self._spawn(Periodic(cfg["cdr.import_interval"], watch.run_once,
                                 "CDR import from cdr.import_dir").run)
        interval = systemd.watchdog_interval()
        if interval:
            self._spawn(Periodic(interval, lambda: systemd.notify("WATCHDOG=1"), "sd watchdog").run)
        # Decks, world and modules out of the collector's sight, and the full collection
        # on a timer instead of every few seconds under load (switchd/heap.py).
        heap.settle()
        self._gc_thresholds = heap.own_full_collections()
        self._spawn(Periodic(cfg["gc.full_interval"], heap.full_collection,
                             "full garbage collection").run)
        self.routing = True
        systemd.notify("READY=1")
        log.info("switchd running: HTTP %s:%s, ESL %s:%s, caps %s", cfg["http.host"],
                 self.http_port, cfg["esl.host"], cfg["esl.port"], self.caps.describe())
        for note in cfg.warnings():
            log.warning(note)

    def _route_lookup(self, form: dict) -> str:
        if not self.routing:
            raise NotReady(self.starting or "stopping")
        decision = self.router.route(form)
        if getattr(decision.answer, "answered", False):
            # A leg answered before, routed again (a caller's blind transfer): the call it
            # heads learns its tenant and limit now, not at that leg's hangup.
            self.registry.leg_routed_again(form.get("Unique-ID", ""), decision.answer.call_vars)
        return decision.xml

    def _originate(self, payload: dict) -> dict:
        if not self.routing:
            raise NotReady(self.starting or "stopping")
        return self.originator.originate(OriginateRequest.from_json(payload))

    def _spawn(self, func) -> None:
        greenlet = gevent.spawn(func)
        greenlet.link_exception(self._greenlet_crashed)
        self.greenlets.append(greenlet)

    def _greenlet_crashed(self, greenlet) -> None:
        log.critical("a daemon greenlet crashed: %r; stopping so systemd restarts us",
                     greenlet.exception)
        self.crash = greenlet.exception
        self.stopping.set()

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking work, let the writer flush (or spool) everything, release resources.
        Idempotent: a failed start stops what it started, and its caller may stop again."""
        if self.stopped:
            return
        self.stopped = True
        systemd.notify("STOPPING=1")
        self.routing = False
        if self.http_server is not None:
            self.http_server.stop(timeout=2)
        if getattr(self, "esl", None) is not None:
            self.esl.stop()
        if getattr(self, "deck_reloader", None) is not None:
            self.deck_reloader.stop()
        for greenlet in self.greenlets:
            greenlet.unlink(self._greenlet_crashed)
        gevent.killall(self.greenlets, timeout=2)
        if getattr(self, "outbox", None) is not None:
            try:
                while self.outbox.step():       # what the event path queued, into the outbox
                    pass
            except Exception as exc:    # shutdown boundary: the CDRs still get written
                log.error("webhook outbox not drained at stop: %s", exc)
        if getattr(self, "retries", None) is not None:
            self.retries.drain(timeout=drain_timeout)     # retries being placed get their result
            self.attempt_store.close()
        if getattr(self, "writer", None) is not None:
            self.writer.stop(flush=True, timeout=drain_timeout)
        if getattr(self, "caps", None) is not None:
            self.caps.close()
        if getattr(self, "spend", None) is not None:
            self.spend.close()
        if metrics.LIVE.source == self.metrics_state:
            metrics.LIVE.source = None
        if self._probe_conn is not None:
            self._probe_conn.close()
        if getattr(self, "cdr_ingest", None) is not None:
            self.cdr_ingest.close()
        if self._gc_thresholds is not None:     # a daemon inside a test: the process goes on
            heap.restore(self._gc_thresholds)
            self._gc_thresholds = None

    def run_forever(self) -> int:
        gevent.signal_handler(signal.SIGTERM, self.stopping.set)
        gevent.signal_handler(signal.SIGINT, self.stopping.set)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        self.stopping.wait()
        log.info("stopping: draining CDRs")
        self.stop()
        return 1 if self.crash else 0

    # --- ESL events --------------------------------------------------------------------------
    def handle_event(self, event) -> None:
        if isinstance(event, _Resync):
            self._apply_resync(event.rows, event.connection, event.requested_us)
        elif isinstance(event, _GatewaySync):
            self._apply_gateway_sync(event.statuses, event.connection)
        elif isinstance(event, ChannelEvent):
            if event.timestamp_us:
                # The switch's clock may differ from ours (another host; the simulator's
                # scaled time): resync compares leg times with the request in its clock.
                self.switch_offset_us = event.timestamp_us - self.now_us()
            self._record_event(event)
            tenant = event.vars.get("switchd_tenant")
            if event.name in ("CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA"):
                self.call_events.progress(event.call_uuid or event.uuid, tenant,
                                          event.timestamp_us)
            elif tenant and self.call_events.waiting(event.call_uuid or event.uuid):
                self.call_events.learn_tenant(
                    event.call_uuid or event.uuid, tenant,
                    {"direction": event.vars.get("switchd_direction"),
                     "caller": event.caller_number, "destination": event.destination_number},
                    event.vars)
            effects = self.registry.apply(event)
            if event.name == "CHANNEL_CREATE" and event.vars.get("switchd_carrier"):
                carrier = self.world.carriers.get(event.vars["switchd_carrier"])
                if carrier is not None:
                    # The registry's call, not the event's Channel-Call-UUID: an originate
                    # attempt after the first is a channel of its own, yet the call's slots
                    # are keyed by the call UUID.
                    leg = self.registry.leg(event.uuid)
                    self.caps.leg_started(leg.call_uuid if leg else event.call_uuid, carrier,
                                          event.uuid)
            for effect in effects:
                self._act(effect)
                if isinstance(effect, LegEnded):
                    self.originator.leg_ended(effect.leg)
        elif isinstance(event, GatewayEvent):
            self._on_gateway(event)
        elif isinstance(event, JobEvent):
            pass    # resolved by the supervisor's job tracker

    def _record_event(self, event: ChannelEvent) -> None:
        if not event.core_uuid or not event.sequence:
            return
        # Only what a timeline or a replay needs (docs/storage.md): the cause, gateway, SIP
        # status and billmsec an event carries are the leg row's.
        # Absent (or refused at the ESL edge, which logged it): the event is logged at now.
        at = _now()
        if event.timestamp_us:
            try:
                at = datetime.fromtimestamp(event.timestamp_us / 1e6, tz=timezone.utc)
            except (ValueError, OverflowError, OSError):
                # A corrupt Event-Date-Timestamp must not cost the event itself (raising
                # here would keep it from the registry: a lost hangup holds a slot until
                # the sweep).
                log.warning("%s carries an impossible Event-Date-Timestamp %r; logged at now",
                            event.name, event.timestamp_us,
                            extra={"call_uuid": event.call_uuid})
        self.writer.submit_event(EventRecord(
            core_uuid=event.core_uuid, event_seq=event.sequence, name=event.name, at=at,
            call_uuid=event.call_uuid, leg_uuid=event.uuid))

    def switch_now_us(self) -> int:
        """Our estimate of the switch's clock (its events' timestamps are in it)."""
        return self.now_us() + self.switch_offset_us

    # --- rating terms ----------------------------------------------------------------------
    def _rounding_of(self, carrier: str | None) -> str:
        """The carrier agreement's billed-seconds rule (carriers.billing_rounding)."""
        found = self.world.carriers.get(carrier or "")
        return found.billing_rounding if found is not None else rating.BILLSEC

    def _rate_leg(self, leg, precision: int):
        return billing.rate_leg(leg, precision, self._rounding_of, self._reprice)

    def _leg_record(self, leg, precision: int):
        """The leg's record from its LegEnded when the leg is unchanged since (the usual
        case: nothing after HANGUP_COMPLETE changes a leg), else rated now."""
        rated = self._rated_legs.get(leg.uuid)
        if rated is not None and rated[0] == leg:
            return rated[1]
        return self._rate_leg(leg, precision)

    def _act(self, effect) -> None:
        precision = self.config["rating.precision"]
        if isinstance(effect, LegEnded):
            record = self._rate_leg(effect.leg, precision)
            if effect.call.state != "ended":
                # The call's CDR needs this leg's record again at its end: kept with the
                # leg it was rated from (used only if the leg is still the same then).
                self._rated_legs[effect.leg.uuid] = (effect.leg, record)
            if record.unrated:
                billing.count_unrated("esl", "no usable tariff, or a figure of the switch's "
                                      "it depends on could not be read",
                                      record.leg_uuid, record.call_uuid)
            if record.provisional and record.answered_at is not None:
                metrics.PROVISIONAL_LEGS.inc()
            self.writer.submit_leg(record)
        elif isinstance(effect, CarrierOutcome):
            self.health.record_leg(effect.carrier, effect.hangup_cause, effect.sip_status,
                                   effect.answered, _now())
        elif isinstance(effect, CallEnded):
            self._call_ended(effect.call, precision)
            self.dialer.call_ended(effect.call)
        elif isinstance(effect, CallStarted):
            self.call_events.started(effect.call)
        elif isinstance(effect, CallAnswered):
            self.call_events.answered(effect.call, effect.leg)
            self.spend.call_answered(effect.call.call_uuid)
        elif isinstance(effect, CallRenamed):
            self.caps.rename(effect.old, effect.new)
            self.spend.renamed(effect.old, effect.new)
        elif isinstance(effect, CallAdopted):
            call = effect.call
            self.caps.adopt(call.call_uuid, self.world.tenants.get(call.tenant or ""),
                            self.world.carriers.get(call.carrier or ""))

    def _call_ended(self, call, precision: int) -> None:
        legs = [self._leg_record(leg, precision) for leg in call.legs if not leg.placeholder]
        for leg in call.legs:
            self._rated_legs.pop(leg.uuid, None)
        record = billing.call_record(call, legs, ended_us=self.switch_now_us())
        if call.reconstructed:
            for leg in legs:     # reconstructed legs never got their own LegEnded
                self.writer.submit_leg(leg)
        self.writer.submit_call(record)
        self.call_events.ended(call, record)
        self.caps.release(call.call_uuid)
        self.killed_by_watchdog.discard(call.call_uuid)
        # Queued: settling moves Redis, alerts and extensions (docs/budgets.md).
        self.spend.call_ended(call.call_uuid, record.tenant, record.cost, record.started_at)
        result = "answered" if record.answered_at else "failed"
        metrics.CALLS.labels(record.direction, result, record.hangup_cause or "UNKNOWN").inc()
        for leg in legs:
            # Each carrier leg's money under its own carrier: a failed-over call pays the
            # carrier that answered and then failed (its connect fee) as well as the one
            # that carried it, and a connect fee with 0 billed seconds is still money.
            if leg.carrier and leg.cost:
                tenant = record.tenant or "-"
                metrics.BILLED_SECONDS.labels(tenant, leg.carrier).inc(leg.billed_seconds)
                metrics.COST.labels(tenant, leg.carrier).inc(float(leg.cost))
        # DEBUG: one line per call is the hot path; the CDR row has all of it.
        log.debug("call ended: %s via %s, %ss billed, cost %s%s", record.hangup_cause,
                 record.carrier or "-", record.billed_seconds, record.cost,
                 " (reconstructed)" if record.reconstructed else "",
                 extra={"call_uuid": call.call_uuid, "tenant": record.tenant})

    def _on_gateway(self, event: GatewayEvent) -> None:
        self.health.gateway_event(event.gateway, event.kind, event.state, event.ping_status)

    def on_esl_connected(self, connection) -> None:
        """After every (re)connect: rebuild the picture of live calls from the switch.

        The reply is applied through the event queue, behind every event that preceded it
        on the wire, so a call whose events are still queued is not mistaken for unknown."""
        self._query_gateways(connection)
        requested_us = self.switch_now_us()
        reply = connection.api(_bare(commands.show_channels_json()),
                               timeout=self.config["esl.command_timeout"])
        connection.post(_Resync(parse_show_channels_json(reply), connection, requested_us))

    def _query_gateways(self, connection) -> None:
        """Gateway state from the switch itself: events alone leave a gateway deleted at a
        FreeSWITCH shutdown down for good (its gateway_add came before we reconnected)."""
        reply = connection.api(_bare(commands.sofia_gateway_status()),
                               timeout=self.config["esl.command_timeout"])
        try:
            statuses = parse_xmlstatus(reply)
        except GatewayStatusError as exc:
            # No mod_sofia (or an unexpected reply): keep what events say, say so once.
            log.warning("gateway state not queried on connect: %s", exc)
            return
        connection.post(_GatewaySync(statuses, connection))

    def _apply_gateway_sync(self, statuses: dict, connection=None) -> None:
        closed = getattr(connection, "closed", None)
        if closed is not None and closed.is_set():
            return            # the next connection queries afresh
        self.health.sync_gateways(statuses, self._provisioned_gateways())
        log.info("gateways on the switch: %d, down: %s", len(statuses),
                 ", ".join(sorted(self.health.down_gateways)) or "none")

    def _provisioned_gateways(self) -> set[str]:
        return {g.name for c in self.world.carriers.values() if c.enabled
                for g in c.gateways if g.enabled}

    def on_esl_disconnected(self, reason: str) -> None:
        self.resynced = False
        if self.gap_started_us is None:
            # Calls that end before we see the switch again are billed up to here
            # (provisionally: the switch's CDR settles them).
            self.gap_started_us = self.switch_now_us()

    def _apply_resync(self, rows, connection=None, requested_us: int | None = None) -> None:
        closed = getattr(connection, "closed", None)
        if closed is not None and closed.is_set():
            # Its connection dropped before we got here; the next one resyncs afresh. Applied
            # now, a snapshot older than events of the new connection would close live calls.
            log.info("resync: skipping a snapshot from a connection that has since closed")
            return
        spared = self.registry.counters["resync_spared"]
        adopted = self.registry.counters["resync_adopted_legs"]
        closed_before = self.registry.counters["resync_closed_legs"]
        # The first snapshot after a gap closes what ended in it, billed to its start; so
        # does the follow-up this one schedules (below), for calls it still listed.
        after_gap = self.gap_started_us
        ended_us = after_gap if after_gap is not None else self._follow_up_gap_us
        self._follow_up_gap_us = after_gap
        effects = self.registry.resync(rows, self.switch_now_us(), requested_us=requested_us,
                                       ended_us=ended_us)
        self.gap_started_us = None
        for effect in effects:
            self._act(effect)
        metrics.RESYNCS.inc()
        closed = self.registry.counters["resync_closed_legs"] - closed_before
        metrics.RESYNC_CLOSED_LEGS.inc(closed)
        if (after_gap is not None or self.registry.counters["resync_spared"] > spared
                or self.registry.counters["resync_adopted_legs"] > adopted):
            # Legs missing from the snapshot but possibly too young to be in it, or listed
            # in it (adopted, or followed before the gap) though `show channels`, written
            # behind the calls, may still list channels that hung up before we subscribed,
            # their HANGUP_COMPLETE lost in the gap: look again once the snapshot can be
            # trusted for them, rather than holding their slots to the next periodic one.
            gevent.spawn_later(RESYNC_LAG_US / 1e6 + 1.0, self._resync_again)
        live = set(self.registry.live_call_uuids())
        self.resynced = True
        log.info("resync: switch has %d channel(s), %d live call(s); %d effect(s)",
                 len(rows), len(live), len(effects))
        # The caps backend may be Redis: not in the event greenlet (STYLE.md §6).
        gevent.spawn(self._reconcile_caps, live)

    def _reconcile_caps(self, live: set) -> None:
        try:
            released = self.caps.reconcile(live)
        except Exception as exc:    # greenlet boundary; leases of the dead expire anyway
            log.error("resync: caps reconciliation failed (stale slots expire with their "
                      "leases): %s", exc)
            return
        if released:
            log.info("resync: %d stale caps slot(s) released", len(released))

    # --- periodic jobs -----------------------------------------------------------------------
    def _refresh_leases(self) -> None:
        live = self.registry.live_call_uuids()
        self.spend.refresh(live)
        self.caps.refresh(live)

    def _budget_floor(self) -> None:
        """Month spend from the CDRs in PostgreSQL: the shared spend catches up with
        settlements lost in a crash and costs the switch's CDRs corrected upwards."""
        try:
            with green.connect(self.db_url, connect_timeout=5) as conn:
                spent = budgets.month_spend(conn, _now())
        except psycopg.Error as exc:
            metrics.DB_ERRORS.labels("budget_floor").inc()
            log.warning("budget spend floor: database unavailable: %s", exc)
            return
        self.spend.floor(spent)

    def _budget_live_call(self, call_uuid: str):
        """What a budget extension needs of a live call (budget worker greenlet)."""
        call = self.registry.get(call_uuid)
        if call is None or call.state in ("ending", "ended"):
            return None
        return budgets.LiveCall(call.answered_us, _channel_to_kill(call), self.switch_now_us())

    def _watchdog(self) -> None:
        # In the switch's clock, as the call's answer time is: a switch on another host, or
        # one whose timer thread's clock stood still, can be seconds or more from ours.
        now_us = self.switch_now_us()
        grace = self.config["watchdog.grace_seconds"]
        for call in self.registry.answered_calls_over_limit(now_us, grace):
            if call.call_uuid in self.killed_by_watchdog or not self.esl.connected:
                continue
            self.killed_by_watchdog.add(call.call_uuid)
            metrics.WATCHDOG_KILLS.inc()
            log.warning("call outlived its max duration of %ss; killing it", call.max_duration,
                        extra={"call_uuid": call.call_uuid, "tenant": call.tenant})
            gevent.spawn(self._kill, call.call_uuid, _channel_to_kill(call), "ALLOTTED_TIMEOUT")

    def _kill(self, call_uuid: str, channel_uuid: str, cause: str) -> None:
        try:
            self.esl.api(_bare(commands.uuid_kill(channel_uuid, cause)))
        except Exception as exc:    # greenlet boundary; the watchdog retries on its next pass
            self.killed_by_watchdog.discard(call_uuid)
            log.error("uuid_kill %s %s failed: %s", channel_uuid, cause, exc,
                      extra={"call_uuid": call_uuid})

    def _sweep(self) -> None:
        # A leg whose hangup event was lost is closed by the next resync, which sees it
        # missing from `show channels`; one that is there is up (an attended transfer
        # leaves carrier legs talking without their A-leg). The sweep only steps in for a
        # leg no resync could tell about: two periodic resyncs (and half a minute) late.
        grace_us = int((2 * self.config["esl.resync_interval"] + 30) * 1_000_000)
        for effect in self.registry.sweep(self.switch_now_us(), grace_us):
            self._act(effect)
        live = self.registry.live_by_tenant_and_carrier()
        metrics.LIVE_CALLS.clear()
        for (tenant, carrier), count in live.items():
            metrics.LIVE_CALLS.labels(tenant, carrier).set(count)

    def _resync_again(self) -> None:
        try:
            self._periodic_resync()
        except Exception as exc:    # greenlet boundary; the periodic resync comes anyway
            log.warning("follow-up resync failed (the periodic one will retry): %s", exc)

    def _periodic_resync(self) -> None:
        connection = self.esl.connection
        if connection is not None and self.resynced:
            self.on_esl_connected(connection)

    def _persist_health(self) -> None:
        dirty = self.health.take_dirty()
        if not dirty:
            return
        try:
            with green.connect(self.db_url, connect_timeout=5) as conn:
                for name, state in dirty.items():
                    store.save_carrier_health(conn, name, state.score, state.consecutive_failures,
                                              state.disabled_at)
        except psycopg.Error as exc:
            metrics.DB_ERRORS.labels("health").inc()
            log.warning("could not persist carrier health (kept in memory): %s", exc)
            for name, state in dirty.items():
                self.health._dirty.add(name)

    def _probe_backends(self) -> None:
        """switchd_database_up and switchd_redis_up: a query and a PING, off the event path."""
        try:
            if self._probe_conn is None or self._probe_conn.closed:
                self._probe_conn = green.connect(self.db_url, connect_timeout=3, autocommit=True)
            self._probe_conn.execute("SELECT 1")
            up = True
        except psycopg.Error as exc:
            if self._probe_conn is not None:
                self._probe_conn.close()
            self._probe_conn = None
            if self.database_up is not False:
                log.warning("database probe failed: %s", str(exc).strip().splitlines()[0])
            up = False
        self.database_up = up
        primary = getattr(self.caps.backend, "primary", None)    # Redis behind the policy
        if primary is not None:
            self.redis_up = primary.healthy()

    def metrics_state(self) -> dict:
        """The snapshot metrics.LIVE turns into gauges at scrape time."""
        return live_metrics_state(self.world, self.decks.decks, self.deck_reloader.imported_at,
                                  self.health, _now(), self.database_up, self.redis_up)

    # --- reloads -------------------------------------------------------------------------------
    def _reload_world(self) -> None:
        with green.connect(self.db_url, connect_timeout=5) as conn:
            world = store.load_world(conn)
        self.world = world
        for tenant in world.tenants.values():
            self.spend.budget_changed(tenant.name, tenant.monthly_budget)
        log.info("world reloaded: %d tenants, %d carriers, %d DIDs", len(world.tenants),
                 len(world.carriers), len(world.dids))

    def reload(self) -> None:
        """SIGHUP: business data and decks again; a failed reload keeps the old ones."""
        try:
            self._reload_world()
            self.deck_reloader.reload_all()
        except Exception as exc:    # keep serving with what we had
            log.error("reload failed, keeping the previous data: %s", exc)

    # --- views --------------------------------------------------------------------------------
    def readiness(self) -> dict:
        if self.starting:
            return {"startup": self.starting}
        problems = {}
        if not self.esl.connected:
            problems["esl"] = f"not connected to FreeSWITCH ({self.esl.last_error or 'connecting'})"
        elif not self.resynced:
            problems["esl"] = "connected, resynchronising live calls"
        stats = self.writer.stats()
        if not stats.get("can_store", True):
            problems["cdr"] = stats.get("last_error") or "CDRs can be neither stored nor spooled"
        routable = self._provisioned_gateways()
        if routable and routable <= self.health.down_gateways:
            # Every outbound call would be refused (503, no carrier): not ready, so a
            # balancer stops sending calls here and monitoring sees why (docs/esl.md).
            problems["gateways"] = (f"all {len(routable)} provisioned gateway(s) down: "
                                    + ", ".join(sorted(routable)))
        caps = self.caps.status()
        if caps.get("mode") == "refusing" or caps.get("admitting") is False:
            problems["caps"] = f"caps backend unavailable ({caps.get('last_error') or 'down'}); refusing new calls"
        return problems

    def _ensure_partitions(self) -> None:
        with green.connect(self.db_url, autocommit=True) as conn:
            partitions.ensure_ahead(conn)

    def _api_housekeeping(self) -> None:
        with green.connect(self.db_url, autocommit=True) as conn:
            webhooks.housekeeping(conn)
        self.attempt_store.housekeeping(_now().date())

    def hangup(self, call_uuid: str) -> bool:
        """POST /v1/calls/{uuid}/hangup: uuid_kill the call's A-leg (FreeSWITCH then ends
        the rest); False when FreeSWITCH refused."""
        try:
            reply = self.esl.api(_bare(commands.uuid_kill(call_uuid, "NORMAL_CLEARING")))
        except Exception as exc:    # request boundary: the API answers 502
            log.warning("hangup %s failed: %s", call_uuid, exc, extra={"call_uuid": call_uuid})
            return False
        return not str(getattr(reply, "body", reply)).startswith("-ERR")

    def reset_health(self, carrier: str) -> None:
        """POST /v1/carriers/{name}/health/reset: full score, enabled now (persisted by the
        health persistence job like any other change)."""
        from dialplan.health import CarrierHealth
        self.health._set(carrier, CarrierHealth(), _now())
        log.warning("carrier %s health reset by the API", carrier, extra={"carrier": carrier})

    def live_calls(self, tenant: str | None = None) -> list[dict]:
        """The live calls as the API shows them; one tenant's when `tenant` is given."""
        if not self.routing:
            return []
        now_us = self.switch_now_us()          # the calls' times are the switch's
        return [self._live_row(call, now_us) for call in self.registry.live_calls(tenant)]

    def live_call(self, call_uuid: str) -> dict | None:
        """One live call by its UUID (not a former one), without copying the others."""
        if not self.routing:
            return None
        call = self.registry.get(call_uuid)
        if call is None or call.call_uuid != call_uuid:
            return None
        return self._live_row(call, self.switch_now_us())

    @staticmethod
    def _live_row(call, now_us: int) -> dict:
        return {"call_uuid": call.call_uuid, "tenant": call.tenant,
                "direction": call.direction, "legs": len(call.legs),
                "gateway": call.gateway, "carrier": call.carrier, "state": call.state,
                "age_s": (now_us - call.started_us) / 1e6 if call.started_us else 0,
                "max_duration": call.max_duration}


def live_metrics_state(world, decks, imported_at, health, now, database_up=None,
                       redis_up=None) -> dict:
    """What metrics.LiveState reads: decks, gateways, usable carriers, backends."""
    gateways, carriers = {}, {}
    for carrier in world.carriers.values():
        carriers[carrier.name] = health.usable(carrier, now)
        for gateway in carrier.gateways:
            gateways[gateway.name] = (carrier.name, gateway.enabled
                                      and gateway.name not in health.down_gateways)
    return {"database_up": database_up, "redis_up": redis_up, "gateways": gateways,
            "carriers": carriers,
            "decks": {name: (len(deck), imported_at[name].timestamp()
                             if imported_at.get(name) else None)
                      for name, deck in decks.items()}}


def _channel_to_kill(call) -> str:
    """The call's A-leg, or (an originate whose answered attempt is not the call UUID's
    leg) the answered leg still up."""
    a = call.a_leg
    if a is not None and a.state != "complete":
        return call.call_uuid
    live = [l for l in call.legs if l.answered_us and l.state != "complete"]
    return live[0].uuid if live else call.call_uuid


def _bare(api_line: str) -> str:
    """The command builders return whole `api ...` lines; the connection adds `api` itself."""
    return api_line.removeprefix("api ")


def _routing_settings(cfg: Config) -> dict:
    return {"tenant_from": cfg["routing.tenant_from"],
            "tenant_variable": cfg["routing.tenant_variable"],
            "max_routes": cfg["routing.max_routes"],
            "failover": cfg.values.get("failover") or FailoverTable(),
            "health_cooldown": cfg["routing.health_cooldown"],
            "emergency_gateway": cfg["routing.emergency_gateway"],
            "extension_mode": cfg["routing.extension_mode"],
            "extension_context": cfg["routing.extension_context"],
            "sip_uri_profile": cfg["routing.sip_uri_profile"]}


def _health_from_rows(rows: dict) -> dict:
    from dialplan.health import CarrierHealth
    return {name: CarrierHealth(score=score, consecutive_failures=fails, disabled_at=disabled)
            for name, (score, fails, disabled) in rows.items()}
