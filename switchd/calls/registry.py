"""Live calls and their legs: a pure state machine fed typed ESL events (STYLE.md §5).

No sockets, no clock: times come from events or parameters. `CallRegistry.apply(event)`
returns effects (frozen dataclasses holding *snapshots*, so a writer reading them later
sees the values of that moment). Legs and calls are separate machines: leg transitions
come from events (LEG_TRANSITIONS); call transitions come from leg transitions
(CALL_TRANSITIONS). Heuristics that the captures forced on us, in one place:

- A leg joins a call, once, at first sight, by the first that is known of: its
  Channel-Call-UUID (when not its own UUID), its Other-Leg-Unique-ID, its
  `switchd_route_id` (failover attempts of one originate get fresh UUIDs from FreeSWITCH
  but share the `{}` variables). Needed because a B-leg's CHANNEL_OUTGOING and, in capture
  a, even its HANGUP_COMPLETE carry Channel-Call-UUID = its own UUID.
- A call ends when its A-leg (UUID = call UUID) and every known leg have completed; legs
  can complete in either order (b: failed carrier leg first; a/c: B-leg before the A-leg).
  An originate announced with `expect_originate` also waits for `originate_finished`.
- Ended calls stay findable (bounded tombstones), so duplicates and stragglers after the
  end never emit a second CallEnded; a straggler leg still gets its LegEnded (rating).
- A transfer: a new leg whose Channel-Call-UUID is another call's *carrier* leg (the
  callee's leg, which a caller's blind transfer sent into the dialplan: switchd routed
  it, keyed by that leg's UUID) is a leg of a call of its own, keyed by that UUID. The
  transferred leg stays a leg of the first call (its carrier bills it there) and heads
  the new one as a placeholder A-leg, which follows it (call-wide variables, its end).
- CHANNEL_UUID: the old UUID is `event.vars['Old-Unique-ID']` (what switchd.adapters.esl.events
  puts there) or `event.vars['old_unique_id']`, else `event.other_leg_uuid`.
"""
from __future__ import annotations

import logging
from collections import Counter, OrderedDict

from dialplan import failover
from switchd.adapters.esl.events import ChannelEvent
from switchd.calls.model import (Call, CallAnswered, CallEnded, CallRenamed, CallStarted,
                                 CarrierOutcome, Effect, Leg, LegEnded, MONEY_HEADERS,
                                 origin_of)
from switchd.calls.reconcile import Reconciliation

log = logging.getLogger(__name__)

OLD_UUID_KEYS = ("Old-Unique-ID", "old_unique_id")   # in ChannelEvent.vars, CHANNEL_UUID
# A carrier leg's own variables (its dial string's): the rest of a leg's switchd_* are
# call-wide (`set` by a routing answer on the channel).
CARRIER_LEG_VARS = frozenset({"switchd_carrier", "switchd_rate", "switchd_connect_fee",
                              "switchd_increments", "switchd_prefix"})


class RegistryError(Exception):
    """An event that cannot apply to what we know (impossible transition, no UUID)."""


