"""Every Prometheus metric switchd exposes, declared once (STYLE.md §11).

Labels are bounded: tenant and carrier names come from provisioning, never from the wire;
no phone number or call UUID is ever a label.

Most metrics are moved by the code that sees the event. The state of the world at scrape
time (rate decks, gateways, whether a carrier can be used, database and Redis reachable)
is read when Prometheus asks, by `LIVE` from a snapshot the daemon provides, so it can
never drift from what routing sees.
"""
import platform
import time
from bisect import bisect_left
from importlib import metadata
from typing import Callable

from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Info,
                               PlatformCollector, ProcessCollector, disable_created_metrics)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# A `_created` series per counter and histogram doubles the series count and no dashboard
# or alert of ours reads it.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU, memory, open fds against the limit), python_info, python_gc_*.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)


def _counter(name, doc, labels=()):
    return Counter(name, doc, labels, registry=REGISTRY)


def _gauge(name, doc, labels=()):
    return Gauge(name, doc, labels, registry=REGISTRY)


class Tally:
    """A counter with one label for the hottest path (several increments per call):
    counted in plain ints, exposed as a counter when scraped, with the name, label and
    type a prometheus_client Counter would have. An increment is a dict update without
    a lock: every increment and every scrape runs in the daemon's one thread, and a
    greenlet switch never happens inside either."""

    def __init__(self, name: str, doc: str, label: str):
        self.name, self.doc, self.label = name.removesuffix("_total"), doc, label
        self.counts: dict[str, int] = {}
        REGISTRY.register(self)

    def inc(self, value: str, amount: int = 1) -> None:
        self.counts[value] = self.counts.get(value, 0) + amount

    def describe(self):
        return [CounterMetricFamily(self.name, self.doc, labels=[self.label])]

    def collect(self):
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        return [family]


class Cell:
    """One labelled value of a Family: what `labels(...)` returns."""
    __slots__ = ("value", "counter")

    def __init__(self, counter: bool):
        self.value = 0.0
        self.counter = counter

    def inc(self, amount: float = 1) -> None:
        if amount < 0 and self.counter:
            raise ValueError("a counter only goes up")
        self.value += amount

    def set(self, value: float) -> None:
        if self.counter:
            raise ValueError("a counter cannot be set")
        self.value = float(value)


class Family:
    """A labelled counter or gauge moved on the per-call paths (a finished call, a carrier's
    health, a tenant's budget): the Tally pattern with any number of labels and
    prometheus_client's `labels(...).inc()` / `.set()` shape. Values are plain floats
    (no lock: updates and scrapes all run in the daemon's one thread, and no greenlet
    switch happens inside either); a scrape exposes them with the name, labels and type
    a prometheus_client metric would have."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], kind: str = "counter",
                 registry: CollectorRegistry = REGISTRY):
        self.kind = kind
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.doc, self.labelnames = doc, tuple(labels)
        self._cells: dict[tuple, Cell] = {}        # label values as given → cell
        self._exposed: dict[tuple[str, ...], Cell] = {}   # label values as strings
        registry.register(self)

    def labels(self, *values, **named) -> Cell:
        if named:
            values = tuple(named[label] for label in self.labelnames)
        cell = self._cells.get(values)
        if cell is None:
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
            key = tuple(str(v) for v in values)
            cell = self._exposed.get(key)
            if cell is None:
                cell = self._exposed[key] = Cell(self.kind == "counter")
            self._cells[values] = cell
        return cell

    def _family(self):
        factory = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return factory(self.name, self.doc, labels=list(self.labelnames))

    def describe(self):
        return [self._family()]

    def collect(self):
        family = self._family()
        for values, cell in self._exposed.items():      # first labelled first, as theirs
            family.add_metric(list(values), cell.value)
        return [family]


class LockFreeHistogram:
    """A histogram without labels observed once a call (the routing decision's time): plain
    counts per bucket, exposed as prometheus_client's Histogram would be (same name,
    buckets and samples). No lock, for the reason Family gives."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...],
                 registry: CollectorRegistry = REGISTRY):
        self.name, self.doc = name, doc
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)     # the last: above every bound (+Inf)
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def describe(self):
        return [HistogramMetricFamily(self.name, self.doc)]

    def collect(self):
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            total += count
            buckets.append((floatToGoString(bound), total))
        return [HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)]


