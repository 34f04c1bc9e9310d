"""Originated calls: caps and budget checked, LCR, then `bgapi originate` (DESIGN.md §3).

The same plan as a dialplan answer (switchd/routing/router.py `Router.plan`), placed ONE CARRIER
ATTEMPT PER `bgapi originate`: call-wide variables in `{}`, the attempt's own
`origination_uuid` and tariff in its `[]` (the first attempt's UUID is the call UUID, the
key of the caps slots taken at planning; later attempts get fresh ones: FreeSWITCH refuses
a UUID still in use, "Duplicate UUID!", which is what a `{origination_uuid}` over a `|`
list did to every failover leg), and the scheduled hangup in `execute_on_answer` so that
FreeSWITCH enforces the maximum duration even if switchd dies.

Why not one `|` list: FreeSWITCH decides its failover by hangup cause, and 403 (the
carrier refusing us: try the next) and 603 (the callee declining: stop) are both
CALL_REJECTED. switchd reads each attempt's outcome, the BACKGROUND_JOB result and that
leg's CHANNEL_HANGUP_COMPLETE (`sip_term_status`), and `should_try_next` decides. Every
attempt is a leg of the call in the registry and the CDR (all legs share
`switchd_route_id`), is logged, and is listed in the API answer.
"""
from __future__ import annotations

import logging
import re
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from time import monotonic

import gevent
from gevent.event import AsyncResult

from dialplan import causes, failover, numbers, validate, xml_answer
from dialplan import retry as retry_table
from switchd import metrics
from switchd.adapters.esl.commands import hangup_cause
from switchd.calls.retries import (AttemptEnd, AttemptStoreError, CallFinal, daemon_id,
                                   utc_now)
from switchd.routing.router import Decision, Refused

