"""The FreeSWITCH simulator: ESL server + mod_xml_curl poster + call player, seeded.

    sim = Simulator(seed=1, dialplan_url="http://127.0.0.1:8088/fs/dialplan", time_scale=1000)
    host, port = sim.start()
    call = sim.place_call("442079460000", accountcode="acme")
    call.wait(5)

Same seed and same sequence of place_call/bgapi → same UUIDs, hold times and outcomes.
See docs/simulator.md.
"""
from __future__ import annotations

import logging
import random
import time

import gevent
import gevent.pool

from switchd.sim import api, causes, wire, xmlcurl
from switchd.sim.clock import SimClock
from switchd.sim.json_cdr import CdrPoster, CdrSink
from switchd.sim.legs import SimLeg
from switchd.sim.model import GatewayBehaviour, SimCall, seeded_uuid
from switchd.sim.player import CallOver, Player
from switchd.sim.server import EslServer

log = logging.getLogger(__name__)


class Simulator:
    def __init__(self, password: str = "ClueCon", seed: int = 0, dialplan_url: str | None = None,
                 time_scale: float = 1.0, heartbeat_interval: float | None = 20.0,
                 gateways: dict[str, GatewayBehaviour] | None = None,
                 default_gateway: GatewayBehaviour = GatewayBehaviour(),
                 hold_range: tuple[float, float] = (10.0, 300.0), dialplan_timeout: float = 5.0,
                 host: str = "127.0.0.1", port: int = 0, hostname: str = "vm",
                 start_us: int | None = None, sessions_per_second: int | None = 30,
                 static_dialplan=None, cdr: CdrSink | None = None,
                 listed_after_hangup_s: float = 0.0) -> None:
        self.seed = seed
        # FreeSWITCH's static XML dialplan, read when mod_xml_curl gets no usable answer:
        # None = the public refusal + local users 1xxx in `default`; a sequence of
        # (context, expression[, actions]) extensions added to the public refusal; or a
        # whole document as XML text.
        if isinstance(static_dialplan, str):
            self.static_dialplan = xmlcurl.parse_answer(static_dialplan)
        elif static_dialplan is None:
            self.static_dialplan = xmlcurl.static_dialplan()
        else:
            self.static_dialplan = xmlcurl.static_dialplan(static_dialplan)
        self.dialplan_url = dialplan_url
        self.dialplan_timeout = dialplan_timeout
        self.heartbeat_interval = heartbeat_interval     # real seconds; None = off
        self.gateways = dict(gateways or {})
        self.default_gateway = default_gateway
        self.hold_range = hold_range
        self.hostname = hostname
        self.clock = SimClock(time_scale, start_us)
        self.server = EslServer(self, password, host, port)
        self.player = Player(self)
        self.calls: list[SimCall] = []
        self.lookups: list[tuple[str, str, str]] = []    # (call uuid, route_source, reason)
        self.api_log: list[tuple[int, str]] = []    # (simulated µs, `api` line) as received
        self._rng = random.Random(f"{seed}:core")
        self._boot = 0
        self._new_core()
        self._pool = gevent.pool.Group()
        self._legs: dict[str, tuple[SimLeg, SimCall]] = {}
        # Legs whose CDR post is under way (mod_json_cdr): uuid -> whether the call has let
        # go of the leg meanwhile (unregister), so it leaves the channels once reported.
        self._reporting: dict[str, bool] = {}
        # FreeSWITCH writes `show channels` behind the calls: a channel it destroyed can stay
        # listed a moment, its HANGUP_COMPLETE already sent. Simulated seconds; the legs
        # still listed: uuid -> (leg, listed until µs).
        self.listed_after_hangup_s = listed_after_hangup_s
        self._unlisting: dict[str, tuple[SimLeg, int]] = {}
        self.sessions_since_startup = 0
        # switch.conf.xml `sessions-per-second` (default 30); None = no limit.
        self.sessions_per_second = sessions_per_second
        self._sps_second = -1
        self._sps_left = 0
        self._refuse_next = 0       # refuse_sessions(): that many refused, whatever the time,
        self._refuse_after = 0      # once this many more have started
        self.throttled = 0
        self.peak = 0
        self._started_mono = time.monotonic()
        self._heartbeat: gevent.Greenlet | None = None
        # mod_json_cdr: None = not loaded (no CDR posts), else where every leg's CDR goes.
        self.cdr_poster: CdrPoster | None = None
        if cdr is not None:
            self.set_cdr_sink(cdr)

    def set_cdr_sink(self, sink: CdrSink) -> None:
        """Load mod_json_cdr posting to `sink` (set once switchd's HTTP port is known)."""
        self.cdr_poster = CdrPoster(sink, self.hostname)

    # -- lifecycle --------------------------------------------------------------------
    def _new_core(self) -> None:
        self.core_uuid = seeded_uuid(random.Random(f"{self.seed}:boot:{self._boot}"))
        self._seq = 0

    def start(self) -> tuple[str, int]:
        address = self.server.start()
        self._started_mono = time.monotonic()
        if self.heartbeat_interval:
            self._heartbeat = gevent.spawn(self._heartbeat_loop)
        return address

    @property
    def address(self) -> tuple[str, int]:
        return self.server.host, self.server.port

    def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.kill()
            self._heartbeat = None
        self.server.stop()
        self.server.drop_all()
        self._pool.kill()
        self._lose_live_calls()
        if self.cdr_poster is not None:
            self.cdr_poster.kill()

    def restart(self, down_seconds: float = 0.0, live_calls: list[dict] | None = None,
                graceful: bool = False) -> None:
        """FreeSWITCH restarts: connections close, live calls vanish without events (as
        after a crash), a new Core-UUID and Event-Sequence start, then `live_calls` are
        there (already bridged, their CREATE never sent) for reconciliation tests.
        Each dict takes place_call's keyword arguments plus `gateway`."""
        self.server.stop()
        self.server.drop_all(wire.DISCONNECT_SHUTDOWN if graceful else None)
        self._pool.kill()
        self._lose_live_calls()
        if self.cdr_poster is not None and not graceful:
            self.cdr_poster.kill()          # a crash takes the CDRs still being posted
        if down_seconds:
            gevent.sleep(down_seconds)
        self._boot += 1
        self._new_core()
        self._started_mono = time.monotonic()
        for spec in live_calls or []:
            self.inject_live_call(**spec)
        self.server.start()

    def _lose_live_calls(self) -> None:
        for leg, call in list(self._legs.values()):
            if not call.done.is_set():
                call.result = "lost"
                call.done.set()
        self._legs.clear()
        self._reporting.clear()
        self._unlisting.clear()

    # -- ESL plumbing -----------------------------------------------------------------
    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def emit(self, headers: list[tuple[str, str]], body: str | None = None) -> None:
        """Stamp Event-Sequence, serialize once and hand the frame to every subscriber.

        With mod_json_cdr loaded, a leg's CHANNEL_HANGUP_COMPLETE waits for its CDR post,
        as in FreeSWITCH: the post runs in the channel's reporting state and the event is
        fired after it (switch_core_state_machine.c), once the post is answered, written
        to the error directory or given up. A switch that dies meanwhile sends neither."""
        name = next(v for k, v in headers if k == "Event-Name")
        if name == "CHANNEL_HANGUP_COMPLETE" and self.cdr_poster is not None:
            uuid = next(v for k, v in headers if k == "Unique-ID")
            self._reporting[uuid] = False
            self.cdr_poster.submit(headers, then=lambda: self._reported(uuid, headers, body))
            return
        self._broadcast(name, headers, body)

    def _reported(self, uuid: str, headers: list[tuple[str, str]], body: str | None) -> None:
        """The leg's CDR post is settled: its HANGUP_COMPLETE goes out, and a leg the call
        has already let go of leaves `show channels` only now (FreeSWITCH destroys the
        channel after its reporting state). Not after a restart: the event went down with
        the switch's connections."""
        if uuid not in self._reporting:
            return
        self._broadcast("CHANNEL_HANGUP_COMPLETE", headers, body)
        if self._reporting.pop(uuid):
            self._destroy(uuid)

    def _broadcast(self, name: str, headers: list[tuple[str, str]], body: str | None) -> None:
        seq = str(self.next_seq())      # stamped when fired, as FreeSWITCH does
        headers = [(k, seq if k == "Event-Sequence" else v) for k, v in headers]
        subclass = next((v for k, v in headers if k == "Event-Subclass"), None)
        frame = wire.event_frame(wire.serialize_event(headers, body))
        self.server.broadcast_event(name, subclass, frame)

    def _base(self, key: str, ts_us: int | None = None) -> list[tuple[str, str]]:
        over = {"Core-UUID": self.core_uuid, "FreeSWITCH-Hostname": self.hostname,
                "FreeSWITCH-Switchname": self.hostname,
                **wire.date_headers(ts_us or self.clock.now_us())}
        return [(k, over.get(k, v)) for k, v in wire.templates()["events"][key]]

    def _heartbeat_loop(self) -> None:
        while True:
            gevent.sleep(self.heartbeat_interval)
            up_ms = int(self.uptime() * 1000)
            over = {"Session-Count": str(len(self.live_legs())), "Uptime-msec": str(up_ms),
                    "Session-Since-Startup": str(self.sessions_since_startup),
                    "Session-Peak-Max": str(self.peak), "Session-Peak-FiveMin": str(self.peak)}
            self.emit([(k, over.get(k, v)) for k, v in self._base("HEARTBEAT")])

    def emit_gateway_state(self, name: str, state: str = "NOREG", ping_status: str = "DOWN",
                           status: int | str = 503, phrase: str | None = None) -> None:
        from switchd.sim.legs import PHRASE
        over = {"Gateway": name, "State": state, "Ping-Status": ping_status, "Status": str(status),
                "Phrase": phrase if phrase is not None else PHRASE.get(int(status), "OK")}
        self.emit([(k, over.get(k, v)) for k, v in self._base("gateway_state")])

    # Gateways as `sofia xmlstatus gateway` reports them ({name: 'UP'|'DOWN'}); empty: the
    # command answers an empty <gateways/> list.
    gateway_status: dict = {}

    gateways_deleted = False

    def set_gateway_status(self, name: str, status: str = "UP") -> None:
        self.gateway_status = {**self.gateway_status, name: status}
        self.gateways_deleted = False

    def delete_gateways(self) -> None:
        """What FreeSWITCH does at shutdown: one sofia::gateway_delete per gateway (headers
        as captured: profile-name, Gateway), and they are gone from xmlstatus."""
        for name in list(self.gateway_status):
            headers = [(k, v) for k, v in self._base("gateway_state")
                       if k not in ("Gateway", "State", "Ping-Status", "Status", "Phrase",
                                    "Register-Network-IP", "Register-Network-Port")]
            over = {"Event-Subclass": "sofia::gateway_delete",
                    "Event-Calling-Function": "sofia_reg_check_gateway",
                    "Event-Calling-Line-Number": "343"}
            headers = [(k, over.get(k, v)) for k, v in headers] + [("profile-name", "external"), ("Gateway", name)]
            self.emit(headers)
        self.gateway_status = {}
        self.gateways_deleted = True

    def new_job_uuid(self) -> str:
        return seeded_uuid(self._rng)

    def api(self, line: str) -> str:
        self.api_log.append((self.clock.now_us(), line.strip()))
        if line.startswith("originate "):
            return self._originate(line[len("originate "):])
        return api.execute(self, line)

    def bgapi(self, line: str, job_uuid: str) -> None:
        def run() -> None:
            body = self.api(line)
            cmd, _, arg = line.strip().partition(" ")
            extra = [("Job-UUID", job_uuid), ("Job-Command", cmd)]
            if arg:
                extra.append(("Job-Command-Arg", arg))
            headers = [h for h in self._base("BACKGROUND_JOB")
                       if h[0] not in ("Job-UUID", "Job-Command", "Job-Command-Arg")] + extra
            self.emit(headers, body)
        self.spawn(run)

    def spawn(self, fn, *args) -> gevent.Greenlet:
        return self._pool.spawn(fn, *args)

    # -- calls ------------------------------------------------------------------------
    def _new_call(self, kind: str, destination: str, caller: str, hold_seconds: float | None,
                  uuid: str | None = None) -> SimCall:
        index = len(self.calls)
        rng = random.Random(f"{self.seed}:call:{index}")
        hold = hold_seconds if hold_seconds is not None else round(rng.uniform(*self.hold_range), 3)
        call = SimCall(index=index, kind=kind, uuid=uuid or seeded_uuid(rng),
                       destination=destination, caller=caller, hold_seconds=hold, rng=rng)
        self.calls.append(call)
        return call

    def place_call(self, destination: str, caller: str = "1000", accountcode: str | None = None,
                   domain: str | None = None, hold_seconds: float | None = None,
                   variables: dict[str, str] | None = None,
                   caller_name: str | None = None) -> SimCall:
        """An inbound call arrives; returns at once, the call plays in its own greenlet."""
        call = self._new_call("inbound", destination, caller, hold_seconds)
        call.caller_name = caller_name
        call_vars: list[tuple[str, str]] = []
        overrides: dict[str, str] = {}
        if caller_name is not None:
            for field in ("Caller-Caller-ID-Name", "Caller-Orig-Caller-ID-Name",
                          "variable_sip_from_display"):
                overrides[field] = caller_name
        if accountcode is not None:
            call_vars.append(("accountcode", accountcode))
        if domain is not None:
            call_vars.append(("domain_name", domain))
            for field in ("sip_from_host", "sip_to_host", "sip_req_host"):
                overrides[f"variable_{field}"] = domain
            overrides["variable_sip_req_uri"] = overrides["variable_sip_to_uri"] = f"{destination}@{domain}"
            overrides["variable_sip_from_uri"] = f"{caller}@{domain}"
        for k, v in (variables or {}).items():
            call_vars.append((k, v))
            overrides[f"variable_{k}"] = v
        self.spawn(self._play_inbound, call, call_vars, overrides)
        return call

    def _play_inbound(self, call: SimCall, call_vars, overrides) -> None:
        try:
            self.player.run_inbound(call, call_vars, overrides)
        except Exception:                    # a greenlet boundary: keep the simulator up
            log.exception("sim: call %s crashed", call.uuid)
            call.result = call.result or "error"
        finally:
            call.done.set()

    def _originate(self, arg: str) -> str:
        from switchd.sim.xmlcurl import parse_dial_string
        global_vars, legs = parse_dial_string(arg.rpartition(" &")[0] or arg)
        first = legs[0].var("origination_uuid") if legs else None
        uuid = first or dict(global_vars).get("origination_uuid")
        if uuid and uuid in self._legs:
            uuid = None           # the first leg fails "Duplicate UUID!"; the call keeps its own
        call = self._new_call("originate", legs[0].number if legs else "", "0000000000", None, uuid)
        return self.player.run_originate(call, arg)

    def refuse_sessions(self, count: int, skip: int = 0) -> None:
        """The `count` new sessions after the next `skip` are refused as the throttle
        refuses them (a test's way to hit it at a known moment: the per-second budget
        depends on the clock). skip=1 lets a caller's own session start and refuses its
        bridge leg."""
        self._refuse_next, self._refuse_after = count, skip

    def take_session(self, t_us: int) -> bool:
        """switch_core_session_request_uuid()'s throttle: `--sps <= 0` refuses, and the
        budget is refilled to sessions-per-second every (simulated) second, so at most
        sessions_per_second - 1 sessions start in one second (FreeSWITCH's own off-by-one)."""
        if self._refuse_after > 0:
            self._refuse_after -= 1
        elif self._refuse_next > 0:
            self._refuse_next -= 1
            self.throttled += 1
            return False
        if self.sessions_per_second is None:
            return True
        second = t_us // 1_000_000
        if second != self._sps_second:
            self._sps_second, self._sps_left = second, self.sessions_per_second
        self._sps_left -= 1
        if self._sps_left <= 0:
            self.throttled += 1
            return False
        return True

    def inject_live_call(self, destination: str, gateway: str = "carrier_a", caller: str = "1000",
                         hold_seconds: float | None = None, accountcode: str | None = None,
                         variables: dict[str, str] | None = None, **_ignored) -> SimCall:
        """A bridged call that exists without us having seen its start (after a restart)."""
        call = self._new_call("inbound", destination, caller, hold_seconds)
        t = self.clock.now_us()
        vars_ = ([("accountcode", accountcode)] if accountcode else []) + list((variables or {}).items())
        a = SimLeg(call.uuid, "a", destination, caller, call.uuid, vars=vars_, created_us=t)
        b = SimLeg(seeded_uuid(call.rng), "b", destination, caller, call.uuid, gateway=gateway,
                   vars=list((variables or {}).items()), created_us=t)
        for leg in (a, b):
            leg.progress_us = leg.progress_media_us = leg.answered_us = leg.bridged_us = t
        b.sip_status = 200
        call.a_leg, call.legs, call.route_source = a, [b], "injected"
        from switchd.sim.xmlcurl import RouteAnswer
        call.route = RouteAnswer(set_vars=list((variables or {}).items()))
        call.set_vars = list((variables or {}).items())
        self.register(a, call)
        self.register(b, call)
        self.spawn(self._play_injected, call, a, b, t)
        return call

    def _play_injected(self, call: SimCall, a: SimLeg, b: SimLeg, t: int) -> None:
        try:
            if self.player._talk(call, a, b, t, call.route, call.route.set_vars):
                # the carrier leg was killed and nothing says hangup_after_bridge: the
                # caller has no dialplan left here, so it hangs up too
                try:
                    self.player._end_alone(call, a, self.clock.now_us(), "NORMAL_CLEARING")
                except CallOver:            # the A-leg has hung up: nothing more to play
                    pass
        finally:
            call.done.set()

    def register(self, leg: SimLeg, call: SimCall) -> None:
        self._legs[leg.uuid] = (leg, call)
        self.sessions_since_startup += 1
        self.peak = max(self.peak, len(self._legs))

    def unregister(self, leg: SimLeg) -> None:
        if leg.uuid in self._reporting:
            self._reporting[leg.uuid] = True        # gone once its CDR post is settled
            return
        self._destroy(leg.uuid)

    def _destroy(self, uuid: str) -> None:
        entry = self._legs.pop(uuid, None)
        if entry is not None and self.listed_after_hangup_s > 0:
            until = self.clock.now_us() + int(self.listed_after_hangup_s * 1_000_000)
            self._unlisting[uuid] = (entry[0], until)

    def catch_up_listing(self) -> None:
        """`show channels` catches up at once: destroyed channels are no longer listed."""
        self._unlisting.clear()

    def listed_legs(self) -> list[SimLeg]:
        """The legs `show channels` lists: the live ones, and those destroyed less than
        listed_after_hangup_s ago."""
        now = self.clock.now_us()
        for uuid in [u for u, (_, until) in self._unlisting.items() if until <= now]:
            del self._unlisting[uuid]
        return self.live_legs() + [leg for leg, _ in self._unlisting.values()
                                   if leg.uuid not in self._legs]

    def leg(self, uuid: str) -> SimLeg | None:
        entry = self._legs.get(uuid)
        return entry[0] if entry else None

    def call_of(self, uuid: str) -> SimCall | None:
        entry = self._legs.get(uuid)
        return entry[1] if entry else None

    def live_legs(self) -> list[SimLeg]:
        return [leg for leg, _ in self._legs.values()]

    def live_channels(self) -> list[dict[str, str]]:
        """Rows as `show channels as json` returns them."""
        return [api._row(self, leg) for leg in self.listed_legs()]

    def kill_call(self, uuid: str, cause: str = "NORMAL_CLEARING") -> bool:
        """uuid_kill: an unknown cause name is NORMAL_CLEARING (switch_channel_str2cause)."""
        call = self.call_of(uuid)
        if call is None:
            return False
        call.kill = (uuid, causes.str2cause(cause))
        call.poke()
        return True

    def cancel_call(self, uuid: str) -> bool:
        """The caller gives up before the answer: its CANCEL. As FreeSWITCH 1.10.12 does
        (tests/realswitch/test_caller_gives_up.py): the caller is answered 487, a ringing
        carrier leg is CANCELled, both end ORIGINATOR_CANCEL. False when the call is not
        known or was answered (a caller ends an answered call with BYE: kill_call)."""
        call = self.call_of(uuid)
        if call is None or call.a_leg is None or call.a_leg.answered_us:
            return False
        call.caller_cancelled = True
        call.kill = (call.a_leg.uuid, "ORIGINATOR_CANCEL")
        call.poke()
        return True

    def sched_hangup(self, uuid: str, when: str, cause: str = "ALLOTTED_TIMEOUT") -> bool:
        call = self.call_of(uuid)
        if call is None:
            return False
        cause = causes.str2cause(cause)
        at = causes.sched_when_us(when, self.clock.now_us())
        if at <= self.clock.now_us():
            # `sec == 0` in mod_commands: hang up now, whatever ignore_sched_hangup says.
            call.kill = (uuid, cause)
            call.poke()
        elif not call.ignore_sched:
            # The scheduler keeps every task: a later sched_hangup does not move an earlier
            # one (sched_del first does), so the earliest pending hangup fires.
            if call.sched_at_us is None or at < call.sched_at_us:
                call.sched_at_us, call.sched_cause = at, cause
            call.poke()
        return True

    def sched_del(self, group: str) -> int:
        """`sched_del <uuid>`: the call's pending scheduled hangup is dropped; returns the
        number of tasks deleted (FreeSWITCH answers `+OK Deleted: N`)."""
        call = self.call_of(group)
        if call is None or call.sched_at_us is None:
            return 0
        call.sched_at_us = None
        call.poke()
        return 1

    def gateway_behaviour(self, name: str | None) -> GatewayBehaviour:
        return self.gateways.get(name or "", self.default_gateway)

    def set_gateway(self, name: str, behaviour: GatewayBehaviour) -> None:
        self.gateways[name] = behaviour

    def add_static_extension(self, context: str, expression: str,
                             actions=xmlcurl.LOCAL_USER_ACTIONS, name: str | None = None,
                             field: str = "destination_number") -> None:
        """Append an extension to `context` of the static dialplan (after what it holds, as
        in an XML file): a `not found` lookup in that context whose `field` matches
        `expression` runs `actions` [(application, data)]; default: the local user answers."""
        xmlcurl.add_extension(self.static_dialplan, context, expression, actions, name, field)

    def log_lookup(self, call: SimCall, source: str, reason: str) -> None:
        self.lookups.append((call.uuid, source, reason))

    def uptime(self) -> float:
        return time.monotonic() - self._started_mono

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every call placed so far has ended; False if `timeout` seconds (in
        all, not per call) pass first. It returns as soon as the last call ends."""
        with gevent.Timeout(timeout, False):
            for call in list(self.calls):
                call.done.wait()
            return True
        return False

    # -- faults -----------------------------------------------------------------------
    def wait_for_listeners(self, count: int = 1, timeout: float = 5.0,
                           subscribed: bool = True) -> bool:
        """Wait until `count` authenticated (and subscribed) ESL connections exist."""
        return self.server.wait_for(
            lambda conns: sum(1 for c in conns if c.authed and (c.events or not subscribed))
            >= count, timeout)

    def drop_connections(self) -> None:
        """Close every ESL socket abruptly: no notice, as when the network cuts."""
        self.server.drop_all()

    def send_garbage(self, data: bytes = b"Content-Length: 12x\nContent-Type: text/event-pl\xffin"
                                          b"\n\n\x00\x01garbage\n\n") -> None:
        """Write a malformed frame to every connection."""
        for conn in list(self.server.connections):
            conn.send(data)

    def stall(self) -> None:
        """Stop reading and writing on every connection (events queue up, then drop)."""
        self.server.running.clear()

    def resume(self) -> None:
        self.server.running.set()
