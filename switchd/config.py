"""Configuration: defaults < TOML file < SWITCHD_* environment, validated, frozen.

Every setting is declared once in SETTINGS with its type, default, check and a line of
documentation (gunicorn's pattern without the metaclass). `load_config` validates field by
field, then across fields, and names the key (and the file) in every error.
docs/configuration.md is the operator's reference for the same table.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from dialplan import validate

DEFAULT_CONFIG_PATH = Path("/etc/switchd/switchd.toml")
SHIPPED_ESL_PASSWORD = "ClueCon"


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent; the message names the key."""


@dataclass(frozen=True)
class Setting:
    section: str | None     # TOML table, None for top-level keys
    key: str
    kind: type | str        # str, int, float, bool, or 'choice:a|b'
    default: Any
    doc: str
    secret: bool = False
    check: Callable[[Any], str | None] | None = None   # returns an error text or None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key

    @property
    def env(self) -> str:
        parts = [self.section, self.key] if self.section else [self.key]
        return "SWITCHD_" + "_".join(p.upper() for p in parts)


def _positive(value):
    return None if value > 0 else "must be greater than 0"


def _port(value):
    return None if 0 <= value <= 65535 else "must be a TCP port (0-65535)"


def _pg_conninfo(value):
    """libpq takes a URL or `key=value` pairs (host=/run/pg dbname=switchd)."""
    if value in (None, "") or "=" in value.split("://", 1)[0]:
        return None
    return _url("postgresql", "postgres")(value)


def _url(*schemes):
    def check(value):
        if value in (None, ""):
            return None
        scheme = urlsplit(value).scheme
        return None if scheme in schemes else f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}"
    return check


def _rule(check):
    """A setting that reaches the switch (a gateway in a dial string, a channel variable):
    the rule of dialplan/validate.py the renderer enforces; empty means unset."""
    def run(value):
        if value in (None, ""):
            return None
        try:
            check(value)
        except validate.Invalid as exc:
            return str(exc)
        return None
    return run