# --- leg machine --------------------------------------------------------------------
# FreeSWITCH event names that mean the same step to a leg.
EVENT_KIND = {
    "CHANNEL_CREATE": "create", "CHANNEL_OUTGOING": "create", "CHANNEL_ORIGINATE": "create",
    "CHANNEL_PROGRESS": "progress", "CHANNEL_PROGRESS_MEDIA": "progress",
    "CHANNEL_ANSWER": "answer", "CHANNEL_BRIDGE": "bridge", "CHANNEL_UNBRIDGE": "unbridge",
    "CHANNEL_HANGUP": "hangup", "CHANNEL_HANGUP_COMPLETE": "complete",
    "CHANNEL_DESTROY": "destroy", "CHANNEL_UUID": "rename",
}
# Earlier steps arriving late (reorder, duplicates) keep the state; "-" = impossible:
# FreeSWITCH never creates, rings or answers a channel that has hung up.
_LEG_GRID = """
state     create    progress  answer    bridge    unbridge  hangup    complete  destroy   rename
created   created   ringing   answered  bridged   created   hungup    complete  hungup    created
ringing   ringing   ringing   answered  bridged   ringing   hungup    complete  hungup    ringing
answered  answered  answered  answered  bridged   answered  hungup    complete  hungup    answered
bridged   bridged   bridged   bridged   bridged   answered  hungup    complete  hungup    bridged
hungup    -         -         -         -         hungup    hungup    complete  hungup    hungup
complete  -         -         -         -         complete  complete  complete  complete  complete
"""
_HEAD, *_ROWS = [line.split() for line in _LEG_GRID.strip().splitlines()]
LEG_STATES = tuple(row[0] for row in _ROWS)
LEG_TRANSITIONS: dict[tuple[str, str], str] = {
    (row[0], name): row[_HEAD.index(kind)]
    for row in _ROWS for name, kind in EVENT_KIND.items() if row[_HEAD.index(kind)] != "-"
}

# --- call machine: driven by leg steps ------------------------------------------------
CALL_TRANSITIONS: dict[tuple[str, str], str] = {
    ("setup", "answer"): "answered", ("setup", "a_leg_done"): "ending", ("setup", "end"): "ended",
    ("answered", "answer"): "answered", ("answered", "a_leg_done"): "ending",
    ("answered", "end"): "ended",
    ("ending", "answer"): "ending", ("ending", "a_leg_done"): "ending", ("ending", "end"): "ended",
}


