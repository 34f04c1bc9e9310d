"""The call player: plays one inbound call or one originate in simulated time.

Each call runs in its own greenlet, draws its UUIDs and outcomes from its own seeded RNG
(so concurrency never changes what a seed produces), and sleeps on the SimClock between
events. uuid_kill and sched_hangup wake it through SimCall.wake.

An inbound call runs its dialplan the way FreeSWITCH 1.10.12 does: mod_xml_curl lookup,
mod_dialplan_xml hunt (switchd/sim/dialplan.py), then the applications in order (`set`,
`export`, `unset`, `bridge`, `transfer`, `respond`, `hangup`, `sched_hangup`, ...). A failed
`bridge` sets the caller's outcome variables and continues only as
switch_channel_handle_cause() allows; a `transfer` is a new lookup. `answer` answers the
caller alone and `park` holds it until it hangs up: what a static extension does when a
lookup is `not found` (Simulator(static_dialplan=...)).
"""
from __future__ import annotations

from switchd.sim import causes as C
from switchd.sim import dialplan, xmlcurl
from switchd.sim import legs as L
from switchd.sim.legs import SimLeg
from switchd.sim.model import GatewayBehaviour, SimCall, seeded_uuid

SETUP_US = 20_000          # INVITE → CHANNEL_CREATE of the next leg, simulated
A_NAME = "sofia/local/{caller}@127.0.0.1:5060"
ORIGINATE_TIMEOUT_S = 60.0  # switch_ivr_originate.c: timelimit_sec when originate_timeout is unset
MAX_FORWARDS = 70           # switch_ivr_session_transfer(): forwardval default
# Applications that do nothing the simulator shows (no media, no logs).
_QUIET_APPS = frozenset({"log", "info", "pre_answer", "ring_ready",
                         "playback", "set_profile_var", "event", "hash", "limit", "db",
                         "park", "echo", "endless_playback", "export_vars", "multiset"})
# Variables a failed bridge leaves on the caller (cleared when no bridge ever ran).
_OUTCOME_HEADERS = ("variable_last_bridge_hangup_cause",
                    "variable_last_bridge_proto_specific_hangup_cause",
                    "variable_originate_disposition", "variable_DIALSTATUS",
                    "variable_originate_causes", "variable_originated_legs")


class CallOver(Exception):
    """The A-leg has hung up: the dialplan stops."""