SETTINGS: tuple[Setting, ...] = (
    Setting(None, "data_dir", str, "~/.local/share/switchd",
            "Embedded PostgreSQL, the CDR spool and other local state live here."),
    Setting("database", "url", str, None,
            "PostgreSQL URL or libpq conninfo. Unset: an embedded PostgreSQL in data_dir.",
            secret=True, check=_pg_conninfo),
    Setting("redis", "url", str, None,
            "Redis URL for cluster-wide caps and budget reservations. Unset: in-process (single node only).",
            secret=True, check=_url("redis", "rediss", "unix")),
    Setting("redis", "on_failure", "choice:fail_closed|fail_open", "fail_closed",
            "Redis unreachable: fail_closed refuses new calls; fail_open uses this node's local caps "
            "and the budget this node knows of."),
    Setting("esl", "host", str, "127.0.0.1", "FreeSWITCH event socket host."),
    Setting("esl", "port", int, 8021, "FreeSWITCH event socket port.", check=_port),
    Setting("esl", "password", str, SHIPPED_ESL_PASSWORD,
            "Event socket password (FreeSWITCH ships 'ClueCon': change it).", secret=True),
    Setting("esl", "command_timeout", float, 5.0,
            "Seconds an api command may take before it fails.", check=_positive),
    Setting("esl", "heartbeat_timeout", float, 60.0,
            "Seconds without any frame before the connection is deemed dead and recycled "
            "(FreeSWITCH sends HEARTBEAT every 20 s).", check=_positive),
    Setting("esl", "backoff_max", float, 30.0,
            "Cap of the jittered exponential reconnect backoff, seconds.", check=_positive),
    Setting("esl", "resync_interval", float, 60.0,
            "Seconds between reconciliations of live calls with the switch's `show channels` "
            "(besides the one after every reconnect): frees slots of calls whose hangup was "
            "never seen.", check=_positive),
    Setting("esl", "max_event_lag", float, 0.5,
            "Seconds ESL events may fall behind (the oldest queued channel event has waited "
            "that long, or the reader has not drained the socket for that long) before "
            "switchd refuses new calls' dialplan lookups with an immediate 503 (counted in "
            "switchd_http_requests_shed_total{reason=\"events_behind\"}; the static "
            "fallback refuses the call), so that past capacity the CPU goes to the hangups, "
            "cap releases and CDRs of the calls already up. Lookups are answered again as "
            "soon as the events have caught up.", check=_positive),
    Setting("http", "host", str, "127.0.0.1", "Address the HTTP server binds."),
    Setting("http", "port", int, 8088, "Port of the dialplan endpoint, API and /metrics.",
            check=_port),
    Setting("http", "api_token", str, "",
            "Bearer token required on /v1 (originate, live calls). Empty: no token, so keep "
            "http.host on loopback.", secret=True),
    Setting("http", "read_timeout", float, 10.0,
            "Seconds a request may take to arrive in full (request line, headers, body) once "
            "its first byte came; a slower client gets 408 and is disconnected.",
            check=_positive),
    Setting("http", "idle_timeout", float, 60.0,
            "Seconds a connection may wait for its next request (a new connection, or "
            "keep-alive between requests) before switchd closes it.", check=_positive),
    Setting("http", "max_connections", int, 1000,
            "Open HTTP connections at most; beyond it a new connection gets an immediate 503 "
            "(counted in switchd_http_connections_refused_total). Keep it below the open-file "
            "limit (LimitNOFILE in the systemd unit).", check=_positive),
    Setting("http", "max_in_flight", int, 64,
            "Requests of one kind (dialplan lookups, API requests, the rest) handled at once "
            "at most; beyond it a request gets an immediate 503 (counted in "
            "switchd_http_requests_shed_total; mod_xml_curl then falls back to the static "
            "dialplan), so an HTTP flood leaves the event reader and the CDR writer their "
            "turn, and one kind never takes another's. /healthz, /readyz and /metrics are "
            "never refused.", check=_positive),
    Setting("http", "max_cdr_in_flight", int, 512,
            "FreeSWITCH CDR posts (POST /fs/cdr) handled at once at most; beyond it an "
            "immediate 503 and mod_json_cdr retries, then writes its error directory. Higher "
            "than http.max_in_flight: a post mostly waits for the group commit that makes it "
            "durable, which costs no CPU, and each one shed is a file to import.",
            check=_positive),
    Setting("webhooks", "backoff_base", float, 2.0,
            "Seconds before the second try of a webhook delivery; doubles each try.",
            check=_positive),
    Setting("webhooks", "backoff_max", float, 600.0,
            "Longest wait between two tries of one webhook delivery, seconds.", check=_positive),
    Setting("webhooks", "give_up_after", float, 259200.0,
            "Seconds after an event after which its delivery is given up (default 3 days); "
            "a replay re-sends it.", check=_positive),
    Setting("webhooks", "timeout", float, 10.0,
            "Seconds one webhook POST may take.", check=_positive),
    Setting("dialer", "lease_seconds", float, 15.0,
            "Seconds a daemon's claim on a campaign contact lasts unless renewed; after a "
            "daemon dies, its claims are settled (never re-dialled) once this has passed.",
            check=_positive),
    Setting("routing", "tenant_from", "choice:accountcode|domain|variable", "accountcode",
            "How a dialplan lookup names its tenant: variable_accountcode, the SIP domain, "
            "or the channel variable in routing.tenant_variable."),
    Setting("routing", "tenant_variable", str, "switchd_tenant",
            "Channel variable holding the tenant when tenant_from = 'variable'.",
            check=_rule(validate.read_variable_name)),
    Setting("routing", "max_routes", int, 5,
            "Carrier attempts per call: the first choice plus alternates (at most 5).",
            check=lambda v: None if 1 <= v <= 5 else "must be between 1 and 5"),
    Setting("routing", "health_cooldown", float, 60.0,
            "Seconds a disabled carrier rests before one probe call (half-open).",
            check=_positive),
    Setting("routing", "emergency_gateway", str, "",
            "Gateway for emergency numbers. Empty: emergency calls are refused with a clear cause.",
            check=_rule(validate.name)),
    Setting("routing", "extension_mode", "choice:transfer|user", "transfer",
            "How a DID reaches an extension: 'transfer' to it in routing.extension_context "
            "(FreeSWITCH's own dialplan for that context runs it; switchd answers the lookup "
            "that transfer makes with 'not found'), or 'user': bridge user/EXT@<tenant domain>."),
    Setting("routing", "extension_context", str, "default",
            "Dialplan context that holds the extensions DIDs are transferred to.",
            check=lambda v: None if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}", v)
            else "must be a dialplan context name (letters, digits, _ . -)"),
    Setting("routing", "sip_uri_profile", str, "",
            "Sofia profile for DIDs that point at a SIP URI and name no profile of their own. "
            "Empty: the profile the call arrived on.",
            check=lambda v: None if v == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", v)
            else "must be a sofia profile name (letters, digits, _ . -)"),
    Setting("rating", "precision", int, 6, "Decimal places costs are rounded to, once, half-up.",
            check=lambda v: None if 0 <= v <= 10 else "must be between 0 and 10"),
    Setting("cdr", "credentials", str, "",
            "user:password FreeSWITCH's mod_json_cdr sends (its `cred`, Basic auth) to POST "
            "/fs/cdr. Empty: no check, so keep http.host on loopback.", secret=True,
            check=lambda v: None if not v or ":" in v else "must look like user:password"),
    Setting("cdr", "commit_timeout", float, 5.0,
            "Seconds a FreeSWITCH CDR post may wait for PostgreSQL to commit it (a lock, an "
            "overloaded server) before it is fsync'd to the spool instead and acknowledged. "
            "mod_json_cdr has no timeout of its own: it holds the channel, counted against "
            "FreeSWITCH's max-sessions, until the post is answered. 0 = no limit.",
            check=lambda v: None if v >= 0 else "must be 0 or more"),
    Setting("cdr", "encoded_values", bool, False,
            "Whether json_cdr.conf has encode-values=true (variable values URL-encoded); "
            "the shipped config sets it false."),
    Setting("cdr", "gather_ms", int, 100,
            "Milliseconds the CDR writer, once it holds a record, waits for more to join its "
            "batch (sooner when a full batch is queued or at stop): fewer, larger batches, "
            "less CPU per CDR; a CDR reaches PostgreSQL at most this much later. 0 = no wait.",
            check=lambda v: None if 0 <= v <= 1000 else "must be between 0 and 1000"),
    Setting("cdr", "import_dir", str, "",
            "mod_json_cdr's err-log-dir, where switchd runs on the switch's host and may read "
            "and move its files: the daemon imports the CDRs FreeSWITCH wrote there (every "
            "post failed) as `switchd cdr import` does, each stored file moved to imported/. "
            "Empty: off (import by hand)."),
    Setting("cdr", "import_interval", float, 30.0,
            "Seconds between the daemon's looks into cdr.import_dir.",
            check=_positive),
    Setting("cdr", "post_gather_ms", int, 20,
            "Milliseconds a FreeSWITCH CDR post that would be committed alone waits for a "
            "second one to share its transaction (a bridged call's two legs post together); "
            "the wait ends when one arrives. FreeSWITCH holds the leg's hangup-complete "
            "event until the post is answered, so a lone leg's end is seen at most this much "
            "later. 0 = no wait.",
            check=lambda v: None if 0 <= v <= 1000 else "must be between 0 and 1000"),
    Setting("caps", "global_max_calls", int, 0,
            "Most concurrent calls in the global scope: this switch with in-process caps, "
            "every daemon sharing the Redis otherwise. 0 = no global cap.",
            check=lambda v: None if v >= 0 else "must be 0 or more"),
    Setting("caps", "fallback_share", float, 1.0,
            "With redis.on_failure = fail_open: the share of each cap this node may use on its "
            "own while Redis is down (set 1/N for N daemons, so the cluster never exceeds a cap).",
            check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
    Setting("caps", "lease_seconds", float, 60.0,
            "A slot's lease; live calls are refreshed at a third of it, a crashed daemon's expire.",
            check=_positive),
    Setting("watchdog", "grace_seconds", float, 5.0,
            "An answered call outliving its max duration by more than this is killed.",
            check=_positive),
    Setting("gc", "full_interval", float, 300.0,
            "Seconds between the daemon's full garbage collections. Python's own, which "
            "stops lookups and events for tens of ms every few seconds under load, is off "
            "in the daemon; this one frees what reference counting cannot (docs/operations.md).",
            check=_positive),
    Setting("spend_watch", "interval", float, 60.0,
            "Seconds between the daemon's spend checks (hourly spike, month-end forecast; "
            "docs/reports.md). 0 turns them off.",
            check=lambda v: None if v >= 0 else "must be 0 or more"),
    Setting("spend_watch", "spike_factor", float, 4.0,
            "A tenant's spend in this clock hour is a spike above this many times its "
            "baseline (its mean spend per hour) ...", check=_positive),
    Setting("spend_watch", "spike_floor", str, "20",
            "... and from this amount on (currency units, an exact decimal in quotes), so "
            "small tenants do not alert on cents.", check=_rule(validate.MONEY)),
    Setting("spend_watch", "baseline_hours", int, 168,
            "Complete hours before this one whose mean spend per hour is the baseline.",
            check=lambda v: None if 1 <= v <= 8784 else "must be between 1 and 8784"),
    Setting("spend_watch", "forecast_min_hours", float, 48.0,
            "Hours of the month that must pass before the month-end forecast may alert.",
            check=lambda v: None if v >= 0 else "must be 0 or more"),
    Setting("log", "level", "choice:debug|info|warning|error", "info", "Log level."),
    Setting("log", "format", "choice:text|json", "text", "text, or one JSON object per line."),
)