# --- calls -------------------------------------------------------------------------------
CALLS = Family("switchd_calls_total", "Finished calls by direction, result and hangup cause",
               ("direction", "result", "cause"))
LIVE_CALLS = _gauge("switchd_live_calls", "Calls currently up, by tenant and carrier",
                    ("tenant", "carrier"))
BILLED_SECONDS = Family("switchd_billed_seconds_total",
                        "Billed seconds by tenant and carrier (each carrier leg's own)",
                        ("tenant", "carrier"))
COST = Family("switchd_cost_total",
              "Rated cost (currency units) by tenant and carrier (each carrier leg's own)",
              ("tenant", "carrier"))
ORIGINATE_ATTEMPTS = _counter("switchd_originate_attempts_total",
                              "Originate attempts by outcome (docs/originate.md)", ("outcome",))
ORIGINATE_RETRIES = _counter("switchd_originate_retries_scheduled_total",
                             "Retries of originated calls scheduled, by the outcome retried",
                             ("outcome",))
SWITCH_REFUSED_LEGS = _counter(
    "switchd_switch_refused_legs_total",
    "Carrier legs our own FreeSWITCH failed before any SIP answer (DESTINATION_OUT_OF_ORDER: "
    "sessions-per-second, max-sessions, RTP ports), placed once more on the same carrier",
    ("path",))