log = logging.getLogger(__name__)

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:+@/*#-]*$")
# Applications an API client may run on answer: harmless ones only (never system, lua,
# bgsystem ... which would hand a remote client a shell on the switch).
_APPS = ("park", "playback", "echo", "conference", "transfer", "sleep")
_APP = re.compile(r"^&(" + "|".join(_APPS) + r")\([A-Za-z0-9_.:+@/-]*\)$")


class OriginateError(ValueError):
    """The request cannot be placed; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, sip_code: int | None = None):
        super().__init__(message)
        self.status = status
        self.sip_code = sip_code


@dataclass(frozen=True)
class OriginateRequest:
    tenant: str
    destination: str
    caller_id: str | None = None
    campaign: str | None = None
    app: str = "&park()"
    timeout_s: int = 60               # originate_timeout: ring time before giving up
    retry: retry_table.RetryAsk | None = None   # whole-call retries asked (docs/originate.md)
    reference: str | None = None      # the caller's own id (a campaign's contact), in CallFinal

    @classmethod
    def from_json(cls, payload) -> "OriginateRequest":
        if not isinstance(payload, dict):
            raise OriginateError("body must be a JSON object")
        unknown = set(payload) - {"tenant", "destination", "caller_id", "campaign", "app",
                                  "timeout_s", "retry", "reference"}
        if unknown:
            raise OriginateError(f"unknown field(s): {', '.join(sorted(unknown))}")
        for key in ("tenant", "destination"):
            if not isinstance(payload.get(key), str) or not payload[key]:
                raise OriginateError(f"{key}: required, a non-empty string")
        for key in ("caller_id", "campaign", "app", "reference"):
            if key in payload and not isinstance(payload[key], str):
                raise OriginateError(f"{key}: must be a string")
        # The door's rules are the renderer's (dialplan/validate.py): a value refused here
        # could not have been put in the originate string safely anyway.
        _field("tenant", validate.name, payload["tenant"])
        _field("destination", _dialled, payload["destination"])
        if payload.get("campaign") is not None:
            _field("campaign", validate.name, payload["campaign"])
        if payload.get("reference") is not None:
            _field("reference", validate.name, payload["reference"])
        timeout = payload.get("timeout_s", 60)
        if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= 300:
            raise OriginateError("timeout_s: an integer from 1 to 300")
        app = payload.get("app", "&park()")
        if not _APP.match(app):
            raise OriginateError(f"app: one of {', '.join('&' + a + '(...)' for a in _APPS)}, "
                                 "arguments without blanks or commas")
        caller = payload.get("caller_id")
        if caller is not None:
            _field("caller_id", validate.caller_id, caller)
        try:
            ask = retry_table.parse_ask(payload.get("retry"))
        except retry_table.RetryError as exc:
            raise OriginateError(str(exc)) from None
        return cls(payload["tenant"], payload["destination"], caller, payload.get("campaign"),
                   app, timeout, ask, payload.get("reference"))

    def as_json(self) -> dict:
        """The request as from_json reads it (stored with a pending retry)."""
        out = {"tenant": self.tenant, "destination": self.destination, "app": self.app,
               "timeout_s": self.timeout_s}
        for key in ("caller_id", "campaign", "reference"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.retry is not None:
            out["retry"] = self.retry.as_dict()
        return out


def _dialled(value: str) -> str:
    """What a tenant may dial: any form the number parser takes (spaces, dashes, '+'),
    nothing a dial string or variable expansion would interpret, at most 64 characters."""
    if len(value) > 64:
        raise validate.Invalid(f"{value[:20]!r}...: at most 64 characters")
    return validate.check_value(value, repr(value))


def _field(key: str, check, value) -> None:
    try:
        check(value)
    except validate.Invalid as exc:
        raise OriginateError(f"{key}: {exc}") from None


def _var(key: str, value) -> str:
    text = xml_answer.format_value(value)
    if _SAFE_VALUE.match(text):
        return f"{key}={text}"
    # Our own composite values (e.g. the scheduled hangup) need FreeSWITCH's quoting;
    # anything else is refused rather than guessed at.
    if "'" in text or "," in text or not re.fullmatch(r"[A-Za-z0-9_ +.:/-]+", text):
        raise ValueError(f"unsafe originate variable {key}={text!r}")
    return f"{key}='{text}'"


# After a failed attempt's job result, how long to wait for its CHANNEL_HANGUP_COMPLETE
# (which carries sip_term_status). FreeSWITCH fires it as the channel is destroyed, around
# the time the originate returns. An attempt that made no channel never sends one: its
# gateway unknown or down, or the switch over its sessions-per-second or session limit
# (no session, so no CHANNEL_CREATE either); that is known once the events received
# before the job's result are applied, without waiting this long.
ATTEMPT_END_WAIT_S = 2.0


def should_try_next(hangup_cause: str | None, sip_status: int | None,
                    table: failover.FailoverTable | None = None) -> bool:
    """After an unanswered attempt: place the next carrier's, or stop? The one place an
    originate decides it: the operator's `[failover]` rows where one matches, else the
    originate's defaults (403/5xx/unreachable on; 486/603/404, a ring-out stop)."""
    return failover.originate_fails_over(table or failover.FailoverTable(), hangup_cause,
                                         sip_status)


class _Capped(Exception):
    """The daily cap refuses this attempt (the message is the client's)."""


@dataclass(frozen=True)
class Attempt:
    """One carrier attempt of an originate, as FreeSWITCH reported it."""
    leg_uuid: str
    carrier: str | None
    gateway: str
    result: str                     # the BACKGROUND_JOB body, e.g. "-ERR CALL_REJECTED"
    answered: bool
    hangup_cause: str | None = None
    sip_status: int | None = None


def originate_string(leg_uuid: str, call_vars: dict, leg, app: str, max_s: int,
                     timeout_s: int) -> str:
    """`{call vars}[origination_uuid=…,leg vars]sofia/gateway/G/N &app()`: one attempt."""
    globals_ = {**call_vars, "originate_timeout": timeout_s,
                "execute_on_answer": f"sched_hangup +{int(max_s)} {hangup_cause('ALLOTTED_TIMEOUT')}"}
    head = "{" + ",".join(_var(k, v) for k, v in globals_.items()) + "}"
    leg_vars = {"origination_uuid": leg_uuid, **leg.vars}
    dial = ("[" + ",".join(_var(k, v) for k, v in leg_vars.items()) + "]"
            + f"sofia/gateway/{leg.gateway}/{leg.number}")
    return f"{head}{dial} {app}"


class Originator:
    """Places originated calls: `originate(request)` places the first attempt and answers
    with its outcome; `place_retry(row)` places a retry the RetryScheduler claimed. With an
    AttemptStore (`attempts`), every attempt is recorded, the daily cap is enforced and
    retries are scheduled; without one (tests of the originate string alone), none of that.

    Final-outcome hook (docs/originate.md): `add_final_listener(callback)`; `callback(CallFinal)`
    runs once per call when no attempt will follow (answered, a never-retried outcome,
    retries exhausted, the daily cap, a refusal), in the greenlet that placed the last attempt
    (an API request's, or the scheduler's on whichever daemon placed it), never in the
    ESL event greenlet. A listener that raises is logged and does not stop the others."""

    def __init__(self, router, esl, registry, caps, world, record, attempts=None,
                 clock=None, daemon: str | None = None):
        self.router = router
        self.esl = esl
        self.registry = registry
        self.caps = caps
        self.world = world            # callable: current World
        self.record = record          # routing log sink
        self.attempts = attempts      # switchd.calls.retries.AttemptStore, or None
        self.clock = clock or utc_now
        self.daemon = daemon or daemon_id()
        self._ends: dict[str, AsyncResult] = {}   # attempt leg UUID -> its ended Leg
        self._final_listeners: list = []

    def add_final_listener(self, callback) -> None:
        self._final_listeners.append(callback)

    def originate(self, request: OriginateRequest) -> dict:
        world = self.world()
        tenant, campaign = self._admit(world, request)
        if not self.esl.connected:
            raise OriginateError("not connected to FreeSWITCH", 503)
        call_uuid = str(uuid.uuid4())
        return self._place(request, world, tenant, campaign, call_uuid, call_uuid, 1,
                           self.clock())

    def place_retry(self, row: dict) -> dict | None:
        """Place attempt `row["attempt"]` of call `row["call_uuid"]` (a claimed pending row)."""
        origin, attempt_no = row["call_uuid"], row["attempt"]
        try:
            request = OriginateRequest.from_json(dict(row["request"]))
            world = self.world()
            tenant, campaign = self._admit(world, request)
        except OriginateError as exc:
            info = {**row, "reference": (row.get("request") or {}).get("reference")}
            self._close(origin, attempt_no, info, AttemptEnd("refused", self.clock(),
                                                             note=str(exc)))
            return None
        return self._place(request, world, tenant, campaign, str(uuid.uuid4()), origin,
                           attempt_no, row["scheduled_at"])

    def cancel_retries(self, *, call_uuid: str | None = None, campaign: str | None = None,
                       tenant: str | None = None, why: str = "retry cancelled") -> int:
        """Cancel the pending retries of a call or of a campaign (a campaign stopped); each
        call so ended is final (the listeners hear `cancelled`). Returns how many. A retry
        being placed at that moment is not stopped here: hang its call up."""
        if self.attempts is None:
            return 0
        rows = self.attempts.cancel_pending(self.clock(), why, call_uuid=call_uuid,
                                            campaign=campaign, tenant=tenant)
        for row in rows:
            metrics.ORIGINATE_ATTEMPTS.labels("cancelled").inc()
            self._final(CallFinal(
                call_uuid=row["call_uuid"], tenant=row["tenant"], destination=row["destination"],
                campaign=row["campaign"], outcome=retry_table.CANCELLED, answered=False,
                attempts=row["attempt"] - 1, attempt_call_uuid=None, carrier=None, cause=None,
                sip_status=None, note=why, reference=(row["request"] or {}).get("reference")))
        return len(rows)

    def interrupted(self, row: dict) -> None:
        """An attempt whose daemon stopped mid-way was closed (RetryScheduler): final."""
        metrics.ORIGINATE_ATTEMPTS.labels("interrupted").inc()
        self._final(CallFinal(
            call_uuid=row["call_uuid"], tenant=row["tenant"], destination=row["destination"],
            campaign=row["campaign"], outcome="interrupted", answered=False,
            attempts=row["attempt"], attempt_call_uuid=row.get("attempt_call_uuid"),
            carrier=None, cause=None, sip_status=None,
            note="the daemon placing it stopped; not placed again",
            reference=(row.get("request") or {}).get("reference")))

    def _admit(self, world, request: OriginateRequest):
        tenant = world.tenants.get(request.tenant)
        if tenant is None or not tenant.enabled:
            raise OriginateError(f"unknown or disabled tenant {request.tenant!r}", 403, 403)
        campaign = None
        if request.campaign:
            campaign = world.campaigns.get(request.campaign)
            if campaign is None or campaign.tenant != tenant.name:
                raise OriginateError(f"unknown campaign {request.campaign!r} for this tenant", 404)
        return tenant, campaign

    def _place(self, request, world, tenant, campaign, call_uuid: str, origin: str,
               attempt_no: int, scheduled_at) -> dict | None:
        """One attempt of the call `origin` as the switch call `call_uuid`."""
        first = attempt_no == 1
        info = {"call_uuid": origin, "tenant": tenant.name, "destination": request.destination,
                "campaign": request.campaign, "reference": request.reference}
        decision = Decision(id=str(uuid.uuid4()), call_uuid=call_uuid, tenant=tenant.name,
                            direction="outbound", destination=request.destination,
                            result="refused", reason="")
        try:
            plan = self.router.plan(decision, world, tenant, request.destination, campaign)
        except numbers.SpecialNumber as special:
            decision.reason = f"{special.kind} numbers are never originated"
            self.record(decision)
            return self._refused(first, info, attempt_no, OriginateError(decision.reason, 403, 403))
        except Refused as refused:
            decision.reason, decision.sip_code = refused.reason, refused.refusal.sip_code
            self.record(decision)
            busy = refused.refusal.sip_code == 503     # caps full: like congestion
            return self._refused(first, info, attempt_no, OriginateError(
                refused.reason, 409 if not busy else 503, refused.refusal.sip_code),
                outcome=retry_table.CONGESTION if busy else "refused", request=request,
                policy=tenant.retry)
        number = plan.number.e164
        now = self.clock()
        if self.attempts is not None:
            try:
                self._take_and_begin(request, tenant, number, now, call_uuid, origin,
                                     attempt_no, scheduled_at)
            except AttemptStoreError as exc:
                # the cap cannot be enforced, the attempt not recorded: place nothing
                self.caps.release(call_uuid)
                log.error("originate refused: %s", exc, extra={"call_uuid": origin})
                return self._refused(first, info, attempt_no, OriginateError(
                    "cannot record the attempt in PostgreSQL; nothing was placed", 503),
                    outcome="failed")
            except _Capped as capped:
                self.caps.release(call_uuid)
                decision.result, decision.reason = "refused", "originate: daily attempt cap"
                self.record(decision)
                return self._refused(first, {**info, "destination": number}, attempt_no,
                                     OriginateError(str(capped), 429), outcome="capped")
        decision.reason = "originate:" + decision.reason
        self.record(decision)
        call_vars = {"switchd_tenant": tenant.name, "switchd_route_id": decision.id,
                     "switchd_max_duration": plan.max_duration, "switchd_direction": "outbound",
                     # every attempt is a channel of its own with no originator: the
                     # switch's CDR of each finds the call by this
                     "switchd_call_uuid": call_uuid,
                     # webhook events of every attempt name the call the API answered
                     "switchd_origin_call": origin, "switchd_origin_attempt": attempt_no}
        if campaign is not None:
            call_vars["switchd_campaign"] = campaign.name
        if request.caller_id:
            call_vars["origination_caller_id_number"] = request.caller_id
        legs = [xml_answer.leg_for_route(route, plan.number.e164) for route in plan.routes]
        attempts: list[Attempt] = []
        self.registry.expect_originate(call_uuid, decision.id)
        try:
            for index, (route, leg) in enumerate(zip(plan.routes, legs)):
                if index and self._carrier_full(call_uuid, route.carrier, tenant.name):
                    continue
                attempt = self._on_carrier(call_uuid, call_vars, leg, request, plan.max_duration,
                                           attempts, f"{index + 1}/{len(legs)}", tenant.name)
                if attempt.answered or not should_try_next(
                        attempt.hangup_cause, attempt.sip_status,
                        self.router.settings.get("failover")):
                    break
        except Exception as exc:    # not connected, timeout, refused: the slots must go back
            self._finished(call_uuid)
            self.caps.release(call_uuid)
            log.warning("originate failed before a result: %s", exc, extra={"call_uuid": call_uuid})
            error = OriginateError(f"originate failed: {exc}", 502)
            self._close(origin, attempt_no, info, AttemptEnd(
                "failed", self.clock(), note=str(error), carriers_tried=len(attempts)),
                notify=not first)           # originate() raising is the caller's answer
            if first:
                raise error from None
            return None
        self._finished(call_uuid)
        last = attempts[-1]
        if not last.answered:
            # Events (if any) end the call in the registry; releasing here covers the case
            # where FreeSWITCH created no channel at all. Release is idempotent.
            self.caps.release(call_uuid)
        log.info("originate %s -> %s: %s after %d attempt(s)", tenant.name, plan.number.e164,
                 last.result, len(attempts), extra={"call_uuid": call_uuid, "tenant": tenant.name})
        outcome = retry_table.classify(last.answered, last.hangup_cause, last.sip_status)
        end = AttemptEnd(outcome, self.clock(), last.hangup_cause, last.sip_status, last.carrier,
                         last.gateway, len(attempts))
        retry_at = self._close(origin, attempt_no, {**info, "destination": number}, end,
                               request=request, policy=tenant.retry, call=call_uuid)
        return {"call_uuid": call_uuid, "route_id": decision.id, "result": last.result,
                "answered": last.answered, "destination": plan.number.e164,
                "max_duration": plan.max_duration,
                "gateways": [leg.gateway for leg in legs],
                "attempts": [asdict(a) for a in attempts],
                "attempt": attempt_no, "outcome": outcome, "final": retry_at is None,
                "next_attempt_at": retry_at.isoformat() if retry_at else None}

    def _carrier_full(self, call_uuid: str, carrier, tenant: str) -> bool:
        """Before an attempt on another carrier: move the call's carrier slot to it, so a
        full carrier is never dialled (a leg killed once it exists may already have
        answered). True when it is full: that attempt is skipped."""
        moved = self.caps.move_to_carrier(call_uuid, carrier)
        if not moved.carrier_refused:
            return False
        log.info("originate attempt via %s skipped: %s", carrier.name, moved.reason,
                 extra={"call_uuid": call_uuid, "tenant": tenant})
        return True

    def _take_and_begin(self, request, tenant, number: str, now, call_uuid: str, origin: str,
                        attempt_no: int, scheduled_at) -> None:
        """Count the attempt against the daily cap (raises _Capped) and record it placed."""
        cap = tenant.retry.daily_cap
        if self.attempts.take_daily(tenant.name, number, now.date(), cap) is None:
            raise _Capped(f"daily attempt cap reached: {cap} attempt(s) to {number} today "
                          f"(UTC) for tenant {tenant.name} (retry.daily_cap)")
        if attempt_no == 1:
            self.attempts.begin(origin, 1, tenant=tenant.name, destination=number,
                                campaign=request.campaign, attempt_call_uuid=call_uuid,
                                scheduled_at=scheduled_at, started_at=now,
                                request=request.as_json(), daemon=self.daemon)
        else:
            self.attempts.placing(origin, attempt_no, call_uuid, number)

    def _refused(self, first: bool, info: dict, attempt_no: int, error: OriginateError,
                 outcome: str = "refused", request=None, policy=None):
        """A refusal before anything reached the switch: the first attempt answers the
        client with it (nothing recorded); a retry records it (and may retry again)."""
        if first:
            raise error
        self._close(info["call_uuid"], attempt_no, info,
                    AttemptEnd(outcome, self.clock(), note=str(error)), request=request,
                    policy=policy)
        return None

    def _close(self, origin: str, attempt_no: int, info: dict, end: AttemptEnd, request=None,
               policy=None, call: str | None = None, notify: bool = True):
        """Record how attempt `attempt_no` ended and what follows; the time of the next
        attempt, or None (the call is final: the listeners hear it, when `notify`)."""
        step = None
        if request is not None and policy is not None and self.attempts is not None:
            step = retry_table.next_step(policy, request.retry, attempt_no, end.outcome, origin)
        retry_at = (end.ended_at + timedelta(milliseconds=step.delay_ms)
                    if step is not None and step.action == "retry" else None)
        note = end.note or (step.reason if step is not None else "")
        metrics.ORIGINATE_ATTEMPTS.labels(end.outcome).inc()
        if retry_at is not None:
            metrics.ORIGINATE_RETRIES.labels(end.outcome).inc()
        end = replace(end, final=retry_at is None, note=note)
        if self.attempts is not None:
            try:
                self.attempts.finish(origin, attempt_no, end, retry_at)
            except AttemptStoreError as exc:
                # the outcome stands; a retry that cannot be stored is not scheduled
                log.error("%s (attempt %d of %s ended %s)", exc, attempt_no, origin,
                          end.outcome, extra={"call_uuid": origin})
                retry_at = None
                end = replace(end, final=True)
        if retry_at is not None:
            log.info("originate %s: attempt %d %s; attempt %d at %s", origin, attempt_no,
                     end.outcome, attempt_no + 1, retry_at.isoformat(),
                     extra={"call_uuid": origin, "tenant": info["tenant"]})
            return retry_at
        if not notify:
            return None
        self._final(CallFinal(
            call_uuid=origin, tenant=info["tenant"], destination=info["destination"],
            campaign=info.get("campaign"), outcome=end.outcome,
            answered=end.outcome == retry_table.ANSWERED, attempts=attempt_no,
            attempt_call_uuid=call, carrier=end.carrier, cause=end.cause,
            sip_status=end.sip_status, note=note, reference=info.get("reference")))
        return None

    def _final(self, final: CallFinal) -> None:
        for callback in list(self._final_listeners):
            try:
                callback(final)
            except Exception:      # a listener's bug must not stop the others or the call
                log.exception("final-outcome listener %r failed", callback,
                              extra={"call_uuid": final.call_uuid})

    def _on_carrier(self, call_uuid: str, call_vars: dict, leg, request, max_s: int,
                    attempts: list[Attempt], route_no: str, tenant: str) -> Attempt:
        """Place the call on one route (appending to `attempts`); the last attempt.

        A leg our own switch failed before any SIP answer (causes.switch_refused: its
        sessions-per-second throttle, max-sessions, no RTP port) is placed once more on the
        same carrier rather than on a dearer one: every carrier would have met it alike.
        Not before causes.SWITCH_REFUSED_PAUSE_MS after the failed attempt was placed (such
        a failure is immediate); the wait for its hangup event has usually covered it."""
        for tries_left in (1, 0):
            # the first attempt's UUID is the call's (the caps key); later ones fresh
            leg_uuid = str(uuid.uuid4()) if attempts else call_uuid
            placed_at = monotonic()
            attempt = self._attempt(leg_uuid, call_vars, leg, request, max_s)
            attempts.append(attempt)
            log.info("originate attempt %d (route %s) via %s: %s (cause %s, SIP %s)",
                     len(attempts), route_no, leg.gateway, attempt.result, attempt.hangup_cause,
                     attempt.sip_status, extra={"call_uuid": call_uuid, "tenant": tenant})
            if attempt.answered or not tries_left or not causes.switch_refused(
                    attempt.hangup_cause, attempt.sip_status):
                return attempt
            metrics.SWITCH_REFUSED_LEGS.labels("originate").inc()
            log.warning("FreeSWITCH failed the leg itself (DESTINATION_OUT_OF_ORDER, no SIP "
                        "answer: its log says why, e.g. 'Throttle Error!'); placing it once "
                        "more via %s", leg.gateway,
                        extra={"call_uuid": call_uuid, "tenant": tenant})
            pause_s = causes.SWITCH_REFUSED_PAUSE_MS / 1000
            gevent.sleep(max(0.0, placed_at + pause_s - monotonic()))
        return attempt

    def _attempt(self, leg_uuid: str, call_vars: dict, leg, request, max_s: int) -> Attempt:
        ended = self._ends[leg_uuid] = AsyncResult()
        try:
            line = originate_string(leg_uuid, call_vars, leg, request.app, max_s,
                                    request.timeout_s)
            result = self.esl.bgapi(f"originate {line}", timeout=request.timeout_s + 15)
            body = result.body.strip()
            carrier = leg.vars.get("switchd_carrier")
            if result.ok:
                return Attempt(leg_uuid, carrier, leg.gateway, body, True)
            words = body.removeprefix("-ERR").split() if body.startswith("-ERR") else []
            cause = words[0] if words else None
            final = self._failed_leg(leg_uuid, ended)
            if final is not None:
                cause = final.hangup_cause or cause
            return Attempt(leg_uuid, carrier, leg.gateway, body, False, cause,
                           final.sip_status if final is not None else None)
        finally:
            self._ends.pop(leg_uuid, None)

    def _failed_leg(self, leg_uuid: str, ended: AsyncResult):
        """A failed attempt's leg as its CHANNEL_HANGUP_COMPLETE left it; None when the
        switch made no channel for it (or its events are later than ATTEMPT_END_WAIT_S).
        FreeSWITCH fires CHANNEL_CREATE before the job's result: once the events received
        ahead of that result are applied, a UUID the registry never saw had no channel."""
        deadline = monotonic() + ATTEMPT_END_WAIT_S
        if (not ended.ready() and self.esl.events_applied(ATTEMPT_END_WAIT_S)
                and not ended.ready() and not self.registry.knows_leg(leg_uuid)):
            return None
        try:
            return ended.get(timeout=max(0.0, deadline - monotonic()))
        except gevent.Timeout:
            return None

    def leg_ended(self, leg) -> None:
        """A leg's CHANNEL_HANGUP_COMPLETE was applied (event greenlet: only sets a value)."""
        waiting = self._ends.get(leg.uuid)
        if waiting is not None and not waiting.ready():
            waiting.set(leg)

    def _finished(self, call_uuid: str) -> None:
        """Effects of the registry's end-of-originate go through the daemon's handler."""
        self.on_effects(self.registry.originate_finished(call_uuid))

    def on_effects(self, effects) -> None:    # replaced by the daemon
        pass
