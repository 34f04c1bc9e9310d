"""Ports and the one-file FreeSWITCH configuration of the real-switch suite.

Every port the suite binds (ESL, the SIP profile, sipp's SIP, media and control ports, the
daemon's HTTP port) is taken from SWITCHD_TEST_PORT_BASE upward, each checked free on
127.0.0.1, and FreeSWITCH's RTP range is a block above all of them, so no port of ours can
ever be handed to a call leg.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from xml.sax.saxutils import quoteattr

# 40000-40999 is clear of the helpers' ranges (41000-49999); override per run.
DEFAULT_PORT_BASE = 40000
PORT_SPAN = 1000           # every port of one run lies in [base, base + PORT_SPAN)
RTP_OFFSET = 600           # RTP range: base+600 .. base+999 (200 even ports: 200 legs)
CALLER_SLOTS = 8
CARRIERS = ("gw_a", "gw_b", "gw_c")
PROFILE = "callers"
# The directory user a DID reaches in routing.extension_mode = user (tests/realswitch/test_dids.py).
DIRECTORY_USER = "2000"
GATEWAY_PING_S = 5         # mod_sofia ignores a ping below 5 s


def port_base() -> int:
    raw = os.environ.get("SWITCHD_TEST_PORT_BASE", "")
    try:
        base = int(raw) if raw else DEFAULT_PORT_BASE
    except ValueError:
        raise ValueError(f"SWITCHD_TEST_PORT_BASE: not a port number: {raw!r}") from None
    if not 1024 <= base <= 65535 - PORT_SPAN:
        raise ValueError(f"SWITCHD_TEST_PORT_BASE: {base} leaves no room for {PORT_SPAN} ports")
    return base


def port_free(port: int, udp: bool = True, tcp: bool = True, ip: str = "127.0.0.1") -> bool:
    kinds = ([socket.SOCK_STREAM] if tcp else []) + ([socket.SOCK_DGRAM] if udp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


@dataclass
class SippPorts:
    sip: int
    media: int        # sipp binds media and media+2
    control: int


@dataclass
class PortPlan:
    """All ports of one run. `allocate()` scans upward from the base, skipping busy ports."""
    base: int
    esl: int = 0
    sip: int = 0
    http: int = 0
    carriers: dict[str, SippPorts] = field(default_factory=dict)
    callers: list[SippPorts] = field(default_factory=list)
    rtp_start: int = 0
    rtp_end: int = 0

    @classmethod
    def allocate(cls, base: int | None = None) -> "PortPlan":
        base = port_base() if base is None else base
        plan = cls(base=base)
        cursor = [base]
        limit = base + RTP_OFFSET

        def take(width: int = 1, check=(0,)) -> int:
            while cursor[0] + width <= limit:
                start = cursor[0]
                cursor[0] += width
                if all(port_free(start + off) for off in check):
                    return start
            raise RuntimeError(f"no free ports left in {base}-{limit - 1} on 127.0.0.1 "
                               f"(SWITCHD_TEST_PORT_BASE={base})")

        plan.esl, plan.sip, plan.http = take(), take(), take()
        for name in CARRIERS:
            plan.carriers[name] = SippPorts(sip=take(), media=0, control=0)
        plan.callers = [SippPorts(sip=take(), media=0, control=0) for _ in range(CALLER_SLOTS)]
        for ports in [*plan.carriers.values(), *plan.callers]:
            ports.control = take()
        for ports in [*plan.carriers.values(), *plan.callers]:
            ports.media = take(4, check=(0, 1, 2, 3))
        plan.rtp_start, plan.rtp_end = base + RTP_OFFSET, base + PORT_SPAN - 1
        return plan

    def all_bound(self) -> list[int]:
        ports = [self.esl, self.sip, self.http]
        for p in [*self.carriers.values(), *self.callers]:
            ports += [p.sip, p.control, p.media, p.media + 2]
        return ports


def _p(name: str, value) -> str:
    return f"<param name={quoteattr(name)} value={quoteattr(str(value))}/>"


def render(plan: PortPlan, *, esl_password: str, dialplan_url: str, cdr_url: str | None = None,
           loglevel: str = "info", sessions_per_second: int = 100,
           profile_params: dict[str, str] | None = None) -> str:
    """The whole FreeSWITCH configuration (one freeswitch.xml). `profile_params`: settings
    a test adds to the sofia profile (e.g. disable-transfer)."""
    modules = ["mod_logfile", "mod_event_socket", "mod_xml_curl", "mod_commands", "mod_dptools",
               "mod_dialplan_xml", "mod_sofia"]
    if cdr_url:
        modules.append("mod_json_cdr")
    gateways = "\n".join(f"""
            <gateway name={quoteattr(name)}>
              {_p("proxy", f"127.0.0.1:{ports.sip}")}
              {_p("register", "false")}
              {_p("username", "switchd-test")}
              {_p("password", "unused")}
              {_p("caller-id-in-from", "true")}
              {_p("ping", GATEWAY_PING_S)}
            </gateway>""" for name, ports in plan.carriers.items())
    json_cdr = f"""
    <configuration name="json_cdr.conf" description="CDRs posted to switchd">
      <settings>
        {_p("url", cdr_url)}
        {_p("log-b-leg", "true")}
        {_p("prefix-a-leg", "false")}
        {_p("encode-values", "false")}
        {_p("retries", 3)}
        {_p("delay", 1)}
        {_p("disable-100-continue", "true")}
        {_p("log-dir", "")}
      </settings>
    </configuration>""" if cdr_url else ""
    return f"""<?xml version="1.0"?>
