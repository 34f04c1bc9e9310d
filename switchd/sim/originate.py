"""`originate` as the simulator plays it (bgapi/api): the `|` legs of the dial string in
order, each its own channel; the first answered leg parks until it is killed, its
sched_hangup fires, its hold time ends or, for a silent carrier, its media_timeout ends
it. Same rules as a bridge leg (player.py): sofia's causes, leg_timeout,
fail_on_single_reject, "Duplicate UUID!" and the throttle."""
from __future__ import annotations

from switchd.sim import causes as C
from switchd.sim import xmlcurl
from switchd.sim.legs import SimLeg, follow_redirect, refuse_answer, refuse_redirect
from switchd.sim.model import SimCall, seeded_uuid


def run_originate(player, call: SimCall, arg: str) -> str:
    """Play `originate <arg>`; return the job body as soon as it is known."""
    sim = player.sim
    dial, _, app = arg.rpartition(" &") if " &" in arg else (arg, "", "park()")
    global_vars, dial_legs = xmlcurl.parse_dial_string(dial)
    gv = dict(global_vars)
    reject = gv.get("fail_on_single_reject")
    t = player.clock.now_us()
    cause = "DESTINATION_OUT_OF_ORDER"
    for index, dleg in enumerate(dial_legs):
        if call.kill:
            break
        vars_ = global_vars + dleg.vars
        lv = dict(dleg.vars)
        uuid = lv.get("origination_uuid") or gv.get("origination_uuid")
        # The session of an earlier leg of this originate still holds its UUID.
        if uuid and (sim.leg(uuid) is not None or uuid in {x.uuid for x in call.legs}) \
                or not sim.take_session(t):
            cause = "DESTINATION_OUT_OF_ORDER"      # "Duplicate UUID!" / throttled
            continue
        uuid = uuid or (call.uuid if index == 0 else seeded_uuid(call.rng))
        o = SimLeg(uuid=uuid, role="o", number=dleg.number,
                   caller=gv.get("origination_caller_id_number", call.caller),
                   caller_name=gv.get("origination_caller_id_name"), call_uuid=uuid,
                   gateway=dleg.gateway, vars=vars_, created_us=t)
        call.legs.append(o)
        sim.register(o, call)
        player.emit(call, "o.CHANNEL_CREATE", o, None, t)
        beh = player.behaviour(dleg.gateway)
        leg_timeout, timelimit = player._timeouts(gv, lv)
        kind, delay, cause, sip, _proto = player._outcome(
            call, beh, leg_timeout, timelimit,
            C.true(lv.get("outbound_redirect_fatal", gv.get("outbound_redirect_fatal"))))
        bad_from = C.unsendable_from(lv.get("origination_caller_id_name") or o.caller_name or o.caller,
                                     lv.get("origination_caller_id_number") or o.caller)
        if bad_from is not None:            # sofia fails the leg before any INVITE
            kind, delay, (cause, sip) = "fail", 0.0, bad_from
        t += int(delay * 1_000_000)
        player.wait(call, t)
        if kind == "refused" and not call.kill:     # killed while ringing: a CANCEL, below
            refuse_answer(o)
            kind = "fail"
        if kind == "redirect" and not call.kill:
            refuse_redirect(o, beh.redirect_to)
            cause, sip, kind = o.cause, None, "fail"
        if kind == "fail" or call.kill:
            if kind != "fail":
                cause, sip = "ORIGINATOR_CANCEL", 487
            o.cause, o.sip_status = cause, sip
            o.hangup_us = t
            player.emit(call, "ofail.CHANNEL_HANGUP", o, None, t)
            player.emit(call, "ofail.CHANNEL_HANGUP_COMPLETE", o, None, t)
            sim.unregister(o)
            if reject and not C.true(reject) and C.single_reject(cause, reject):
                break
            continue
        o.progress_us = o.answered_us = t
        o.sip_status = 200
        if beh.redirect_to is not None:
            follow_redirect(o, beh.redirect_to)
        call.ignore_sched = beh.ignore_sched_hangup
        player.emit(call, "o.CHANNEL_ANSWER", o, None, t)
        player.sim.spawn(_park, player, call, o, t, gv)
        return f"+OK {o.uuid}\n"
    call.hangup_cause = cause
    call.result = "failed"
    call.done.set()
    return f"-ERR {call.hangup_cause}\n"

def _park(player, call: SimCall, o: SimLeg, t_ans: int, gv: dict) -> None:
    eoa = gv.get("execute_on_answer", "")
    if eoa.startswith("sched_hangup") and not call.ignore_sched:
        parts = eoa.split()
        call.sched_at_us = C.sched_when_us(parts[1] if len(parts) > 1 else "", t_ans)
        call.sched_cause = C.str2cause(parts[2]) if len(parts) > 2 else "ALLOTTED_TIMEOUT"
    t, cause = player.wait_parked(call, t_ans, player.media_timeout_at(o, t_ans))
    o.hangup_us, o.cause = t, cause
    player.emit(call, "o.CHANNEL_HANGUP", o, None, t)
    player.emit(call, "o.CHANNEL_HANGUP_COMPLETE", o, None, t)
    player.sim.unregister(o)
    call.hangup_cause, call.result = cause, "answered"
    call.done.set()