@dataclass(frozen=True)
class Config:
    values: dict                 # dotted key -> value
    sources: dict                # dotted key -> 'default' | file path | env var
    file: Path | None = None

    def __getitem__(self, dotted: str):
        return self.values[dotted]

    @property
    def data_dir(self) -> Path:
        return Path(self.values["data_dir"]).expanduser()

    def with_overrides(self, **dotted_values) -> "Config":
        """A copy with some values replaced (CLI flags, the demo's private settings)."""
        values = dict(self.values)
        sources = dict(self.sources)
        for key, value in dotted_values.items():
            dotted = key.replace("__", ".")
            values[dotted] = value
            sources[dotted] = "override"
        return Config(values, sources, self.file)

    def warnings(self) -> list[str]:
        notes = []
        if self.values["esl.password"] == SHIPPED_ESL_PASSWORD:
            notes.append("esl.password is FreeSWITCH's shipped default 'ClueCon'; change it on "
                         "both sides (event_socket.conf.xml and SWITCHD_ESL_PASSWORD)")
        if not self.values["redis.url"]:
            notes.append("redis.url is unset: caps are kept in this process (single node only)")
        return notes

    def masked(self) -> dict:
        out = {}
        for setting in SETTINGS:
            value = self.values[setting.dotted]
            if setting.secret and value:
                value = mask_secret(value)
            out[setting.dotted] = value
        return out


