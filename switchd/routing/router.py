"""One routing decision: a mod_xml_curl lookup in, an XML answer out (DESIGN.md §3 step 2-3).

Order: tenant → number → (DID | emergency | policy) → budget → LCR → caps → XML. The pure
decisions live in `dialplan`; this module only gathers the live state they need (world,
decks, health, caps, spend) and records the decision. It does no network I/O itself: caps
may be Redis-backed, which yields under gevent.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from dialplan import callerid, causes, failover, lcr, numbers, policy, xml_answer
from dialplan.model import Tenant, World
from dialplan.ratedeck import lookup_all
from switchd import metrics
from switchd.routing import answers

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What the router decided, for the routing log and the caller."""
    id: str
    call_uuid: str
    tenant: str | None
    direction: str
    destination: str | None
    result: str                # 'routed' | 'refused' | 'not_found' | 'transfer_refused'
    reason: str
    sip_code: int | None = None
    candidates: list = field(default_factory=list)
    chosen: list = field(default_factory=list)
    elapsed_us: int = 0
    answer: object = None      # what FreeSWITCH is told (switchd/routing/answers.py)
    xml: str = ""              # answers.render(answer), set by Router.route

    def as_row(self) -> dict:
        return {"id": self.id, "call_uuid": self.call_uuid, "tenant": self.tenant,
                "direction": self.direction, "destination": self.destination,
                "result": "routed" if self.result == "routed" else "refused",
                "reason": self.reason, "sip_code": self.sip_code,
                "candidates": self.candidates, "chosen": self.chosen,
                "elapsed_us": self.elapsed_us}


@dataclass(frozen=True)
class Plan:
    """An outbound call's route: what both the XML answer and originate are built from."""
    number: numbers.Number
    routes: list
    max_duration: int


class Refused(Exception):
    def __init__(self, refusal: policy.Refusal, reason: str):
        super().__init__(reason)
        self.refusal = refusal
        self.reason = reason


