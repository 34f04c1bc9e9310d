"""Every Prometheus metric switchd exposes, declared once (STYLE.md §11).

Labels are bounded: tenant and carrier names come from provisioning, never from the wire;
no phone number or call UUID is ever a label.
"""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)


def _counter(name, doc, labels=()):
    return Counter(name, doc, labels, registry=REGISTRY)


def _gauge(name, doc, labels=()):
    return Gauge(name, doc, labels, registry=REGISTRY)


# --- calls -------------------------------------------------------------------------------
CALLS = _counter("switchd_calls_total", "Finished calls by direction, result and hangup cause",
                 ("direction", "result", "cause"))
LIVE_CALLS = _gauge("switchd_live_calls", "Calls currently up, by tenant and carrier",
                    ("tenant", "carrier"))
BILLED_SECONDS = _counter("switchd_billed_seconds_total", "Billed seconds by tenant and carrier",
                          ("tenant", "carrier"))
COST = _counter("switchd_cost_total", "Rated cost (currency units) by tenant and carrier",
                ("tenant", "carrier"))

# --- routing -----------------------------------------------------------------------------
ROUTING_SECONDS = Histogram(
    "switchd_routing_decision_seconds", "Time to take one routing decision",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
    registry=REGISTRY)
DIALPLAN_REQUESTS = _counter("switchd_dialplan_requests_total",
                             "mod_xml_curl dialplan lookups by outcome", ("outcome",))
UNKNOWN_TENANT = _counter("switchd_unknown_tenant_total",
                          "Dialplan lookups refused because no tenant matched")
CARRIER_HEALTH = _gauge("switchd_carrier_health", "Carrier health score 0..100", ("carrier",))
CARRIER_STATE = _gauge("switchd_carrier_up",
                       "1 when the carrier is usable, 0 when disabled or down", ("carrier",))
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
BUDGET_USAGE = _gauge("switchd_budget_usage_ratio", "Month-to-date spend / budget", ("tenant",))

# --- ESL ---------------------------------------------------------------------------------
ESL_CONNECTED = _gauge("switchd_esl_connected", "1 while the ESL connection is up and authed")
ESL_RECONNECTS = _counter("switchd_esl_reconnects_total", "ESL (re)connection attempts",
                          ("result",))
ESL_EVENTS = _counter("switchd_esl_events_total", "ESL events received", ("event",))
ESL_HANDLER_ERRORS = _counter("switchd_esl_handler_errors_total",
                              "Exceptions raised while handling an ESL event", ("event",))
ESL_EVENTS_DROPPED = _counter("switchd_esl_events_dropped_total",
                               "Events dropped because the handler queue was full, or unparseable",
                               ("reason",))
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
