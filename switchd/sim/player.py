"""The call player: plays one inbound call or one originate in simulated time.

Each call runs in its own greenlet, draws its UUIDs and outcomes from its own seeded RNG
(so concurrency never changes what a seed produces), and sleeps on the SimClock between
events. uuid_kill and sched_hangup wake it through SimCall.wake.
"""
from __future__ import annotations

from switchd.sim import legs as L
from switchd.sim import xmlcurl
from switchd.sim.legs import SimLeg
from switchd.sim.model import GatewayBehaviour, SimCall, seeded_uuid

SETUP_US = 20_000          # INVITE → CHANNEL_CREATE of the next leg, simulated
A_NAME = "sofia/local/{caller}@127.0.0.1:5060"


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

    def _outcome(self, call: SimCall, beh: GatewayBehaviour, timeout_s: float | None):
        """('answer', delay_s, None, 200) or ('fail', delay_s, cause, sip)."""
        draw = call.rng.random()          # always drawn: outcomes stay seed-stable
        if beh.fail_cause or draw < beh.fail_rate:
            cause = beh.fail_cause or "NORMAL_TEMPORARY_FAILURE"
            return "fail", beh.fail_delay_s, cause, beh.sip_status or L.CAUSE_SIP.get(cause)
        if timeout_s is not None and beh.answer_delay_s > timeout_s:
            return "fail", timeout_s, "NO_ANSWER", 487
        return "answer", beh.answer_delay_s, None, 200

    # -- inbound call -----------------------------------------------------------------
    def run_inbound(self, call: SimCall, call_vars: list[tuple[str, str]],
                    form_overrides: dict[str, str]) -> None:
        sim = self.sim
        t = self.clock.now_us()
        a = SimLeg(uuid=call.uuid, role="a", number=call.destination, caller=call.caller,
                   call_uuid=call.uuid, vars=list(call_vars), created_us=t)
        call.a_leg = a
        sim.register(a, call)
        self.emit(call, "a.CHANNEL_CREATE", a, None, t)
        body = xmlcurl.build_form(a, core_uuid=sim.core_uuid, seq=sim.next_seq(), ts_us=t,
                                  call_vars=[(f"variable_{k}", v) for k, v in call_vars],
                                  overrides=form_overrides)
        route, source, reason = xmlcurl.lookup(sim.dialplan_url, body, sim.dialplan_timeout)
        call.route, call.route_source = route, source
        sim.log_lookup(call, source, reason)
        set_vars = route.set_vars + route.exports
        a.vars += set_vars
        t = max(t + SETUP_US, self.clock.now_us())
        if route.bridge is None or route.respond or route.hangup_cause:
            self._refuse(call, a, route, t)
            return
        global_vars, dial_legs = xmlcurl.parse_dial_string(route.bridge)
        exported = list(route.exports)
        answered = None
        for dleg in dial_legs:
            if call.kill:
                break
            b = SimLeg(uuid=seeded_uuid(call.rng), role="b", number=dleg.number,
                       caller=call.caller, call_uuid=a.uuid, gateway=dleg.gateway,
                       vars=global_vars + exported + dleg.vars, created_us=t)
            call.legs.append(b)
            sim.register(b, call)
            self.emit(call, "b.CHANNEL_CREATE", b, a, t, extra={"variable_sip_gateway_name":
                                                                  dleg.gateway or ""})
            beh = self.behaviour(dleg.gateway)
            timeout = dleg.var("leg_timeout") or dict(global_vars).get("originate_timeout")
            kind, delay, cause, sip = self._outcome(call, beh, float(timeout) if timeout else None)
            t_next = t + int(delay * 1_000_000)
            self._ring(call, b, a, t, beh, delay)
            if self.wait(call, t_next) and call.kill:
                t = self.clock.now_us()
                if call.kill[0] == b.uuid:
                    # Only the ringing carrier leg was killed (e.g. switchd refusing a
                    # failover to a full carrier): that attempt fails with the kill's
                    # cause and the bridge goes on to its next gateway, as `|` does.
                    b.cause, b.sip_status = call.kill[1], None
                    call.kill = None
                    self._fail_leg(call, b, a, t)
                    continue
                b.cause, b.sip_status = "ORIGINATOR_CANCEL", 487
                self._fail_leg(call, b, a, t)
                break
            t = t_next
            if kind == "fail":
                b.cause, b.sip_status = cause, sip
                self._fail_leg(call, b, a, t)
                # FreeSWITCH reads it from the caller channel (a `set` in the dialplan) or
                # the dial string, and matches the cause name as a substring (stristr).
                reject = dict(set_vars + global_vars + dleg.vars).get("fail_on_single_reject", "")
                if reject.lower() == "true" or (cause and cause.upper() in reject.upper()):
                    break
                continue
            answered = b
            call.ignore_sched = beh.ignore_sched_hangup
            b.sip_status = 200
            for leg in (a, b):
                leg.progress_us = leg.progress_media_us = leg.answered_us = leg.bridged_us = t
            self.emit(call, "b.CHANNEL_ANSWER", b, a, t)
            self.emit(call, "a.CHANNEL_ANSWER", a, b, t, set_vars=set_vars)
            self.emit(call, "a.CHANNEL_BRIDGE", a, b, t, set_vars=set_vars)
            break
        if answered is None:
            self._all_failed(call, a, t, set_vars)
            return
        self._talk(call, a, answered, t, route, set_vars)

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

    def _refuse(self, call: SimCall, a: SimLeg, route, t: int) -> None:
        if route.respond:
            code = route.respond[0]
            a.cause, a.sip_status = L.SIP_CAUSE.get(code, "NORMAL_UNSPECIFIED"), code
        else:
            a.cause = route.hangup_cause or "NORMAL_CLEARING"
            a.sip_status = L.CAUSE_SIP.get(a.cause)
        self._hangup_alone(call, a, t, route.set_vars + route.exports)
        call.result = "refused"

    def _fail_leg(self, call: SimCall, b: SimLeg, a: SimLeg, t: int) -> None:
        b.hangup_us = t
        self.emit(call, "bfail.CHANNEL_HANGUP", b, a, t)
        self.emit(call, "bfail.CHANNEL_HANGUP_COMPLETE", b, a, t)
        self.sim.unregister(b)

    def _originate_causes(self, call: SimCall) -> dict[str, str]:
        causes = [f"{b.uuid};{b.cause if not b.answered_us else 'NONE'}" for b in call.legs]
        legs_ = [f"{b.uuid};Outbound Call;{b.number}" for b in call.legs]
        if not causes:
            return {"variable_originate_causes": None, "variable_originated_legs": None}
        fmt = (lambda x: "ARRAY::" + "|:".join(x)) if len(causes) > 1 else (lambda x: x[0])
        return {"variable_originate_causes": fmt(causes), "variable_originated_legs": fmt(legs_)}

    def _hangup_alone(self, call: SimCall, a: SimLeg, t: int, set_vars) -> None:
        """A-leg ends without a bridged partner: refused, or every leg failed."""
        a.hangup_us = t
        last = call.legs[-1] if call.legs else None
        extra = {**self._originate_causes(call), "Other-Leg-Unique-ID": None,
                 "variable_bridge_uuid": None, "variable_last_bridge_to": None,
                 "variable_bridge_channel": None, "variable_signal_bond": None,
                 "variable_bridge_hangup_cause": None,
                 "variable_last_bridge_hangup_cause": last.cause if last else None,
                 "variable_originate_disposition": last.cause if last else None,
                 "variable_DIALSTATUS": last.cause if last else None,
                 "variable_endpoint_disposition": "EARLY MEDIA" if last else "DELAYED NEGOTIATION"}
        self.emit(call, "a.CHANNEL_HANGUP", a, None, t, extra=extra, set_vars=set_vars)
        self.emit(call, "a.CHANNEL_HANGUP_COMPLETE", a, None, t, extra=extra, set_vars=set_vars)
        call.hangup_cause = a.cause
        self.sim.unregister(a)

    def _all_failed(self, call: SimCall, a: SimLeg, t: int, set_vars) -> None:
        # The bridge failed and the dialplan ran out: FreeSWITCH refuses the caller with
        # the last leg's cause (originate_disposition).
        last = call.legs[-1] if call.legs else None
        a.cause = (call.kill[1] if call.kill and call.kill[0] == a.uuid else
                   last.cause if last else "NORMAL_CLEARING")
        a.sip_status = last.sip_status if last else None
        self._hangup_alone(call, a, t, set_vars)
        call.result = "failed"

    def _talk(self, call: SimCall, a: SimLeg, b: SimLeg, t_ans: int, route, set_vars) -> None:
        if route.sched_hangup and not call.ignore_sched:
            when, cause = route.sched_hangup
            call.sched_cause = cause
            call.sched_at_us = (t_ans + int(float(when[1:]) * 1_000_000) if when.startswith("+")
                                else int(float(when) * 1_000_000))   # bare N is an epoch
        t_end = t_ans + int(call.hold_seconds * 1_000_000)
        while True:
            due = min(t_end, call.sched_at_us or t_end)
            if call.kill:
                break
            if not self.wait(call, due) and self.clock.now_us() >= due - 1:
                break
        if call.kill:
            t, (killed, cause) = self.clock.now_us(), call.kill
        elif call.sched_at_us is not None and call.sched_at_us <= t_end:
            t, killed, cause = max(call.sched_at_us, t_ans), a.uuid, call.sched_cause
        else:
            t, killed, cause = t_end, a.uuid, "NORMAL_CLEARING"
        a.hangup_us = b.hangup_us = t
        if killed == b.uuid:
            b.cause, a.cause, prefix = cause, "NORMAL_CLEARING", ""
        else:
            a.cause, b.cause = cause, "NORMAL_CLEARING"
            prefix = "sched." if cause != "NORMAL_CLEARING" else ""
        oc = self._originate_causes(call)
        a_extra = {**oc, "variable_bridge_hangup_cause": b.cause}
        b_extra = {"variable_bridge_hangup_cause": a.cause, "variable_last_bridge_hangup_cause": a.cause}
        self.emit(call, f"a.{prefix}CHANNEL_HANGUP", a, b, t, extra=a_extra, set_vars=set_vars)
        self.emit(call, f"b.{prefix}CHANNEL_HANGUP", b, a, t, extra=b_extra)
        self.emit(call, f"b.{prefix}CHANNEL_HANGUP_COMPLETE", b, a, t, extra=b_extra)
        self.emit(call, f"a.{prefix}CHANNEL_HANGUP_COMPLETE", a, b, t, extra=a_extra,
                  set_vars=set_vars)
        self.sim.unregister(b)
        self.sim.unregister(a)
        call.hangup_cause = a.cause
        call.result = "answered"

    # -- bgapi originate --------------------------------------------------------------
    def run_originate(self, call: SimCall, arg: str) -> str:
        """Play `originate <arg>`; return the job body as soon as it is known."""
        dial, _, app = arg.rpartition(" &") if " &" in arg else (arg, "", "park()")
        global_vars, dial_legs = xmlcurl.parse_dial_string(dial)
        gv = dict(global_vars)
        t = self.clock.now_us()
        for dleg in dial_legs:
            if call.kill:
                break
            vars_ = global_vars + dleg.vars
            o = SimLeg(uuid=dleg.var("origination_uuid") or call.uuid, role="o", number=dleg.number,
                       caller=gv.get("origination_caller_id_number", call.caller),
                       caller_name=gv.get("origination_caller_id_name"), call_uuid=call.uuid,
                       gateway=dleg.gateway, vars=vars_, created_us=t)
            call.legs.append(o)
            self.sim.register(o, call)
            self.emit(call, "o.CHANNEL_CREATE", o, None, t)
            beh = self.behaviour(dleg.gateway)
            timeout = dleg.var("leg_timeout") or gv.get("originate_timeout")
            kind, delay, cause, sip = self._outcome(call, beh, float(timeout) if timeout else None)
            t += int(delay * 1_000_000)
            self.wait(call, t)
            if kind == "fail" or call.kill:
                o.cause, o.sip_status = (cause, sip) if kind == "fail" else ("ORIGINATOR_CANCEL", 487)
                o.hangup_us = t
                self.emit(call, "ofail.CHANNEL_HANGUP", o, None, t)
                self.emit(call, "ofail.CHANNEL_HANGUP_COMPLETE", o, None, t)
                self.sim.unregister(o)
                continue
            o.progress_us = o.answered_us = t
            o.sip_status = 200
            call.ignore_sched = beh.ignore_sched_hangup
            self.emit(call, "o.CHANNEL_ANSWER", o, None, t)
            self.sim.spawn(self._park, call, o, t, gv)
            return f"+OK {o.uuid}\n"
        call.hangup_cause = call.legs[-1].cause if call.legs else "NORMAL_CLEARING"
        call.result = "failed"
        call.done.set()
        return f"-ERR {call.hangup_cause}\n"

    def _park(self, call: SimCall, o: SimLeg, t_ans: int, gv: dict) -> None:
        eoa = gv.get("execute_on_answer", "")
        if eoa.startswith("sched_hangup") and not call.ignore_sched:
            parts = eoa.split()
            call.sched_at_us = t_ans + int(float(parts[1].lstrip("+")) * 1_000_000)
            call.sched_cause = parts[2] if len(parts) > 2 else "ALLOTTED_TIMEOUT"
        t_end = t_ans + int(call.hold_seconds * 1_000_000)
        while not call.kill:
            due = min(t_end, call.sched_at_us or t_end)
            if not self.wait(call, due) and self.clock.now_us() >= due - 1:
                break
        if call.kill:
            t, cause = self.clock.now_us(), call.kill[1]
        elif call.sched_at_us is not None and call.sched_at_us <= t_end:
            t, cause = call.sched_at_us, call.sched_cause
        else:
            t, cause = t_end, "NORMAL_CLEARING"
        o.hangup_us, o.cause = t, cause
        self.emit(call, "o.CHANNEL_HANGUP", o, None, t)
        self.emit(call, "o.CHANNEL_HANGUP_COMPLETE", o, None, t)
        self.sim.unregister(o)
        call.hangup_cause, call.result = cause, "answered"
        call.done.set()