def mask_secret(value: str) -> str:
    """Hide passwords; keep the rest of a URL so operators can still read host and port."""
    if "://" not in value and "=" in value:      # libpq key=value conninfo
        return " ".join("password=***" if pair.startswith("password=") else pair
                        for pair in value.split())
    parts = urlsplit(value)
    if parts.scheme and parts.netloc:
        if parts.password:
            host = parts.netloc.rsplit("@", 1)[1]
            return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
        return value
    return "***"


def _coerce(setting: Setting, raw: Any, origin: str) -> Any:
    where = f"{origin}: {setting.dotted}"
    kind = setting.kind
    from_env = isinstance(raw, str) and origin.startswith("SWITCHD_")
    if raw is None:
        return None
    if isinstance(kind, str) and kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split("|")
        if raw not in choices:
            raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(choices)}")
        return raw
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and raw.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return raw.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: {raw!r} is not true/false")
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: {raw!r} is not an integer")
        if isinstance(raw, int):
            return raw
        if from_env:
            try:
                return int(raw)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {raw!r} is not an integer")
    if kind is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if from_env:
            try:
                return float(raw)
            except ValueError:
                pass
        raise ConfigError(f"{where}: {raw!r} is not a number")
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: {raw!r} is not a string")
    return raw


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _flatten_file(doc: dict, path: Path) -> dict:
    known = {s.dotted for s in SETTINGS}
    sections = {s.section for s in SETTINGS if s.section}
    flat = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            if key not in sections:
                raise ConfigError(f"{path}: unknown section [{key}]")
            for sub, subvalue in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in known:
                    raise ConfigError(f"{path}: unknown key {dotted}")
                flat[dotted] = subvalue
        else:
            if key not in known:
                raise ConfigError(f"{path}: unknown key {key}")
            flat[key] = value
    return flat