<document type="freeswitch/xml">
  <section name="configuration">
    <configuration name="switch.conf">
      <settings>
        {_p("max-sessions", 1000)}
        {_p("sessions-per-second", sessions_per_second)}
        {_p("loglevel", loglevel)}
        {_p("colorize-console", "false")}
        {_p("dump-cores", "no")}
        {_p("rtp-start-port", plan.rtp_start)}
        {_p("rtp-end-port", plan.rtp_end)}
      </settings>
    </configuration>
    <configuration name="modules.conf">
      <modules>
        {"".join(f'<load module="{m}"/>' for m in modules)}
      </modules>
    </configuration>
    <configuration name="logfile.conf">
      <settings>{_p("rotate-on-hup", "true")}</settings>
      <profiles><profile name="default">
        <settings>{_p("rollover", 0)}{_p("uuid", "true")}</settings>
        <mappings><map name="all" value="debug,info,notice,warning,err,crit,alert"/></mappings>
      </profile></profiles>
    </configuration>
    <configuration name="event_socket.conf">
      <settings>
        {_p("listen-ip", "127.0.0.1")}
        {_p("listen-port", plan.esl)}
        {_p("password", esl_password)}
        {_p("nat-map", "false")}
      </settings>
    </configuration>
    <configuration name="xml_curl.conf">
      <bindings>
        <binding name="switchd">
          <param name="gateway-url" value={quoteattr(dialplan_url)} bindings="dialplan"/>
          {_p("method", "POST")}
          {_p("timeout", 3)}
          {_p("disable-100-continue", "true")}
        </binding>
      </bindings>
    </configuration>{json_cdr}
    <configuration name="sofia.conf">
      <global_settings>{_p("log-level", 0)}</global_settings>
      <profiles>
        <profile name="{PROFILE}">
          <settings>
            {_p("sip-ip", "127.0.0.1")}
            {_p("sip-port", plan.sip)}
            {_p("rtp-ip", "127.0.0.1")}
            {_p("ext-sip-ip", "127.0.0.1")}
            {_p("ext-rtp-ip", "127.0.0.1")}
            {_p("context", "public")}
            {_p("dialplan", "XML")}
            {_p("auth-calls", "false")}
            {_p("disable-register", "true")}
            {_p("manage-presence", "false")}
            {_p("inbound-codec-prefs", "PCMU,PCMA")}
            {_p("outbound-codec-prefs", "PCMU,PCMA")}
            {_p("rtp-timer-name", "soft")}
            {_p("enable-timer", "false")}
            {_p("auto-restart", "false")}
            {_p("user-agent-string", "switchd-realswitch")}{"".join(
                _p(k, v) for k, v in (profile_params or {}).items())}
          </settings>
          <gateways>{gateways}
          </gateways>
        </profile>
      </profiles>
    </configuration>
  </section>
  <!-- Used only when switchd gives no answer (down, timeout, HTTP error, "not found"):
       refuse, never route. -->
  <section name="dialplan">
    <context name="public">
      <extension name="no_route_from_switchd">
        <condition field="destination_number" expression="^.*$">
          <action application="respond" data="503 No Route From Routing Daemon"/>
        </condition>
      </extension>
    </context>
    <!-- The operator's own extensions, for DIDs that switchd transfers here
         (routing.extension_context = extensions): 2xxx answers and waits for the BYE. -->
    <context name="extensions">
      <extension name="local_extension">
        <condition field="destination_number" expression="^(2[0-9]{{3}})$">
          <action application="set" data="route_source=static_extension"/>
          <action application="answer"/>
          <action application="park"/>
        </condition>
      </extension>
    </context>
    <context name="default">
      <extension name="no_route_from_switchd">
        <condition field="destination_number" expression="^.*$">
          <action application="respond" data="503 No Route From Routing Daemon"/>
        </condition>
      </extension>
    </context>
  </section>
  <!-- One user for DIDs bridged to a directory user (routing.extension_mode = user): no
       registration, its dial-string names gw_c's sipp as the user's device. -->
  <section name="directory">
    <domain name="127.0.0.1">
      <user id="{DIRECTORY_USER}">
        <params>
          {_p("dial-string", f"sofia/{PROFILE}/sip:{DIRECTORY_USER}@127.0.0.1:{plan.carriers['gw_c'].sip}")}
        </params>
      </user>
    </domain>
  </section>
</document>
"""