# --- routing -----------------------------------------------------------------------------
ROUTING_SECONDS = LockFreeHistogram(
    "switchd_routing_decision_seconds", "Time to take one routing decision",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
DIALPLAN_REQUESTS = Family("switchd_dialplan_requests_total",
                           "mod_xml_curl dialplan lookups by outcome", ("outcome",))
UNKNOWN_TENANT = _counter("switchd_unknown_tenant_total",
                          "Dialplan lookups refused because no tenant matched")
CARRIER_HEALTH = Family("switchd_carrier_health", "Carrier health score 0..100", ("carrier",),
                        "gauge")
# switchd_carrier_up: computed at scrape time by LIVE (below), from health and gateways.
FAILOVERS = _counter("switchd_failovers_total", "Legs that failed over to the next gateway",
                     ("carrier",))

# --- policing ----------------------------------------------------------------------------
CAP_REJECTIONS = _counter("switchd_cap_rejections_total", "Calls refused at a cap, by scope",
                          ("scope",))
CAPS_BACKEND_UP = _gauge("switchd_caps_backend_up",
                         "1 when the caps backend (Redis or local) answers", ("backend",))
CAPS_FAIL_OPEN = _gauge("switchd_caps_fail_open",
                        "1 while Redis is unreachable and local caps stand in for it")
WATCHDOG_KILLS = _counter("switchd_watchdog_kills_total",
                          "Answered calls killed by switchd for outliving their max duration")
BUDGET_USAGE = Family("switchd_budget_usage_ratio", "Month-to-date spend / budget", ("tenant",),
                      "gauge")
# Spend guards (switchd/accounting/spend_watch.py, docs/reports.md).
TENANT_HOUR_SPEND = _gauge("switchd_tenant_hour_spend",
                           "Cost of the tenant's calls that ended in this clock hour", ("tenant",))
TENANT_HOUR_BASELINE = _gauge("switchd_tenant_hour_spend_baseline",
                              "The tenant's mean spend per hour over the baseline window",
                              ("tenant",))
TENANT_MONTH_FORECAST = _gauge("switchd_tenant_month_forecast",
                               "Month-to-date spend extrapolated to the end of the month",
                               ("tenant",))
SPEND_ALERTS = _counter("switchd_spend_alerts_total",
                        "Spend alerts raised (kind: spike, forecast), once per period",
                        ("tenant", "kind"))
BUDGET_RESERVED = Family("switchd_budget_reserved_ratio",
                         "Month budget reserved by live calls / budget", ("tenant",), "gauge")
BUDGET_ALERTS = _counter("switchd_budget_alerts_total",
                         "Budget thresholds (75, 90, 100 % of the month) crossed, each once "
                         "per tenant and month", ("tenant", "threshold"))
BUDGET_EXTENSIONS = _counter("switchd_budget_extensions_total",
                             "Live calls whose budget-cut limit was moved on the switch when "
                             "budget freed up, by result (extended, failed)", ("result",))

# --- ESL ---------------------------------------------------------------------------------
ESL_CONNECTED = _gauge("switchd_esl_connected", "1 while the ESL connection is up and authed")
ESL_RECONNECTS = _counter("switchd_esl_reconnects_total", "ESL (re)connection attempts",
                          ("result",))
ESL_EVENTS = Tally("switchd_esl_events_total", "ESL events received", "event")   # 9 a call
ESL_HANDLER_ERRORS = _counter("switchd_esl_handler_errors_total",
                              "Exceptions raised while handling an ESL event", ("event",))
ESL_EVENTS_DROPPED = _counter("switchd_esl_events_dropped_total",
                               "Events dropped because the handler queue was full, or unparseable",
                               ("reason",))
RESYNCS = _counter("switchd_resyncs_total",
                   "Reconciliations of live calls with the switch's `show channels` applied")
RESYNC_CLOSED_LEGS = _counter(
    "switchd_resync_closed_legs_total",
    "Legs a resync closed because the switch no longer had them and their hangup event was "
    "never seen (billed provisionally until the switch's CDR settles them)")
ESL_PROTOCOL_ERRORS = _counter("switchd_esl_protocol_errors_total",
                               "Malformed frames that forced a reconnect")
ESL_COMMAND_ERRORS = _counter("switchd_esl_command_errors_total",
                              "ESL commands that failed or timed out", ("reason",))

# --- storage -----------------------------------------------------------------------------
CDR_QUEUE_DEPTH = _gauge("switchd_cdr_queue_depth", "Records waiting to be written")
CDRS_WRITTEN = _counter("switchd_cdrs_written_total", "CDR rows committed to PostgreSQL")
SPOOL_RECORDS = _gauge("switchd_spool_records", "Records waiting in the local durable spool")
DB_ERRORS = _counter("switchd_db_errors_total", "PostgreSQL errors", ("operation",))
REDIS_ERRORS = _counter("switchd_redis_errors_total", "Redis errors", ("operation",))

# --- application webhooks (switchd/api/webhooks.py) ---
WEBHOOK_DELIVERIES = _counter("switchd_webhook_deliveries_total",
                              "Webhook delivery attempts by outcome (delivered, retry, gave_up).",
                              ["outcome"])
WEBHOOK_EVENTS_DROPPED = _counter("switchd_webhook_events_dropped_total",
                                  "Call events dropped because the outbox queue was full.")
API_REQUESTS = _counter("switchd_api_requests_total",
                        "REST /v1 requests by HTTP status class.", ["status"])

# --- campaigns (switchd/campaigns/dialer.py) ---
CAMPAIGN_CONTACTS = _counter("switchd_campaign_contacts_total",
                             "Campaign contacts this daemon settled, by outcome", ("outcome",))

# --- billing truth (FreeSWITCH's CDRs, docs/storage.md) ----------------------------------
SWITCH_CDRS = _counter("switchd_switch_cdrs_total",
                       "FreeSWITCH CDR deliveries (POST /fs/cdr, cdr import) by outcome: "
                       "stored, spooled, bad_request, unauthorized, failed", ("outcome",))
CDR_IMPORT_REFUSED_FILES = _gauge("switchd_cdr_import_refused_files",
                                  "Files in cdr.import_dir the daemon could not read as a CDR, "
                                  "and directories under it it may not list (left there for "
                                  "an operator; each named in the log)")
UNRATED_LEGS = _counter("switchd_unrated_legs_total",
                        "Carrier legs that could not be rated (no usable tariff, or a figure "
                        "of the switch's unreadable; flagged, cost empty), by source "
                        "(esl, switch)", ("source",))
PROVISIONAL_LEGS = _counter("switchd_provisional_legs_total",
                            "Legs closed without their hangup event and billed provisionally "
                            "until the switch's CDR settles them")
ESL_EVENTS_OVERFLOWED = _counter("switchd_esl_events_overflowed_total",
                                 "Terminal events (hangups, job results) kept in the unbounded "
                                 "overflow because the event queue was full")

# --- HTTP server -------------------------------------------------------------------------
HTTP_CONNECTIONS = _gauge("switchd_http_connections", "Open HTTP connections")
HTTP_MAX_CONNECTIONS = _gauge("switchd_http_max_connections",
                              "http.max_connections: open connections beyond it are refused")
HTTP_CONNECTIONS_REFUSED = _counter("switchd_http_connections_refused_total",
                                    "Connections refused with 503 at http.max_connections")
HTTP_REQUESTS_SHED = _counter(
    "switchd_http_requests_shed_total",
    "Requests refused with an immediate 503: at their kind's in-flight bound (in_flight), "
    "or dialplan lookups while ESL events are esl.max_event_lag behind (events_behind)",
    ("endpoint", "reason"))
ESL_EVENT_BACKLOG = _gauge("switchd_esl_event_backlog_seconds",
                           "How far ESL events are behind: the oldest queued channel event's "
                           "wait, or how long the reader has not drained the socket")
HTTP_IDLE_TIMEOUTS = _counter("switchd_http_idle_timeouts_total",
                              "Connections closed after http.idle_timeout without a request")
HTTP_CLIENT_ERRORS = _counter(
    "switchd_http_client_errors_total",
    "Requests that failed on the client's side before the application ran, by reason "
    "(aborted, read_timeout, bad_request, too_large, length_required)", ("reason",))

# --- build and live state ----------------------------------------------------------------
def _version() -> str:
    import switchd
    found = getattr(switchd, "__version__", None)
    if found:
        return found
    try:
        return metadata.version("switchd")
    except metadata.PackageNotFoundError:
        return "unknown"          # run from a source tree that was never installed


BUILD_INFO = Info("switchd_build", "switchd's version and the Python running it",
                  registry=REGISTRY)
BUILD_INFO.info({"version": _version(), "python": platform.python_version()})


class LiveState:
    """Metrics computed at scrape time from `source()`, a snapshot dict of the daemon:

    database_up: bool | None        None: not known yet (nothing exported)
    redis_up: bool | None           None: no Redis configured (nothing exported)
    decks: {carrier: (prefixes, imported_at epoch seconds | None)}
    gateways: {gateway: (carrier, up)}
    carriers: {carrier: usable}     enabled, not disabled by health, a gateway up
    """

    FAMILIES = (
        ("switchd_database_up", "1 when PostgreSQL answered the last probe (every 5 s)", ()),
        ("switchd_redis_up", "1 when Redis answered the last probe (absent without redis.url)", ()),
        ("switchd_deck_prefixes", "Distinct prefixes in the carrier's live rate deck",
         ("carrier",)),
        ("switchd_deck_age_seconds", "Seconds since the carrier's live rate deck was imported",
         ("carrier",)),
        ("switchd_gateway_up", "1 unless FreeSWITCH reported the gateway down",
         ("carrier", "gateway")),
        ("switchd_carrier_up", "1 when the carrier is usable: enabled, not disabled by its "
         "health, and at least one of its gateways up", ("carrier",)),
    )

    def __init__(self):
        self.source: Callable[[], dict] | None = None
        self.clock = time.time

    def describe(self):
        return [GaugeMetricFamily(name, doc, labels=list(labels) or None)
                for name, doc, labels in self.FAMILIES]

    def collect(self):
        state = self.source() if self.source is not None else {}
        families = {name: GaugeMetricFamily(name, doc, labels=list(labels) or None)
                    for name, doc, labels in self.FAMILIES}
        for key in ("database_up", "redis_up"):
            if state.get(key) is not None:
                families[f"switchd_{key}"].add_metric([], 1 if state[key] else 0)
        now = self.clock()
        for carrier, (prefixes, imported_at) in sorted(state.get("decks", {}).items()):
            families["switchd_deck_prefixes"].add_metric([carrier], prefixes)
            if imported_at is not None:
                families["switchd_deck_age_seconds"].add_metric([carrier], max(now - imported_at, 0))
        for gateway, (carrier, up) in sorted(state.get("gateways", {}).items()):
            families["switchd_gateway_up"].add_metric([carrier, gateway], 1 if up else 0)
        for carrier, usable in sorted(state.get("carriers", {}).items()):
            families["switchd_carrier_up"].add_metric([carrier], 1 if usable else 0)
        return list(families.values())


LIVE = LiveState()
REGISTRY.register(LIVE)