def _creation_order(leg: Leg) -> tuple[bool, int]:
    """Legs by creation time, unknown times (0) last."""
    return leg.created_us == 0, leg.created_us


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class CallRegistry(Reconciliation):
    """Live calls fed by events; resync and sweep for lost events: reconcile.py."""

    def __init__(self, tombstones: int = 20_000):
        self._calls: dict[str, Call] = {}
        self._legs: dict[str, Leg] = {}
        self._by_route: dict[str, str] = {}
        self._aliases: dict[str, str] = {}          # old call UUID -> current, live calls
        self._awaiting: set[str] = set()            # originates whose job is outstanding
        self._originates: dict[str, str] = {}       # route id -> call UUID, announced
        self._tomb: OrderedDict[str, Call] = OrderedDict()   # ended: leg/call/route keys
        self._tomb_max = tombstones
        self.counters: Counter[str] = Counter()

    # --- queries ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._calls)

    def live_calls(self, tenant: str | None = None) -> list[Call]:
        """Snapshots of the live calls, of one tenant's only when `tenant` is given: a
        tenant's request copies its own calls, not every call on the switch."""
        if tenant is None:
            return [c.snapshot() for c in self._calls.values()]
        return [c.snapshot() for c in self._calls.values() if c.tenant == tenant]

    # The periodic jobs want a figure or the UUIDs, not the calls: these read the live
    # calls in place. Snapshots of every call took 42 ms with 5,000 calls up, and a job
    # built on live_calls() stopped lookups and events that long each time it ran.
    def live_call_uuids(self) -> list[str]:
        return list(self._calls)

    def live_by_tenant_and_carrier(self) -> Counter[tuple[str, str]]:
        """Live calls per (tenant, carrier), '-' for none."""
        return Counter((c.tenant or "-", c.carrier or "-") for c in self._calls.values())

    def live_of_tenant(self, tenant: str) -> int:
        return sum(1 for c in self._calls.values() if c.tenant == tenant)

    def get(self, call_uuid: str) -> Call | None:
        call = self._calls.get(self._aliases.get(call_uuid, call_uuid))
        return call.snapshot() if call else None

    def knows_leg(self, uuid: str) -> bool:
        """Whether a channel of this UUID was seen, up or ended (while its call's
        tombstones last)."""
        return self._lookup(uuid) is not None

    def leg(self, uuid: str) -> Leg | None:
        leg = self._legs.get(uuid)
        return leg.snapshot() if leg else None

    def set_max_duration(self, call_uuid: str, seconds: int) -> None:
        """The call's limit was moved on the switch (a budget extension sets
        `switchd_max_duration` there too): the watchdog follows the new one."""
        call = self._calls.get(self._aliases.get(call_uuid, call_uuid))
        if call is None:
            return
        for leg in call.legs:
            if "switchd_max_duration" in leg.vars:
                leg.vars["switchd_max_duration"] = str(seconds)
        call.max_duration = seconds

    def leg_routed_again(self, uuid: str, call_vars: dict) -> None:
        """A live leg, answered before, was routed again: the call-wide variables its new
        routing `set` on the channel, known now. FreeSWITCH reports them only with that
        leg's next event, for a transferred leg its hangup: until then the call it heads
        (the transfer, module doc) would have no tenant and no limit."""
        leg = self._legs.get(uuid)
        if leg is None or leg.state == "complete":
            return
        leg.vars.update((k, str(v)) for k, v in call_vars.items()
                        if k.startswith("switchd_") and k not in CARRIER_LEG_VARS)
        self._refresh(self._calls[leg.call_uuid])
        self._transfer_follows(leg)

    def answered_calls_over_limit(self, now_us: int, grace_s: int) -> list[Call]:
        """Answered calls past answer + max_duration + grace: the watchdog kills these.
        A call whose A-leg has ended counts while an answered leg of it is up: after an
        attended transfer the carrier legs talk on, and the `sched_hangup` that would have
        cut them went with the A-leg."""
        return [c.snapshot() for c in self._calls.values()
                if c.max_duration is not None and c.answered_us
                and c.answered_us + (c.max_duration + grace_s) * 1_000_000 < now_us
                and (c.state == "answered" or c.state == "ending" and any(
                    l.answered_us and l.state != "complete" for l in c.legs))]

    # --- originate bookkeeping ---------------------------------------------------------
    def expect_originate(self, call_uuid: str, route_id: str | None = None) -> None:
        """An originate for call_uuid is under way (switchd/calls/originate.py: one bgapi per
        carrier attempt, legs sharing `switchd_route_id`): until `originate_finished`, a
        failed attempt does not end the call, and any attempt's leg joins call_uuid."""
        self._awaiting.add(call_uuid)
        if route_id:
            self._originates[route_id] = call_uuid

    def originate_finished(self, call_uuid: str) -> list[Effect]:
        """The last attempt's result arrived (or can never arrive: call it on disconnect)."""
        self._awaiting.discard(call_uuid)
        call = self._calls.get(call_uuid)
        return self._maybe_end(call) if call else []

    # --- events ----------------------------------------------------------------------
    def apply(self, event: ChannelEvent) -> list[Effect]:
        """Never raises for bad input: an event that cannot apply is logged, counted and
        yields no effects (RegistryError is caught here; anything else is our bug)."""
        self.counters["events"] += 1
        if event.name not in EVENT_KIND:
            self.counters["ignored"] += 1
            return []
        try:
            return self._apply(event)
        except RegistryError as exc:
            self.counters["rejected"] += 1
            log.warning("registry rejected %s uuid=%s seq=%s: %s",
                        event.name, event.uuid, event.sequence, exc)
            return []

    def _apply(self, ev: ChannelEvent) -> list[Effect]:
        if not ev.uuid:
            raise RegistryError("event without Unique-ID")
        effects: list[Effect] = []
        if ev.name == "CHANNEL_UUID":
            effects += self._rename(ev)
        call, leg, late = self._locate(ev, effects)
        if (leg.state == "complete" and leg.reconstructed
                and ev.name == "CHANNEL_HANGUP_COMPLETE"):
            return effects + self._settle(call, leg, ev)
        new = LEG_TRANSITIONS.get((leg.state, ev.name))
        if new is None:
            raise RegistryError(f"leg {leg.uuid}: {ev.name} impossible in state {leg.state}")
        if late:
            self.counters["late"] += 1
        old = leg.state
        answered_before = leg.answered_us
        leg.last_event_us = max(leg.last_event_us, ev.timestamp_us)
        if old != "complete":         # nothing after HANGUP_COMPLETE overrides what it said
            self._absorb(leg, ev)
        leg.state = new
        if new in ("hungup", "complete") and not leg.hangup_us:
            leg.hangup_us = ev.timestamp_us
        self._refresh(call)
        if not answered_before and leg.answered_us and self._carrier_leg(leg):
            # The carrier's success is its answer: told now, not at the end of the call,
            # so a carrier's failures are never counted "consecutive" across answers
            # whose calls are still up.
            effects.append(CarrierOutcome(leg.carrier, leg.snapshot(), True,
                                          leg.hangup_cause, leg.sip_status))
        if new != old:
            effects += self._leg_changed(call, leg, old, new, late)
        transfer = self._transfer_follows(leg)
        if transfer is not None and new == "complete":
            effects += self._maybe_end(transfer)
        return effects

    @staticmethod
    def _carrier_leg(leg: Leg) -> bool:
        """A leg whose outcome moves its carrier's health."""
        return bool(leg.carrier) and leg.direction == "outbound" and not leg.reconstructed

    def _settle(self, call: Call, leg: Leg, ev: ChannelEvent) -> list[Effect]:
        """The real HANGUP_COMPLETE of a leg we closed without it (resync, sweep): its
        facts replace the guesses and it is rated again (LegEnded; the writer's rank lets a
        real leg row replace the provisional one and recomputes the call's money)."""
        self.counters["settled"] += 1
        leg.hangup_us, leg.hangup_cause = 0, None     # the guesses, not facts
        self._absorb(leg, ev)
        leg.reconstructed = False
        leg.last_event_us = max(leg.last_event_us, ev.timestamp_us)
        return [LegEnded(leg.snapshot(), call.snapshot())]

    def _rename(self, ev: ChannelEvent) -> list[Effect]:
        old = next((ev.vars[k] for k in OLD_UUID_KEYS if ev.vars.get(k)), ev.other_leg_uuid)
        leg = self._legs.get(old) if old else None
        if leg is None or ev.uuid in self._legs:
            return []                 # unknown old UUID: the event just describes ev.uuid
        self.counters["renamed"] += 1
        del self._legs[old]
        leg.uuid = ev.uuid
        self._legs[ev.uuid] = leg
        call = self._calls[leg.call_uuid]
        if call.call_uuid != old:
            return []                 # a B-leg: the call key (and its caps leases) stays
        del self._calls[old]
        call.call_uuid = ev.uuid
        call.aliases.append(old)
        for l in call.legs:
            l.call_uuid = ev.uuid
        self._calls[ev.uuid] = call
        self._aliases[old] = ev.uuid
        if call.route_id:
            self._by_route[call.route_id] = ev.uuid
        if old in self._awaiting:
            self._awaiting.discard(old)
            self._awaiting.add(ev.uuid)
        return [CallRenamed(old, ev.uuid)]

    def _lookup(self, key: str | None) -> tuple[Call, bool] | None:
        """The call that `key` (a call or leg UUID) belongs to, and whether it has ended."""
        if not key:
            return None
        key = self._aliases.get(key, key)
        leg = self._legs.get(key)
        if leg is not None:
            return self._calls[leg.call_uuid], False
        if key in self._tomb:
            return self._tomb[key], True
        return None

    def _locate(self, ev: ChannelEvent, effects: list[Effect]) -> tuple[Call, Leg, bool]:
        leg = self._legs.get(ev.uuid)
        if leg is not None:
            return self._calls[leg.call_uuid], leg, False
        found = self._lookup(ev.uuid)
        if found and found[0].leg(ev.uuid):
            return found[0], found[0].leg(ev.uuid), True
        self.counters["legs_created"] += 1
        own = ev.call_uuid if ev.call_uuid and ev.call_uuid != ev.uuid else None
        if own is not None and self._heads_transfer(own):
            return self._transfer_leg(own, ev, effects)
        route = ev.vars.get("switchd_route_id")
        found = (self._lookup(own) or self._lookup(ev.other_leg_uuid)
                 or self._lookup(self._by_route.get(route or "")) 
                 or (self._lookup("route:" + route) if route else None))
        leg = Leg(uuid=ev.uuid, call_uuid="")
        announced = self._originates.get(route or "")
        if found is None and announced is not None:
            # An originate attempt whose call has no leg yet (the first attempt may never
            # have made a channel): the call is keyed by the UUID its caps slots hold.
            call = Call(call_uuid=announced, originated=True)
            self._calls[announced] = call
            self._add_leg(call, leg, False)
            effects.append(CallStarted(call.snapshot()))
            return call, leg, False
        if found is None:
            # Outbound with only Other-Leg set: a B-leg first seen by CHANNEL_OUTGOING or
            # a late HANGUP_COMPLETE (capture a): its partner is the A-leg.
            key = own or (ev.other_leg_uuid if ev.direction == "outbound" else None) or ev.uuid
            call = Call(call_uuid=key)
            self._calls[key] = call
            if key != ev.uuid:
                self._add_leg(call, Leg(uuid=key, call_uuid=key, placeholder=True), False)
            self._add_leg(call, leg, False)
            effects.append(CallStarted(call.snapshot()))
            return call, leg, False
        call, late = found
        self._add_leg(call, leg, late)
        return call, leg, late

    def _heads_transfer(self, uuid: str) -> bool:
        """Is `uuid` a live carrier leg of another call (so a leg created under it belongs
        to a transfer of that leg, not to the call)?"""
        leg = self._legs.get(uuid)
        return (leg is not None and leg.call_uuid != uuid and leg.direction == "outbound"
                and leg.state != "complete")

    def _transfer_leg(self, head: str, ev: ChannelEvent, effects: list[Effect]
                      ) -> tuple[Call, Leg, bool]:
        """A leg of the call a transferred leg heads (module doc), created at its first."""
        self.counters["transfer_legs"] += 1
        call = self._calls.get(head)
        leg = Leg(uuid=ev.uuid, call_uuid="")
        if call is None:
            call = Call(call_uuid=head)
            self._calls[head] = call
            # Not in self._legs: the transferred leg's events are its first call's.
            call.legs.append(Leg(uuid=head, call_uuid=head, placeholder=True))
            self._follow_head(call, self._legs[head])
            self._add_leg(call, leg, False)
            self._refresh(call)          # its tenant, as far as its head's routing told us
            effects.append(CallStarted(call.snapshot()))
            return call, leg, False
        self._add_leg(call, leg, False)
        return call, leg, False

    def _transfer_follows(self, leg: Leg) -> Call | None:
        """The call `leg` heads, if it heads a transfer (not its own call), brought up to
        date with it; None otherwise."""
        transfer = self._calls.get(leg.uuid) if leg.uuid != leg.call_uuid else None
        if transfer is not None:
            self._follow_head(transfer, leg)
            self._refresh(transfer)
        return transfer

    @staticmethod
    def _follow_head(transfer: Call, head: Leg) -> None:
        """The transfer's placeholder A-leg takes its head's call-wide variables (the
        transfer's routing `set` them on that channel), destination and end; not its
        carrier's variables nor its answer (the head's carrier bills it in its first call)."""
        a = transfer.a_leg
        a.vars.update((k, v) for k, v in head.vars.items() if k not in CARRIER_LEG_VARS)
        a.caller, a.destination = head.caller or a.caller, head.destination or a.destination
        if head.state == "complete":
            a.state, a.hangup_us, a.hangup_cause = "complete", head.hangup_us, head.hangup_cause

    def _add_leg(self, call: Call, leg: Leg, late: bool) -> None:
        leg.call_uuid = call.call_uuid
        call.legs.append(leg)
        if late:
            self._entomb(leg.uuid, call)
        else:
            self._legs[leg.uuid] = leg

    @staticmethod
    def _absorb(leg: Leg, ev: ChannelEvent) -> None:
        leg.placeholder = False
        leg.direction = ev.direction or leg.direction
        leg.gateway = ev.gateway or leg.gateway
        leg.vars.update((k, v) for k, v in ev.vars.items() if k not in OLD_UUID_KEYS)
        leg.carrier = leg.vars.get("switchd_carrier") or leg.gateway
        leg.created_us = leg.created_us or ev.created_us or ev.timestamp_us
        # FreeSWITCH's own answer time beats a resync estimate.
        leg.answered_us = ev.answered_us or leg.answered_us
        progress = ev.progress_us or (ev.timestamp_us if EVENT_KIND[ev.name] == "progress" else 0)
        if progress and (not leg.progress_us or progress < leg.progress_us):
            leg.progress_us = progress
        leg.hangup_us = ev.hangup_us or leg.hangup_us
        leg.hangup_cause = ev.hangup_cause or leg.hangup_cause
        leg.sip_status = ev.sip_status if ev.sip_status is not None else leg.sip_status
        leg.billmsec = ev.billmsec if ev.billmsec is not None else leg.billmsec
        leg.billsec = ev.billsec if ev.billsec is not None else leg.billsec
        leg.hangup_disposition = ev.hangup_disposition or leg.hangup_disposition
        if ev.refused:
            leg.refused = leg.refused | {MONEY_HEADERS[h] for h in ev.refused
                                         if h in MONEY_HEADERS}
        leg.caller = ev.caller_number or leg.caller
        leg.destination = ev.destination_number or leg.destination

    def _refresh(self, call: Call) -> None:
        """Recompute the call's derived fields from its legs (after every event: one pass
        over the legs for the A-leg, the carrier legs, the winner and the first answer)."""
        legs = call.legs
        if len(legs) > 1:
            legs.sort(key=_creation_order)          # stable
        a = None
        merged: dict[str, str] = {}
        carrier_legs: list[Leg] = []
        winner = None
        answered_us = 0
        for l in legs:
            if a is None and l.uuid == call.call_uuid:
                a = l
            else:
                merged.update(l.vars)
            if l.answered_us and (not answered_us or l.answered_us < answered_us):
                answered_us = l.answered_us
            if l.carrier and l.direction == "outbound":
                carrier_legs.append(l)
                if winner is None and l.answered_us:
                    winner = l
        if a is not None:
            merged.update(a.vars)     # call-wide variables are set on the A-leg
            call.caller = a.caller or call.caller
            call.destination = a.destination or call.destination
            call.started_us = a.created_us or call.started_us
            call.ended_us, call.hangup_cause = a.hangup_us, a.hangup_cause
        call.started_us = call.started_us or min(
            (l.created_us for l in legs if l.created_us), default=0)
        call.tenant = merged.get("switchd_tenant", call.tenant)
        call.route_id = merged.get("switchd_route_id", call.route_id)
        call.campaign = merged.get("switchd_campaign", call.campaign)
        origin = origin_of(merged)
        if origin is not None:
            call.origin_call, call.origin_attempt = origin[0], origin[1] or call.origin_attempt
        call.max_duration = _int_or_none(merged.get("switchd_max_duration")) or call.max_duration
        call.attempts = len(carrier_legs)
        call.first_choice_carrier = carrier_legs[0].carrier if carrier_legs else None
        call.carrier = winner.carrier if winner else None
        call.gateway = winner.gateway if winner else None
        call.answered_us = answered_us
        if call.originated or (call.call_uuid in self._awaiting and a is not None
                               and a.direction == "outbound"):
            call.originated = True
            # No A-leg of ours: the call ended as its answered attempt did, else its last.
            last = winner or (carrier_legs[-1] if carrier_legs else None)
            if last is not None:
                call.ended_us, call.hangup_cause = last.hangup_us, last.hangup_cause
        # Without switchd_direction: we dialled a carrier, or originated, → outbound.
        call.direction = merged.get("switchd_direction") or (
            "outbound" if carrier_legs or (a and a.direction == "outbound" and not a.placeholder)
            else "inbound")
        if call.route_id and call.state != "ended" and call.call_uuid in self._calls:
            self._by_route.setdefault(call.route_id, call.call_uuid)

    def _call_step(self, call: Call, step: str) -> bool:
        """Apply a call-level step; True when the call's state changed."""
        new = CALL_TRANSITIONS.get((call.state, step))
        if new is None:
            raise RegistryError(f"call {call.call_uuid}: {step} impossible in {call.state}")
        changed, call.state = new != call.state, new
        return changed

    def _leg_changed(self, call: Call, leg: Leg, old: str, new: str, late: bool) -> list[Effect]:
        effects: list[Effect] = []
        if late:
            pass                      # the call is over; only the leg's own facts count
        elif new in ("answered", "bridged") and old in ("created", "ringing"):
            if self._call_step(call, "answer") and call.state == "answered":
                effects.append(CallAnswered(call.snapshot(), leg.snapshot()))
        if new == "complete":
            # One snapshot of the call; the leg's is the one inside it (snapshots are read
            # only, so the two effects share it).
            snapshot = call.snapshot()
            ended = next(l for l in snapshot.legs if l.uuid == leg.uuid)
            effects.append(LegEnded(ended, snapshot))
            if self._carrier_leg(leg) and (not leg.answered_us
                                           or failover.failed_after_answer(leg.hangup_cause)):
                # An unanswered attempt (an answered one was told at its answer), or an
                # answered one the carrier then failed (its RTP stopped).
                effects.append(CarrierOutcome(leg.carrier, ended, bool(leg.answered_us),
                                              leg.hangup_cause, leg.sip_status))
            if not late:
                effects += self._maybe_end(call)
        return effects

    def _maybe_end(self, call: Call) -> list[Effect]:
        if call.originated:
            return self._maybe_end_originated(call)
        a = call.a_leg
        if a is None or a.state != "complete" or call.call_uuid in self._awaiting:
            return []
        self._call_step(call, "a_leg_done")
        if any(l.state != "complete" for l in call.legs):
            return []                 # e.g. the A-leg completed before its B-leg (a, c)
        self._call_step(call, "end")
        self._retire(call)
        return [CallEnded(call.snapshot())]

    def _maybe_end_originated(self, call: Call) -> list[Effect]:
        """Every attempt's leg is its own: the call ends when no attempt is outstanding
        and every leg has completed."""
        if call.call_uuid in self._awaiting or any(l.state != "complete" for l in call.legs):
            return []
        self._call_step(call, "a_leg_done")
        self._call_step(call, "end")
        self._retire(call)
        return [CallEnded(call.snapshot())]

    def _entomb(self, key: str, call: Call) -> None:
        self._tomb[key] = call
        self._tomb.move_to_end(key)
        while len(self._tomb) > self._tomb_max:
            self._tomb.popitem(last=False)

    def _retire(self, call: Call) -> None:
        del self._calls[call.call_uuid]
        for l in call.legs:
            self._legs.pop(l.uuid, None)
            self._entomb(l.uuid, call)
        for old in call.aliases:
            self._aliases.pop(old, None)
            self._entomb(old, call)
        if call.route_id:
            self._originates.pop(call.route_id, None)
            if self._by_route.get(call.route_id) == call.call_uuid:
                del self._by_route[call.route_id]
            self._entomb("route:" + call.route_id, call)
        self._awaiting.discard(call.call_uuid)