def config_path_from_env(environ: dict) -> Path | None:
    explicit = environ.get("SWITCHD_CONFIG")
    if explicit:
        return Path(explicit)
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None


def load_config(path: Path | str | None = None, environ: dict | None = None) -> Config:
    """Build the effective config. `path` beats SWITCHD_CONFIG; environment beats the file."""
    environ = dict(os.environ if environ is None else environ)
    file_path = Path(path) if path else config_path_from_env(environ)
    doc = _read_toml(file_path) if file_path else {}
    table = _failover_table(doc.pop("failover", {}), file_path)
    from_file = _flatten_file(doc, file_path) if file_path else {}

    values, sources = {}, {}
    known_env = {s.env for s in SETTINGS} | {"SWITCHD_CONFIG"}
    for setting in SETTINGS:
        value, source = setting.default, "default"
        if setting.dotted in from_file:
            value = _coerce(setting, from_file[setting.dotted], str(file_path))
            source = str(file_path)
        if setting.env in environ:
            raw = environ[setting.env]
            value = None if raw == "" and setting.default is None else _coerce(setting, raw, setting.env)
            source = setting.env
        if value is not None and setting.check:
            problem = setting.check(value)
            if problem:
                raise ConfigError(f"{source}: {setting.dotted} = {value!r}: {problem}")
        values[setting.dotted] = value
        sources[setting.dotted] = source
    # Misspelt environment variables would otherwise be ignored silently.
    for name in environ:
        if name.startswith("SWITCHD_") and name not in known_env and not name.startswith("SWITCHD_TEST_") \
                and name not in ("SWITCHD_SQL_DIR",):
            raise ConfigError(f"{name}: unknown setting (see `switchd check-config --help`)")
    values["failover"] = table
    sources["failover"] = str(file_path) if table.overrides else "default"
    config = Config(values, sources, file_path)
    _check_across(config)
    return config


def _failover_table(raw, path):
    """`[failover]`: SIP code / class / condition -> "next" | "stop" over the documented
    defaults (dialplan/failover.py, docs/routing.md); one-line errors naming the key."""
    from dialplan.failover import TableError, parse_table
    try:
        return parse_table(raw)
    except TableError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check_across(config: Config) -> None:
    if config["routing.tenant_from"] == "variable" and not config["routing.tenant_variable"]:
        raise ConfigError("routing.tenant_variable: must be set when routing.tenant_from = 'variable'")
    if config["esl.heartbeat_timeout"] <= 20:
        raise ConfigError("esl.heartbeat_timeout: must exceed FreeSWITCH's 20 s HEARTBEAT interval")