class Router:
    def __init__(self, *, world: Callable[[], World], decks: Callable[[], dict],
                 health, caps, spend, settings: dict,
                 record: Callable[[Decision], None] = lambda d: None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.world = world            # returns the current World snapshot
        self.decks = decks            # returns {carrier name: RateDeck}
        self.health = health          # HealthBook: .get(carrier) -> CarrierHealth
        self.caps = caps              # CapsGate (switchd/calls/policing.py)
        self.spend = spend            # .remaining(tenant), .reserve(call, tenant, rate), .release
        self.settings = settings
        self.record = record
        self.clock = clock

    # --- entry point ----------------------------------------------------------------------
    def route(self, form: dict) -> Decision:
        started = time.perf_counter()
        try:
            decision = self._rendered(self._decide(form))
        except ValueError as exc:
            # A hostile or broken lookup (a value that cannot be put in a dial string or the
            # XML safely): refuse it rather than fail the request into FreeSWITCH's fallback.
            decision = Decision(id=_uuid4(), call_uuid=_safe_uuid(form),
                                tenant=None, direction="unknown", destination=None,
                                result="refused", reason="")
            self._refuse(decision, "default", "", policy.refusal("bad_number"),
                         f"unusable lookup: {exc}")
            decision = self._rendered(decision)
        decision.elapsed_us = int((time.perf_counter() - started) * 1_000_000)
        metrics.ROUTING_SECONDS.observe(decision.elapsed_us / 1e6)
        metrics.DIALPLAN_REQUESTS.labels(decision.result if decision.result != "refused"
                                         else f"refused_{decision.sip_code}").inc()
        # DEBUG: one line per lookup is the hot path; the routing log (routing_decisions)
        # keeps every decision.
        log.debug("route %s: %s %s -> %s (%s) in %dus", decision.direction, decision.tenant,
                 decision.destination, decision.result, decision.reason, decision.elapsed_us,
                 extra={"call_uuid": decision.call_uuid, "tenant": decision.tenant})
        self.record(decision)
        return decision

    @staticmethod
    def _rendered(decision: Decision) -> Decision:
        """The one place an answer becomes XML: every path of _decide only sets
        decision.answer."""
        decision.xml = answers.render(decision.answer)
        return decision

    def _decide(self, form: dict) -> Decision:
        call_uuid = form.get("Unique-ID") or form.get("Channel-Call-UUID") or ""
        dialled = form.get("Caller-Destination-Number") or form.get("destination_number") or ""
        context = form.get("Caller-Context") or form.get("Hunt-Context") or "default"
        world = self.world()
        decision = Decision(id=_uuid4(), call_uuid=call_uuid, tenant=None,
                            direction="outbound", destination=dialled, result="refused",
                            reason="")
        if form.get("variable_switchd_attempt") and form.get("variable_switchd_route_id"):
            # A failed attempt transferred back (docs/routing.md, failover): the next step.
            return self._continue(decision, world, context, dialled, form)
        if self._is_extension_handoff(form, context, dialled):
            return self._hand_off_extension(decision, form)
        # A dialled DID is an inbound call whatever tenant_from says: its tenant is the
        # DID's (with tenant_from = domain a carrier's To host names no tenant of ours).
        did = _find_did(world, dialled)
        if did is not None:
            return self._route_inbound(decision, world, context, dialled, form, did)
        tenant_key = self._tenant_key(form)
        tenant = self._find_tenant(world, tenant_key) if tenant_key else None
        if tenant_key and tenant is None:
            metrics.UNKNOWN_TENANT.inc()
            return self._refuse(decision, context, dialled, policy.refusal("unknown_tenant"),
                                f"unknown tenant {tenant_key!r}")
        if tenant is None:
            decision.direction = "inbound"
            return self._refuse(decision, context, dialled, policy.refusal("no_route"),
                                "unknown DID")
        decision.tenant = tenant.name
        if not tenant.enabled:
            return self._refuse(decision, context, dialled, policy.refusal("tenant_disabled"),
                                "tenant disabled")
        return self._route_outbound(decision, world, tenant, context, dialled,
                                    extra_vars={"switchd_direction": "outbound"}, form=form)

    # --- tenant resolution -----------------------------------------------------------------
    def _tenant_key(self, form: dict) -> str | None:
        mode = self.settings["tenant_from"]
        if mode == "accountcode":
            return form.get("variable_accountcode") or None
        if mode == "domain":
            return (form.get("variable_domain_name") or form.get("variable_sip_to_host")
                    or form.get("variable_sip_req_host") or None)
        return form.get("variable_" + self.settings["tenant_variable"]) or None

    def _find_tenant(self, world: World, key: str) -> Tenant | None:
        mode = self.settings["tenant_from"]
        if mode == "accountcode":
            found = world.accountcode_index.get(key)
            if found is not None and world.tenants.get(found.name) is not found:
                found = world.tenant_by_accountcode(key)     # the dict changed in place
            return found or world.tenants.get(key)
        if mode == "domain":
            return world.tenant_by_domain(key)
        return world.tenants.get(key)

    # --- inbound: DIDs ---------------------------------------------------------------------
    def _route_inbound(self, decision, world, context, dialled, form, did) -> Decision:
        decision.direction = "inbound"
        tenant = world.tenants.get(did.tenant)
        decision.tenant = did.tenant
        if tenant is None or not tenant.enabled:
            return self._refuse(decision, context, dialled, policy.refusal("tenant_disabled"),
                                "DID's tenant missing or disabled")
        call_vars = {"switchd_tenant": tenant.name, "switchd_route_id": decision.id,
                     "switchd_direction": "inbound"}
        if did.destination_type == "number":
            # Forwarded to the PSTN: the tenant pays, so it is an outbound decision again.
            return self._route_outbound(decision, world, tenant, context, did.destination,
                                        extra_vars={"switchd_direction": "inbound"},
                                        match_dialled=dialled, form=form)
        admission = self.caps.admit(decision.call_uuid, tenant, carrier=None)
        if not admission.admitted:
            refusal = _cap_refusal(admission)
            return self._refuse(decision, context, dialled, refusal, refusal.detail)
        max_s = tenant.max_call_seconds
        call_vars["switchd_max_duration"] = str(max_s)
        settings = self.settings
        mode = settings.get("extension_mode", "transfer")
        target, profile = did.destination, None
        if did.destination_type == "extension" and mode == "transfer":
            # The lookup FreeSWITCH makes for the transfer is answered `not found`
            # (_is_extension_handoff): this variable says which one it is.
            call_vars[HANDOFF_VAR] = did.destination
        elif did.destination_type == "sip_uri":
            profile = (did.profile or settings.get("sip_uri_profile")
                       or form.get("variable_sofia_profile_name") or _any_profile(world))
        decision.answer = answers.Local(
            context, dialled, call_vars, did.destination_type, target, max_s,
            profile=profile or "", extension_mode=mode,
            extension_context=settings.get("extension_context", "default"),
            user_domain=tenant.domain)
        decision.result, decision.reason = "routed", "did"
        decision.chosen = [{"destination_type": did.destination_type, "destination": did.destination}
                           | ({"profile": profile} if profile else {})]
        return decision

    def _is_extension_handoff(self, form: dict, context: str, dialled: str) -> bool:
        """The lookup FreeSWITCH makes for our own `transfer EXT XML <extension_context>`:
        the same channel, now in the extension context, dialling the extension we named."""
        target = form.get("variable_" + HANDOFF_VAR)
        return (target is not None and target == dialled
                and context == self.settings.get("extension_context", "default"))

    def _hand_off_extension(self, decision: Decision, form: dict) -> Decision:
        """`not found`: mod_xml_curl then reads the static dialplan of that context, where
        the operator's extensions live (docs/routing.md, DIDs)."""
        decision.direction = "inbound"
        decision.tenant = form.get("variable_switchd_tenant") or None
        decision.result, decision.reason = "routed", "did_extension_handoff"
        decision.answer = answers.NOT_FOUND
        return decision

    # --- outbound: LCR ---------------------------------------------------------------------
    def _route_outbound(self, decision, world, tenant, context, dialled, extra_vars,
                        match_dialled=None, form=None) -> Decision:
        match_dialled = match_dialled or dialled
        try:
            plan = self.plan(decision, world, tenant, dialled)
        except numbers.SpecialNumber as special:
            return self._route_special(decision, world, tenant, context, match_dialled, special)
        except Refused as refused:
            return self._refuse(decision, context, match_dialled, refused.refusal, refused.reason)
        name, number = callerid.caller_id((form or {}).get("Caller-Caller-ID-Name"),
                                          (form or {}).get("Caller-Caller-ID-Number"))
        first = plan.routes[0]
        call_vars = {"switchd_tenant": tenant.name, "switchd_route_id": decision.id,
                     "switchd_max_duration": str(plan.max_duration), **extra_vars,
                     "switchd_attempt": "1", "switchd_e164": plan.number.e164,
                     "switchd_tried": _leg_name(first),
                     "effective_caller_id_name": name, "effective_caller_id_number": number}
        # One carrier per bridge; a failed attempt comes back to _continue (docs/routing.md).
        # A channel that asks while already answered is a call transferred after its answer
        # (e.g. the callee's side of a caller's blind transfer): its limit starts now.
        decision.answer = answers.Attempt(
            context, match_dialled, call_vars, first, plan.number.e164, plan.max_duration,
            transfer_to=_transfer_target(match_dialled, plan.number.e164),
            answered=(form or {}).get("Answer-State") == "answered")
        return decision

    # --- continuation: a failed attempt asks what next -------------------------------------
    def _continue(self, decision, world, context, dialled, form) -> Decision:
        """FreeSWITCH transferred the call back after attempt N failed: follow the failover
        table (dialplan/failover.py) to the next carrier's bridge or to the caller's answer.
        The call keeps its caps slots; its carrier slot moves to the next carrier here,
        before FreeSWITCH dials it, and a full carrier is passed over like a tried one
        (switchd/calls/policing.py, CapsGate.move_to_carrier)."""
        route_id = form["variable_switchd_route_id"]
        decision.id = _uuid4()
        decision.direction = form.get("variable_switchd_direction") or "outbound"
        tenant = world.tenants.get(form.get("variable_switchd_tenant") or "")
        decision.tenant = tenant.name if tenant is not None else None
        try:
            attempt = int(form["variable_switchd_attempt"])
        except ValueError:
            attempt = self.settings["max_routes"]
        cause = (form.get("variable_originate_disposition")
                 or form.get("variable_last_bridge_hangup_cause") or "")
        tried = (form.get("variable_switchd_tried") or "").split()
        if cause == "SUCCESS":
            return self._transferred_after_answer(decision, context, dialled, route_id, tried)
        sip = (failover.parse_proto_cause(form.get("variable_last_bridge_proto_specific_hangup_cause"))
               or _int(form.get("variable_sip_invite_failure_status")))
        verdict = failover.decide(self.settings.get("failover") or failover.FailoverTable(),
                                  cause, sip)
        what = f"attempt {attempt} via {tried[-1] if tried else '?'}: {cause or '-'}" \
               f"{f' sip {sip}' if sip else ''} -> {verdict.key}: {verdict.action}"
        call_vars = {"switchd_route_id": route_id}
        decision.destination = form.get("variable_switchd_e164") or dialled
        code = failover.caller_code(verdict)
        stop = policy.Refusal(code, failover.cause_for_code(code), "failover_stop", what)
        if verdict.action == failover.STOP:
            return self._refuse(decision, context, dialled, stop, f"failover stop: {what}",
                                call_vars)
        # A leg our own switch failed: the same route once more, after
        # causes.SWITCH_REFUSED_PAUSE_MS, rather than a dearer one at once (which the same
        # throttle would most likely refuse too). Not one of the call's max_routes.
        placed_again = (form.get("variable_switchd_placed_again") or "").split()
        again = failover.route_to_repeat(tried, placed_again, cause, sip)
        routes_left = attempt - len(placed_again) < self.settings["max_routes"]
        if tenant is None or (again is None and not routes_left):
            return self._refuse(decision, context, dialled, stop,
                                f"failover exhausted: {what}", call_vars)
        e164 = form.get("variable_switchd_e164") or ""
        try:
            number = numbers.normalise(e164, tenant.default_region)
        except numbers.InvalidNumber:
            return self._refuse(decision, context, dialled, stop, f"failover: bad number: {what}",
                                call_vars)
        decision.destination = number.e164
        now = self.clock()
        ranked = self.rank(world, tenant, number, now)
        decision.candidates = ranked.considered
        # The route to repeat first, if it is still ranked (healthy, covering), then the
        # untried ones while the call has routes left.
        repeat = [r for r in ranked.routes if _leg_name(r) == again]
        untried = [r for r in ranked.routes if _leg_name(r) not in tried] if routes_left else []
        nxt, full, passed_over = None, set(), []    # carriers at a cap; how each was
        for route in repeat + untried:
            if route.carrier.name in full:
                continue
            moved = self.caps.move_to_carrier(decision.call_uuid, route.carrier)
            if moved.carrier_refused:
                full.add(route.carrier.name)
                passed_over.append(f"{route.carrier.name} ({moved.reason})")
                continue
            # Admitted, or the backend could not say (unavailable, the lease gone): the
            # leg's start moves the slot then, as for any leg (CapsGate.leg_started).
            nxt = route
            break
        if passed_over:
            what += f"; passed over: {', '.join(passed_over)}"
        pause_ms = 0
        if nxt is not None and _leg_name(nxt) == again:
            pause_ms = causes.SWITCH_REFUSED_PAUSE_MS
            call_vars["switchd_placed_again"] = " ".join(placed_again + [again])
            what += f"; our switch failed the leg: {again} once more in {pause_ms} ms"
        if nxt is None:
            refusal = policy.refusal("carriers_full", what) if passed_over else stop
            return self._refuse(decision, context, dialled, refusal,
                                f"failover exhausted: {what}", call_vars)
        # The call's reservation follows it to the next carrier's tariff (docs/budgets.md).
        granted = self.spend.reserve(decision.call_uuid, tenant, nxt.rate)
        max_s = granted if isinstance(granted, policy.Refusal) else \
            policy.decide_duration(None, tenant.max_call_seconds, granted, nxt.rate)
        if isinstance(max_s, policy.Refusal):
            self.spend.release(decision.call_uuid)
            return self._refuse(decision, context, dialled, max_s, max_s.detail, call_vars)
        name, cid = callerid.caller_id(form.get("variable_effective_caller_id_name")
                                       or form.get("Caller-Caller-ID-Name"),
                                       form.get("variable_effective_caller_id_number")
                                       or form.get("Caller-Caller-ID-Number"))
        call_vars.update({"switchd_tenant": tenant.name, "switchd_max_duration": str(max_s),
                          "switchd_direction": decision.direction,
                          "switchd_attempt": str(attempt + 1), "switchd_e164": number.e164,
                          "switchd_tried": " ".join(tried if pause_ms
                                                    else tried + [_leg_name(nxt)]),
                          "effective_caller_id_name": name,
                          "effective_caller_id_number": cid})
        decision.answer = answers.Attempt(context, dialled, call_vars, nxt, number.e164, max_s,
                                          transfer_to=_transfer_target(dialled, number.e164),
                                          pause_ms=pause_ms)
        if pause_ms:
            metrics.SWITCH_REFUSED_LEGS.labels("dialplan").inc()
        decision.result, decision.reason = "routed", f"failover: {what}"
        decision.chosen = [{"carrier": nxt.carrier.name, "gateway": nxt.gateway.name,
                            "prefix": nxt.rate.prefix, "rate": str(nxt.rate.rate_per_min),
                            "attempt": attempt + 1, "after": verdict.key}]
        return decision

    def rank(self, world, tenant, number, now) -> lcr.RankResult:
        """The carriers for a number, ranked (dialplan/lcr.py), from the decks, health and
        gateways as they are now; also what the API's route preview shows."""
        decks = self.decks()
        carriers = list(world.carriers.values())
        # One parse of the number for every deck (ratedeck.lookup_all); carriers without
        # a deck get no rate.
        with_deck = [(c, decks[c.name]) for c in carriers if c.name in decks]
        rates = dict(zip([c.name for c, _ in with_deck],
                         lookup_all([d for _, d in with_deck], number.digits, now)))
        health, down = self.health, self.health.down_gateways
        candidates = [lcr.candidate(carrier, rates.get(carrier.name), health.get(carrier.name),
                                    down)
                      for carrier in carriers]
        return lcr.rank(candidates, tenant, now, max_routes=self.settings["max_routes"],
                        cooldown_s=self.settings["health_cooldown"])

    def plan(self, decision: Decision, world: World, tenant: Tenant, dialled: str,
             campaign=None) -> "Plan":
        """Number, policy, budget, LCR, caps and max duration for one outbound call; the
        slots are held on success. Raises Refused (or numbers.SpecialNumber)."""
        try:
            number = numbers.normalise(dialled, tenant.default_region)
        except numbers.InvalidNumber as exc:
            raise Refused(policy.refusal("bad_number"), str(exc)) from None
        decision.destination = number.e164
        refusal = policy.check_destination(tenant, number)
        if refusal:
            raise Refused(refusal, refusal.reason)
        remaining = self.spend.remaining(tenant)
        if remaining is not None and remaining <= 0:
            raise Refused(policy.refusal("budget_exhausted"), "monthly budget exhausted")
        now = self.clock()
        ranked = self.rank(world, tenant, number, now)
        decision.candidates = ranked.considered
        if not ranked.routes:
            raise Refused(policy.refusal("no_route"), lcr.no_route_reason(ranked.considered))
        routes, admission = self._admit_first_available(decision.call_uuid, tenant,
                                                        ranked.routes, campaign)
        if not admission.admitted:
            refusal = _cap_refusal(admission)
            raise Refused(refusal, refusal.detail)
        # The call's share of the month (docs/budgets.md): live calls reserve, so parallel
        # calls never each get the whole remaining budget.
        granted = self.spend.reserve(decision.call_uuid, tenant, routes[0].rate, now)
        max_s = granted if isinstance(granted, policy.Refusal) else \
            policy.decide_duration(None, tenant.max_call_seconds, granted, routes[0].rate)
        if isinstance(max_s, policy.Refusal):
            self.caps.release_now(decision.call_uuid)
            self.spend.release(decision.call_uuid)
            raise Refused(max_s, max_s.detail)
        decision.result, decision.reason = "routed", ranked.reason
        decision.chosen = [{"carrier": r.carrier.name, "gateway": r.gateway.name,
                            "prefix": r.rate.prefix, "rate": str(r.rate.rate_per_min)}
                           for r in routes]
        return Plan(number=number, routes=routes, max_duration=max_s)

    def _admit_first_available(self, call_uuid, tenant, routes, campaign=None):
        """Take the slots for the first choice; a full carrier is dropped and the next tried.
        Alternates' carrier slots are taken only if FreeSWITCH fails over to them."""
        while True:
            first = routes[0]
            admission = self.caps.admit(call_uuid, tenant, carrier=first.carrier, campaign=campaign)
            if not admission.carrier_refused:
                return routes, admission
            remaining = [r for r in routes if r.carrier.name != admission.refused_scope.name]
            if not remaining:
                return routes, admission
            routes = remaining

    def _route_special(self, decision, world, tenant, context, dialled, special) -> Decision:
        gateway = self.settings.get("emergency_gateway")
        if special.kind == "emergency" and gateway:
            call_vars = {"switchd_tenant": tenant.name, "switchd_route_id": decision.id,
                         "switchd_direction": "outbound", "switchd_max_duration": str(tenant.max_call_seconds)}
            legs = [xml_answer.BridgeLeg(gateway=gateway, number=special.digits,
                                         vars={"switchd_carrier": "emergency"})]
            decision.answer = answers.Bridge(context, dialled, call_vars, legs,
                                             tenant.max_call_seconds)
            decision.result, decision.reason = "routed", "emergency"
            return decision
        return self._refuse(decision, context, dialled, policy.refusal("special_number"),
                            f"{special.kind} number has no explicit route")

    # --- refusals --------------------------------------------------------------------------
    @staticmethod
    def _transferred_after_answer(decision, context, dialled, route_id, tried) -> Decision:
        """The call's attempt was answered (originate_disposition SUCCESS, set by that
        bridge) and the call came back to the dialplan all the same: something transferred
        the answered call, to `dialled` (a carrier's REFER: FreeSWITCH blind-transfers the
        caller to its Refer-To; a uuid_transfer). It is no failed attempt: failing over
        would ring the callee again through the next carrier and charge the carrier that
        answered; following the transfer would place a call to a number nobody routed, at
        our cost. The caller's call ends here (docs/routing.md §4a)."""
        carrier = tried[-1] if tried else "?"
        decision.result = "transfer_refused"
        decision.reason = (f"transferred after answer: {carrier} answered; the transfer to "
                           f"{dialled or '?'} is not followed")
        log.warning("call transferred after its answer by %s (to %s): not followed, the call "
                    "ends", carrier, dialled or "?",
                    extra={"call_uuid": decision.call_uuid, "tenant": decision.tenant})
        decision.answer = answers.HangUp(context, dialled, "NORMAL_CLEARING",
                                         {"switchd_route_id": route_id})
        return decision

    def _refuse(self, decision, context, dialled, refusal, reason, call_vars=None) -> Decision:
        decision.result = "refused"
        decision.reason = reason
        decision.sip_code = refusal.sip_code
        # The refused call's CDR and switchd_calls_total take their direction (and tenant)
        # from these variables: the caller's A-leg is "inbound" to FreeSWITCH whatever the
        # call is.
        call_vars = dict(call_vars or {"switchd_route_id": decision.id})
        call_vars.setdefault("switchd_direction", decision.direction)
        if decision.tenant:
            call_vars.setdefault("switchd_tenant", decision.tenant)
        decision.answer = answers.Refuse(context, dialled, refusal, call_vars)
        return decision


def _cap_refusal(admission) -> "policy.Refusal":
    """The routing log's reason names the scope: 'cap reached: tenant acme', not just 'cap'."""
    scope = admission.refused_scope
    if scope is None or scope.kind == "backend":
        return policy.refusal("caps_unavailable", admission.reason)
    detail = f"{admission.reason}: {scope.kind} {scope.name}"
    if scope.kind == "carrier":
        return policy.refusal("carriers_full", detail)
    return policy.refusal("cap_reached", detail)


def _uuid4() -> str:
    """str(uuid.uuid4()) without the UUID object: 16 bytes from os.urandom with the
    version (4) and RFC 4122 variant bits set, in the canonical 8-4-4-4-12 form."""
    n = int.from_bytes(os.urandom(16), "big")
    n = (n & _UUID_CLEAR) | _UUID_SET
    h = "%032x" % n
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def _safe_uuid(form: dict) -> str:
    value = form.get("Unique-ID") or ""
    return value if len(value) <= 64 and all(c.isalnum() or c == "-" for c in value) else ""


HANDOFF_VAR = "switchd_did_extension"


def _leg_name(route) -> str:
    """How switchd_tried names an attempted route: `carrier/gateway` (a carrier with two
    gateways gets both tried, in rank order, as FreeSWITCH's own `|` list did)."""
    return f"{route.carrier.name}/{route.gateway.name}"


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _transfer_target(dialled: str, e164: str) -> str:
    """Where a failed attempt transfers to: the dialled string when it is a plain extension
    (the continuation then matches the same condition), else the E.164 number. The
    continuation is recognised by switchd_route_id/switchd_attempt, not by the number."""
    ok = isinstance(dialled, str) and 0 < len(dialled) <= 64 and all(
        ch.isascii() and (ch.isalnum() or ch in "_*#+.-") for ch in dialled)
    return dialled if ok else e164


def _find_did(world: World, dialled: str):
    """The DID for a dialled string: as given ('+4420...'), or its digits with a '+'."""
    dids = world.dids
    if not dids:
        return None
    did = dids.get(dialled)
    if did is not None:
        return did
    bare = dialled[1:] if dialled[:1] == "+" else dialled
    digits = bare if bare.isdigit() else "".join(ch for ch in dialled if ch.isdigit())
    return dids.get("+" + digits) if digits else None


def _any_profile(world: World) -> str | None:
    """The sofia profile of the first enabled gateway (carriers by name): a profile that
    exists, for a SIP-URI DID when nothing more specific names one."""
    for carrier in world.carriers.values():
        for gateway in carrier.gateways:
            if gateway.enabled and gateway.profile:
                return gateway.profile
    return None