class Player:
    def __init__(self, sim) -> None:
        self.sim = sim
        self.clock = sim.clock

    # -- plumbing ---------------------------------------------------------------------
    def emit(self, call: SimCall, key: str, leg: SimLeg, other: SimLeg | None, ts: int,
             **kw) -> None:
        headers = L.leg_event(key, leg, other, core_uuid=self.sim.core_uuid, ts_us=ts,
                              a_uuid=call.uuid, **kw)
        name = key.rsplit(".", 1)[-1]
        call.events.append((name, leg.uuid))
        self.sim.emit(headers)

    def wait(self, call: SimCall, ts_us: int) -> bool:
        """Sleep until ts_us; True when woken by uuid_kill/sched_hangup instead."""
        woke = self.clock.wait_until(ts_us, call.wake)
        call.wake.clear()
        return woke

    def behaviour(self, gateway: str | None) -> GatewayBehaviour:
        return self.sim.gateway_behaviour(gateway)

    def _outcome(self, call: SimCall, beh: GatewayBehaviour, leg_timeout: float | None,
                 timelimit: float, redirect_fatal: bool = False):
        """(kind, delay_s, cause, sip, proto): kind 'answer', 'fail', 'refused' (the
        carrier's answer sofia refuses: GatewayBehaviour.unusable_answer) or 'redirect'
        (the carrier's 302, refused: the leg has outbound_redirect_fatal); `proto` is
        whether the carrier's SIP code becomes the leg's proto_specific_hangup_cause."""
        draw = call.rng.random()          # always drawn: outcomes stay seed-stable
        kind, delay, cause, sip = "answer", beh.answer_delay_s, None, 200
        if beh.fail_cause or (beh.sip_status and not beh.fail_rate) or draw < beh.fail_rate:
            sip = beh.sip_status or (C.CARRIER_SIP.get(beh.fail_cause) if beh.fail_cause else 503)
            cause = C.sip_to_cause(sip) if sip else beh.fail_cause
            kind, delay = "fail", beh.fail_delay_s
        elif beh.unusable_answer:
            # sofia.c, nua_callstate_ready: the 2xx's SDP matches no codec ("NO CODECS")
            kind, cause, sip = "refused", "INCOMPATIBLE_DESTINATION", None
        elif beh.redirect_to is not None:
            if redirect_fatal:
                kind, delay, cause, sip = "redirect", beh.fail_delay_s, "REQUESTED_CHAN_UNAVAIL", None
            else:                         # followed: answered at the Contact
                delay = beh.fail_delay_s + beh.answer_delay_s
        if leg_timeout is not None and delay > leg_timeout and leg_timeout <= timelimit:
            # per-leg limit: FreeSWITCH hangs the ringing leg up ALLOTTED_TIMEOUT and
            # CANCELs it; the carrier's 487 is the leg's status, not the caller's cause.
            return "fail", leg_timeout, "ALLOTTED_TIMEOUT", 487, False
        if delay > timelimit:
            return "fail", timelimit, "NO_ANSWER", 487, False
        return kind, delay, cause, sip, kind == "fail" and sip is not None

    @staticmethod
    def _timeouts(global_vars: dict, leg_vars: dict) -> tuple[float | None, float]:
        def num(text):
            try:
                return float(text) if text not in (None, "") else None
            except ValueError:
                return None
        leg = num(leg_vars.get("leg_timeout", global_vars.get("leg_timeout")))
        overall = num(global_vars.get("originate_timeout"))
        return (leg if leg and leg > 0 else None,
                overall if overall and overall > 0 else ORIGINATE_TIMEOUT_S)

    # -- channel variables of the A-leg ------------------------------------------------
    @staticmethod
    def getvar(call: SimCall, a: SimLeg, name: str) -> str | None:
        for k, v in reversed(call.set_vars):
            if k == name:
                return v
        return a.var(name)

    @staticmethod
    def setvar(call: SimCall, a: SimLeg, name: str, value: str | None) -> None:
        """switch_channel_set_variable(): replace in place, or add at the end; None unsets."""
        for lst in (call.set_vars, a.vars):
            lst[:] = [(k, v) for k, v in lst if k != name]
        if value is not None:
            call.set_vars.append((name, value))

    def all_vars(self, call: SimCall, a: SimLeg) -> list[tuple[str, str]]:
        names = {k for k, _ in call.set_vars}
        return [(k, v) for k, v in a.vars if k not in names] + list(call.set_vars)

    # -- inbound call -----------------------------------------------------------------
    def run_inbound(self, call: SimCall, call_vars: list[tuple[str, str]],
                    form_overrides: dict[str, str]) -> None:
        sim = self.sim
        t = self.clock.now_us()
        if not sim.take_session(t):
            # sofia answers 503 "Maximum Calls In Progress" before any channel exists.
            call.result, call.refused_sip = "refused", 503
            return
        a = SimLeg(uuid=call.uuid, role="a", number=call.destination, caller=call.caller,
                   call_uuid=call.uuid, vars=list(call_vars), created_us=t)
        call.a_leg = a
        sim.register(a, call)
        self.emit(call, "a.CHANNEL_CREATE", a, None, t)
        destination, context, transferred = call.destination, "public", False
        try:
            while True:
                form_vars = [(f"variable_{k}", v) for k, v in self.all_vars(call, a)]
                body = xmlcurl.build_form(a, core_uuid=sim.core_uuid, seq=sim.next_seq(),
                                          ts_us=t, call_vars=form_vars, overrides=form_overrides,
                                          destination=destination if transferred else None,
                                          context=context)
                root, source, reason = xmlcurl.lookup(sim.dialplan_url, body,
                                                      sim.dialplan_timeout, sim.static_dialplan)
                call.route_source = source
                call.lookups.append((destination, context, source))
                sim.log_lookup(call, source, reason)
                call.route = xmlcurl.RouteAnswer()
                t = max(t + SETUP_US, self.clock.now_us())
                fields = {"destination_number": destination, "context": context,
                          "caller_id_number": call.caller,
                          "caller_id_name": call.caller_name or call.caller,
                          "ani": call.caller, "uuid": a.uuid, "dialplan": "XML",
                          "network_addr": "127.0.0.1", "source": "mod_sofia",
                          "chan_name": A_NAME.format(caller=call.caller)}
                actions = dialplan.hunt(root, context, fields,
                                        lambda name: self._expand_var(call, a, name, fields))
                if actions is None:
                    self._end_alone(call, a, t, "NO_ROUTE_DESTINATION")
                nxt = self._execute(call, a, actions, fields, t)
                destination, context, t = nxt
                transferred = True
        except CallOver:
            return

    def _expand_var(self, call, a, name, fields) -> str | None:
        value = self.getvar(call, a, name)
        if value is None and name in fields:
            return fields[name]
        if value is None and name == "uuid":
            return a.uuid
        return value

    def _execute(self, call: SimCall, a: SimLeg, actions, fields: dict, t: int):
        """Run the applications; returns (destination, context, t) of a transfer, or raises
        CallOver once the A-leg has hung up. `fields`: the caller profile (destination_number,
        context, ...) that `${...}` falls back to."""
        route = call.route
        context = fields["context"]
        for app, raw in actions:
            data = dialplan.expand(raw, lambda n: self._expand_var(call, a, n, fields))
            if app == "set":
                name, _, value = data.partition("=")
                self.setvar(call, a, name, value if value != "" else None)
                route.set_vars.append((name, value))
                if name == "execute_on_answer" and value.startswith("sched_hangup"):
                    parts = value.split()
                    route.sched_hangup = (parts[1] if len(parts) > 1 else "",
                                          parts[2] if len(parts) > 2 else "ALLOTTED_TIMEOUT")
            elif app == "export":
                name, _, value = data.partition("=")
                local = not name.startswith("nolocal:")
                name = name.removeprefix("nolocal:")
                if local:
                    self.setvar(call, a, name, value)
                call.exports = [(k, v) for k, v in call.exports if k != name] + [(name, value)]
                route.exports.append((name, value))
            elif app == "unset":
                self.setvar(call, a, data.strip(), None)
            elif app == "bridge":
                if route.bridge is None:
                    route.bridge = data
                cause = self._bridge(call, a, data, t)      # raises CallOver when answered
                t = self.clock.now_us()
                if cause is not None and not self._continue_on_fail(call, a, cause):
                    self._end_alone(call, a, t, cause)
            elif app == "transfer":
                parts = data.split()
                if not parts:
                    continue
                forwards = self._forwards(call, a)
                if forwards <= 0:
                    self._end_alone(call, a, t, "EXCHANGE_ROUTING_ERROR")
                new_ctx = parts[2] if len(parts) > 2 else context
                self.setvar(call, a, "max_forwards", str(forwards))
                source = (f"{t // 1_000_000}:{a.uuid}:bl_xfer:{parts[0]}/{new_ctx}/"
                          f"{parts[1] if len(parts) > 1 else 'XML'}")
                history = self.getvar(call, a, "transfer_history")
                self.setvar(call, a, "transfer_history",
                            source if history is None else f"ARRAY::{history.removeprefix('ARRAY::')}|:{source}")
                self.setvar(call, a, "transfer_source", source)
                return parts[0], new_ctx, max(t + SETUP_US, self.clock.now_us())
            elif app == "respond":
                code_text, _, phrase = data.strip().partition(" ")
                try:
                    code = int(code_text)
                except ValueError:
                    continue
                if route.respond is None:
                    route.respond = (code, phrase)
                if code >= 300:
                    self._end_alone(call, a, t, C.sip_to_cause(code), sip=code)
            elif app == "hangup":
                if route.hangup_cause is None:
                    route.hangup_cause = C.str2cause(data)
                self._end_alone(call, a, t, C.str2cause(data))
            elif app == "sched_hangup":
                parts = data.split()
                when = C.sched_when_us(parts[0] if parts else "", t)
                cause = C.str2cause(parts[1]) if len(parts) > 1 else "ALLOTTED_TIMEOUT"
                if when <= t:
                    self._end_alone(call, a, t, cause)
                call.sched_at_us, call.sched_cause = when, cause
            elif app == "sleep":
                # mod_dptools: the channel waits `data` ms (not a number: no wait); a
                # uuid_kill meanwhile hangs it up
                until = t + (int(data) * 1000 if data.strip().isdigit() else 0)
                while not call.kill and self.clock.now_us() < until - 1:
                    self.wait(call, until)
                if call.kill:
                    self._end_alone(call, a, self.clock.now_us(), C.str2cause(call.kill[1]))
                t = until
            elif app == "answer":
                self._answer(call, a, t)
            elif app == "park":
                self._park(call, a, t)          # raises CallOver
            elif app in _QUIET_APPS:
                continue
            else:
                # switch_core_session_execute_application: "Invalid Application"
                self._end_alone(call, a, t, "DESTINATION_OUT_OF_ORDER")
        # The extension ran out of applications: the channel hangs up.
        self._end_alone(call, a, t, "NORMAL_CLEARING")

    def _answer(self, call: SimCall, a: SimLeg, t: int) -> None:
        """The switch answers the caller itself (no other leg): A CHANNEL_ANSWER alone."""
        if a.answered_us:
            return
        a.progress_us = a.progress_media_us = a.answered_us = t
        eoa = self.getvar(call, a, "execute_on_answer") or ""
        if eoa.startswith("sched_hangup"):
            parts = eoa.split()
            call.sched_cause = C.str2cause(parts[2]) if len(parts) > 2 else "ALLOTTED_TIMEOUT"
            call.sched_at_us = C.sched_when_us(parts[1] if len(parts) > 1 else "", t)
        extra = {"variable_last_bridge_hangup_cause": None,
                 "variable_last_bridge_proto_specific_hangup_cause": None}
        self.emit(call, "a.CHANNEL_ANSWER", a, None, t, extra=extra,
                  set_vars=list(call.set_vars))

    def _park(self, call: SimCall, a: SimLeg, t: int) -> None:
        """`park`: the channel waits, with no other leg, until it is hung up: the caller
        after its hold time (from the answer), `sched_hangup` or `uuid_kill`."""
        t, cause = self.wait_parked(call, a.answered_us or t)
        self._end_alone(call, a, t, cause)

    def wait_parked(self, call: SimCall, start: int,
                    media_at: float = float("inf")) -> tuple[int, str]:
        """Wait out a channel answered at `start` with no other leg (park, an originated
        leg): until the caller's hold time, its `sched_hangup`, a `uuid_kill` or, for a
        silent carrier's leg, its media timeout (`media_at`), whichever comes first.
        Returns when it ends and why."""
        t_end = start + int(call.hold_seconds * 1_000_000)
        while not call.kill:
            due = min(t_end, call.sched_at_us if call.sched_at_us is not None else t_end,
                      media_at)
            if not self.wait(call, due) and self.clock.now_us() >= due - 1:
                break
        if call.kill:
            return self.clock.now_us(), C.str2cause(call.kill[1])
        if media_at < t_end and (call.sched_at_us is None or media_at < call.sched_at_us):
            return int(media_at), "MEDIA_TIMEOUT"
        if call.sched_at_us is not None and call.sched_at_us <= t_end:
            return max(call.sched_at_us, start), call.sched_cause
        return t_end, "NORMAL_CLEARING"

    def _forwards(self, call, a) -> int:
        for name in ("max_session_transfers", "max_forwards"):
            value = self.getvar(call, a, name)
            if value:
                try:
                    return int(value) - 1
                except ValueError:
                    return -1
        return MAX_FORWARDS - 1

    def _continue_on_fail(self, call: SimCall, a: SimLeg, cause: str) -> bool:
        """switch_channel_handle_cause(): may the dialplan go on after a failed bridge?"""
        if cause == "ATTENDED_TRANSFER":
            return False
        cof = self.getvar(call, a, "continue_on_fail")
        failure_causes = self.getvar(call, a, "failure_causes")
        if cof is None and failure_causes is None:
            return cause in ("NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL")
        if failure_causes is not None and not C.in_cause_list(cause, failure_causes):
            return True
        if cof is not None:
            return C.true(cof) or C.in_cause_list(cause, cof)
        return False

    # -- bridge -----------------------------------------------------------------------
    def _bridge(self, call: SimCall, a: SimLeg, dial: str, t: int) -> str:
        """Play one `bridge`: its `|` legs in order. Answered → the call is played to its
        end and CallOver is raised; otherwise the caller's outcome variables are set and the
        originate cause is returned."""
        sim = self.sim
        global_vars, dial_legs = xmlcurl.parse_dial_string(dial)
        gv = dict(global_vars)
        reject = gv.get("fail_on_single_reject", self.getvar(call, a, "fail_on_single_reject"))
        exported = list(call.exports)
        cause = "DESTINATION_OUT_OF_ORDER" if not dial_legs else None
        tried: list[SimLeg] = []
        for index, dleg in enumerate(dial_legs):
            if call.kill:
                break
            leg_vars = dict(dleg.vars)
            uuid = leg_vars.get("origination_uuid") or gv.get("origination_uuid")
            if uuid and (sim.leg(uuid) is not None or uuid in {x.uuid for x in tried}) \
                    or not sim.take_session(t):
                # switch_core_session_request_uuid(): "Duplicate UUID!" or "Throttle
                # Error!"; sofia cannot create the leg: no channel, no events.
                cause = "DESTINATION_OUT_OF_ORDER"
                continue
            b = SimLeg(uuid=uuid or seeded_uuid(call.rng), role="b", number=dleg.number,
                       caller=call.caller, call_uuid=a.uuid, gateway=dleg.gateway,
                       vars=global_vars + exported + dleg.vars, created_us=t)
            call.legs.append(b)
            tried.append(b)
            sim.register(b, call)
            self.emit(call, "b.CHANNEL_CREATE", b, a, t, extra={"variable_sip_gateway_name":
                                                                  dleg.gateway or ""})
            beh = self.behaviour(dleg.gateway)
            leg_timeout, timelimit = self._timeouts(gv, leg_vars)
            kind, delay, cause, sip, proto = self._outcome(
                call, beh, leg_timeout, timelimit,
                C.true(leg_vars.get("outbound_redirect_fatal", gv.get("outbound_redirect_fatal"))))
            bad_from = C.unsendable_from(*self._from(call, a, gv, leg_vars))
            if bad_from is not None:        # sofia fails the leg before any INVITE
                kind, delay, (cause, sip), proto = "fail", 0.0, bad_from, bad_from[1] is not None
            t_next = t + int(delay * 1_000_000)
            self._ring(call, b, a, t, beh, delay)
            if self.wait(call, t_next) and call.kill:
                t = self.clock.now_us()
                if call.kill[0] == b.uuid:
                    # Only the ringing carrier leg was killed (e.g. switchd refusing a
                    # failover to a full carrier): that attempt fails with the kill's
                    # cause and the bridge goes on to its next gateway, as `|` does.
                    cause = b.cause = C.str2cause(call.kill[1])
                    b.sip_status = None
                    call.kill = None
                    self._fail_leg(call, b, a, t, proto=False)
                    continue
                # The caller went (its CANCEL, or a kill): FreeSWITCH CANCELs the leg. The
                # carrier's 487 answers that CANCEL after the leg is gone: no SIP status
                # (verified on FreeSWITCH 1.10.12, tests/realswitch/test_caller_gives_up.py).
                cause = b.cause = "ORIGINATOR_CANCEL"
                b.sip_status, b.hangup_disposition = None, "send_cancel"
                self._fail_leg(call, b, a, t, proto=False)
                break
            t = t_next
            if kind == "refused":
                L.refuse_answer(b)
                kind = "fail"
            if kind == "redirect":
                L.refuse_redirect(b, beh.redirect_to)
                self._fail_leg(call, b, a, t, proto=False)
                continue
            if kind == "fail":
                b.cause, b.sip_status = cause, sip
                self._fail_leg(call, b, a, t, proto=proto)
                if reject and not C.true(reject) and C.single_reject(cause, reject):
                    break
                continue
            call.ignore_sched = beh.ignore_sched_hangup
            b.sip_status = 200
            if beh.redirect_to is not None:
                L.follow_redirect(b, beh.redirect_to)
            for leg in (a, b):
                leg.progress_us = leg.progress_media_us = leg.answered_us = leg.bridged_us = t
            set_vars = list(call.set_vars)
            self.emit(call, "b.CHANNEL_ANSWER", b, a, t)
            self.emit(call, "a.CHANNEL_ANSWER", a, b, t, set_vars=set_vars)
            self.emit(call, "a.CHANNEL_BRIDGE", a, b, t, set_vars=set_vars)
            if self._talk(call, a, b, t, call.route, set_vars):
                return None             # the callee hung up; the caller's dialplan goes on
            raise CallOver
        if call.kill and call.kill[0] == a.uuid:
            t = self.clock.now_us()
            self._end_alone(call, a, t, C.str2cause(call.kill[1]))
        cause = cause or "ORIGINATOR_CANCEL"
        self._originate_failed(call, a, tried, cause)
        return cause

    def _from(self, call: SimCall, a: SimLeg, gv: dict, leg_vars: dict) -> tuple[str, str]:
        """The caller ID name and number sofia puts in the carrier leg's From."""
        def pick(kind: str, default: str) -> str:
            for source in (leg_vars, gv):
                if source.get(f"origination_caller_id_{kind}"):
                    return source[f"origination_caller_id_{kind}"]
            return self.getvar(call, a, f"effective_caller_id_{kind}") or default
        return pick("name", call.caller_name or call.caller), pick("number", call.caller)

    def _ring(self, call: SimCall, b: SimLeg, a: SimLeg, t: int, beh: GatewayBehaviour,
              delay: float) -> None:
        """The carrier's 180 before its final answer: CHANNEL_PROGRESS on the B-leg (its
        Caller-Channel-Progress-Time set), as FreeSWITCH 1.10 sends it (captures a-d)."""
        if beh.progress_delay_s is None or beh.progress_delay_s >= delay:
            return
        t_ring = t + int(beh.progress_delay_s * 1_000_000)
        if self.wait(call, t_ring):
            call.wake.set()           # woken by a kill: let the caller's wait see it at once
            return
        b.progress_us = t_ring
        self.emit(call, "b.CHANNEL_ANSWER", b, a, t_ring, extra={
            "Event-Name": "CHANNEL_PROGRESS", "Answer-State": "ringing",
            "Channel-Call-State": "DOWN", "Caller-Channel-Answered-Time": "0",
            "Other-Leg-Channel-Answered-Time": "0", "variable_answer_epoch": "0",
            "variable_answer_uepoch": "0"})

    def _originate_failed(self, call: SimCall, a: SimLeg, tried: list[SimLeg], cause: str) -> None:
        """The caller's variables after a failed originate (switch_ivr_originate.c,
        mod_dptools bridge)."""
        self.setvar(call, a, "originate_disposition", cause)
        self.setvar(call, a, "DIALSTATUS", C.dialstatus(cause))
        self.setvar(call, a, "originate_failed_cause", cause)
        for name, value in self._originate_causes(tried).items():
            self.setvar(call, a, name.removeprefix("variable_"), value)

    def _fail_leg(self, call: SimCall, b: SimLeg, a: SimLeg, t: int, proto: bool) -> None:
        b.hangup_us = t
        b.proto_cause = proto
        self.emit(call, "bfail.CHANNEL_HANGUP", b, a, t)
        self.emit(call, "bfail.CHANNEL_HANGUP_COMPLETE", b, a, t)
        self.sim.unregister(b)
        # switch_channel_perform_hangup(): the partner (caller) learns the leg's cause, and
        # its SIP code only when sofia had one at hangup (not for our own CANCEL).
        self.setvar(call, a, "last_bridge_hangup_cause", b.cause)
        if b.refused_redirect is not None:      # the 302 is only in the proto cause
            self.setvar(call, a, "last_bridge_proto_specific_hangup_cause",
                        f"sip:{b.refused_redirect}")
        if proto and b.sip_status is not None:
            self.setvar(call, a, "last_bridge_proto_specific_hangup_cause", f"sip:{b.sip_status}")
            self.setvar(call, a, "sip_invite_failure_status", str(b.sip_status))
            self.setvar(call, a, "sip_invite_failure_phrase", L.PHRASE.get(b.sip_status, "Unknown"))

    @staticmethod
    def _originate_causes(tried: list[SimLeg]) -> dict[str, str | None]:
        causes = [f"{b.uuid};{b.cause if not b.answered_us else 'NONE'}" for b in tried]
        legs_ = [f"{b.uuid};Outbound Call;{b.number}" for b in tried]
        if not causes:
            return {"variable_originate_causes": None, "variable_originated_legs": None}
        fmt = (lambda x: "ARRAY::" + "|:".join(x)) if len(causes) > 1 else (lambda x: x[0])
        return {"variable_originate_causes": fmt(causes), "variable_originated_legs": fmt(legs_)}

    def _end_alone(self, call: SimCall, a: SimLeg, t: int, cause: str,
                   sip: int | None = None) -> None:
        """The A-leg hangs up without a bridged partner (refused, no route, every leg
        failed, hangup app) and the dialplan stops (CallOver)."""
        a.cause = cause
        if call.caller_cancelled:
            a.hangup_disposition = "recv_cancel"      # answered 487 (hangup_sip below)
        if sip is None:
            ps = self.getvar(call, a, "last_bridge_proto_specific_hangup_cause") or ""
            ignore = C.true(self.getvar(call, a, "sip_ignore_remote_cause"))
            code = ps[4:] if ps.lower().startswith("sip:") and not ignore else ""
            sip = int(code) if code.isdigit() and int(code) else C.hangup_sip(cause)
        a.sip_status = sip
        a.hangup_us = t
        extra: dict[str, str | None] = {h: None for h in _OUTCOME_HEADERS}
        extra.update({"Other-Leg-Unique-ID": None, "variable_bridge_uuid": None,
                      "variable_last_bridge_to": None, "variable_bridge_channel": None,
                      "variable_signal_bond": None, "variable_bridge_hangup_cause": None,
                      "variable_endpoint_disposition":
                          "ANSWER" if a.answered_us else
                          "EARLY MEDIA" if call.legs else "DELAYED NEGOTIATION"})
        set_vars = list(call.set_vars)
        self.emit(call, "a.CHANNEL_HANGUP", a, None, t, extra=extra, set_vars=set_vars)
        self.emit(call, "a.CHANNEL_HANGUP_COMPLETE", a, None, t, extra=extra, set_vars=set_vars)
        call.hangup_cause = a.cause
        self.sim.unregister(a)
        call.result = "answered" if a.answered_us else "failed" if call.legs else "refused"
        raise CallOver

    def media_timeout_at(self, b: SimLeg, t_ans: int) -> float:
        """When FreeSWITCH ends the answered carrier leg (bridged or parked) for want of
        RTP: its media_timeout (ms) after the answer, if its carrier is silent; never (inf)
        otherwise."""
        if not self.behaviour(b.gateway).silent_after_answer:
            return float("inf")
        ms = dict(b.vars).get("media_timeout", "")
        return t_ans + int(ms) * 1000 if ms.isdigit() and int(ms) > 0 else float("inf")

    def _talk(self, call: SimCall, a: SimLeg, b: SimLeg, t_ans: int, route, set_vars) -> bool:
        """The bridged call until one side hangs up; True when only the callee did and the
        caller's dialplan goes on (hangup_after_bridge not true)."""
        eoa = self.getvar(call, a, "execute_on_answer") or ""
        if eoa.startswith("sched_hangup") and not call.ignore_sched:
            parts = eoa.split()
            call.sched_cause = C.str2cause(parts[2]) if len(parts) > 2 else "ALLOTTED_TIMEOUT"
            call.sched_at_us = C.sched_when_us(parts[1] if len(parts) > 1 else "", t_ans)
        elif call.ignore_sched:
            call.sched_at_us = None
        t_end = t_ans + int(call.hold_seconds * 1_000_000)
        media_at, timed_out = self.media_timeout_at(b, t_ans), False
        while True:
            due = min(t_end, call.sched_at_us if call.sched_at_us is not None else t_end)
            if call.kill:
                break
            until = min(due, media_at)
            if not self.wait(call, until) and self.clock.now_us() >= until - 1:
                break
        if call.kill:
            t, (killed, cause) = self.clock.now_us(), call.kill
            cause = C.str2cause(cause)
        elif media_at < t_end and (call.sched_at_us is None or media_at < call.sched_at_us):
            t, killed, cause, timed_out = media_at, b.uuid, "MEDIA_TIMEOUT", True
        elif call.sched_at_us is not None and call.sched_at_us <= t_end:
            t, killed, cause = max(call.sched_at_us, t_ans), a.uuid, call.sched_cause
        else:
            t, killed, cause = t_end, a.uuid, "NORMAL_CLEARING"
        if killed == b.uuid and not C.true(self.getvar(call, a, "hangup_after_bridge")):
            # The callee hung up and hangup_after_bridge is not true: only the B-leg ends,
            # the caller's dialplan continues with its next application (mod_dptools).
            call.kill = None
            b.hangup_us, b.cause = t, cause
            b_extra = {"variable_bridge_hangup_cause": cause}
            self.emit(call, "b.CHANNEL_HANGUP", b, a, t, extra=b_extra)
            self.emit(call, "b.CHANNEL_HANGUP_COMPLETE", b, a, t, extra=b_extra)
            self.sim.unregister(b)
            self.setvar(call, a, "last_bridge_hangup_cause", cause)
            self.setvar(call, a, "bridge_hangup_cause", cause)
            return True
        a.hangup_us = b.hangup_us = t
        if killed == b.uuid:
            b.cause, a.cause, prefix = cause, "NORMAL_CLEARING", ""
        else:
            a.cause, b.cause = cause, "NORMAL_CLEARING"
            prefix = "sched." if cause != "NORMAL_CLEARING" else ""
        oc = self._originate_causes(call.legs)
        a_extra = {**oc, "variable_bridge_hangup_cause": b.cause}
        b_extra = {"variable_bridge_hangup_cause": a.cause, "variable_last_bridge_hangup_cause": a.cause}
        if timed_out:
            # FreeSWITCH ended the carrier leg itself and BYEs both sides: the caller is
            # hung up with the same cause, neither leg keeps a SIP status, and the carrier
            # leg names no bridge cause (tests/fixtures/media-timeout/).
            a.cause = cause
            a.hangup_disposition = b.hangup_disposition = "send_bye"
            a_extra.update({"variable_last_bridge_hangup_cause": cause,
                            "variable_sip_term_status": None})
            b_extra = {"variable_bridge_hangup_cause": None,
                       "variable_last_bridge_hangup_cause": None,
                       "variable_sip_term_status": None}
        self.emit(call, f"a.{prefix}CHANNEL_HANGUP", a, b, t, extra=a_extra, set_vars=set_vars)
        self.emit(call, f"b.{prefix}CHANNEL_HANGUP", b, a, t, extra=b_extra)
        self.emit(call, f"b.{prefix}CHANNEL_HANGUP_COMPLETE", b, a, t, extra=b_extra)
        self.emit(call, f"a.{prefix}CHANNEL_HANGUP_COMPLETE", a, b, t, extra=a_extra,
                  set_vars=set_vars)
        self.sim.unregister(b)
        self.sim.unregister(a)
        call.hangup_cause = a.cause
        call.result = "answered"
        return False

    # -- bgapi originate (switchd/sim/originate.py) -------------------------------------
    def run_originate(self, call: SimCall, arg: str) -> str:
        from switchd.sim.originate import run_originate
        return run_originate(self, call, arg)
