"""When events never come: resync from `show channels as json`, and the sweep.

Pure: parsing and grouping of FreeSWITCH's `show channels as json` / `show calls as json`
replies (channels.py parses them), and the reconciliation CallRegistry inherits from
`Reconciliation` (its methods work on the registry's internals; they live here to keep
registry.py readable). What the FreeSWITCH 1.10 captures in
tests/fixtures/freeswitch-1.10/esl-api.txt show, and the heuristics built on it:

- Empty: `{"row_count": 0}` with no "rows" key. All values are strings; `created_epoch`
  is whole seconds (so adopted legs have second resolution).
- Each row has `call_uuid`: the A-leg's UUID for both legs of a bridge, its own UUID for a
  lone originated leg. Rows group into calls by it. Should it be missing or empty (other
  versions, custom formats), `show calls as json` relates them: `uuid` is the A-leg,
  `b_uuid` the B-leg (`parse_show_calls_json` → {leg: call}); else a row is its own call.
- Leg state comes from `callstate` (DOWN, RINGING, EARLY, ACTIVE, HELD, HANGUP, ...);
  two ACTIVE legs of one call count as bridged. An adopted answered leg's answer time is
  its creation time (the earliest possible) until an event carries FreeSWITCH's own.
- A call the registry tracks whose channels FreeSWITCH no longer lists is closed: its legs
  get LegEnded(reconstructed, cause UNKNOWN_AFTER_RESYNC, end = the start of the ESL gap
  or now, billmsec unknown: billed provisionally, billing.rate_leg) and the call its
  CallEnded. Never a leg that may still be alive: created or heard from within
  RESYNC_LAG_US before the snapshot was requested (`show channels` lags new channels).
  Its real HANGUP_COMPLETE, should it come later, settles the leg (CallRegistry._settle). Rows of calls that already ended (stuck channels) are not
  re-adopted: they would end the same call twice. A row whose A-leg is gone is adopted
  under the A-leg's UUID with a completed stand-in A-leg, so it ends with its last leg.
- Rows say nothing of our channel variables, so tenant, route, max duration, rates are
  unknown (a `tenant_of(row)` hook may map e.g. `accountcode`). The gateway is known only
  when the channel name is `sofia/gateway/<gw>/...`; gateway legs are usually named
  `sofia/<profile>/<number>`, so adopted legs mostly have no carrier. Those fields fill
  in from the next events, which carry every variable.
"""
from __future__ import annotations

from typing import Callable

from switchd.calls.channels import ChannelRow, group_rows, row_gateway, row_leg_state
from switchd.calls.model import (CAUSE_RESYNC, CAUSE_SWEPT, Call, CallAdopted, Effect, Leg,
                                 LegEnded)


# --- reconciliation ---------------------------------------------------------------------
# `show channels` can lag a channel created a moment before (seen on FreeSWITCH 1.10.12),
# and switchd's and the switch's clocks may differ a little: a leg created, or heard from,
# within this margin before the snapshot was requested may be alive and is not closed.
RESYNC_LAG_US = 5_000_000


def may_be_alive(leg: Leg, requested_us: int, lag_us: int = RESYNC_LAG_US) -> bool:
    return (leg.created_us >= requested_us - lag_us
            or leg.last_event_us >= requested_us - lag_us)


class Reconciliation:
    """The part of CallRegistry for when events never come (mixed into it)."""

    def _force_complete(self, call: Call, legs: list[Leg], now_us: int, cause: str) -> list[Effect]:
        """Close legs whose HANGUP_COMPLETE will never come; the facts we had are kept."""
        for leg in legs:
            leg.state, leg.reconstructed = "complete", True
            leg.hangup_us = leg.hangup_us or now_us
            leg.hangup_cause = leg.hangup_cause or cause
            call.reconstructed = True
        self._refresh(call)
        # A leg we never heard of by itself (placeholder) gets no CDR row: nothing to say.
        return [LegEnded(l.snapshot(), call.snapshot()) for l in legs if not l.placeholder]


    def sweep(self, now_us: int, grace_us: int) -> list[Effect]:
        """Force-end calls whose A-leg hung up more than grace_us ago but whose other legs
        (or own HANGUP_COMPLETE) never reported: a lost event must not hold slots forever.

        Spared: a call whose open legs the switch listed in a snapshot asked for after its
        A-leg ended. They are up without it: an attended transfer bridges the two carrier
        legs and hangs up the transferor's, and the parties talk on. Their ends come as
        events, or the next resync closes them."""
        effects: list[Effect] = []
        for call in list(self._calls.values()):
            a = call.a_leg
            if (a is None or a.state not in ("hungup", "complete") or not a.hangup_us
                    or a.hangup_us + grace_us >= now_us or call.call_uuid in self._awaiting):
                continue
            open_legs = [l for l in call.legs if l.state != "complete"]
            if open_legs and all(l.listed_us > a.hangup_us + RESYNC_LAG_US for l in open_legs):
                continue
            self.counters["swept"] += 1
            effects += self._force_complete(call, open_legs, now_us, CAUSE_SWEPT)
            effects += self._maybe_end(call)
        return effects


    def resync(self, rows: list[ChannelRow], now_us: int, links: dict[str, str] | None = None,
               tenant_of: Callable[[ChannelRow], str | None] | None = None, *,
               requested_us: int | None = None, ended_us: int | None = None) -> list[Effect]:
        """Reconcile with `show channels` after a reconnect: legs FreeSWITCH no longer has
        are closed (reconstructed, provisional) and their calls end as usual once all legs
        have, unless they may still be alive (created or heard from since shortly before
        the snapshot was requested at `requested_us`); channels we did not know are adopted
        (CallAdopted). `ended_us`: the end to assume for closed legs (the start of the ESL
        gap), default now."""
        links = links or {}
        present = {r.uuid for r in rows}
        requested = requested_us if requested_us is not None else now_us
        for uuid in present:
            leg = self._legs.get(uuid)
            if leg is not None:
                leg.listed_us = max(leg.listed_us, requested)
        effects: list[Effect] = []
        for call in list(self._calls.values()):
            missing = [l for l in call.legs if l.uuid not in present and l.state != "complete"]
            gone = [l for l in missing if not may_be_alive(l, requested)]
            if len(gone) < len(missing):
                # Not in the snapshot but possibly alive: left to its events or the next resync.
                self.counters["resync_spared"] += len(missing) - len(gone)
            if gone:
                self.counters["resync_closed_legs"] += len(gone)
                effects += self._force_complete(call, gone, ended_us or now_us, CAUSE_RESYNC)
            if len(gone) == len(missing) and not any(l.uuid in present for l in call.legs):
                self._awaiting.discard(call.call_uuid)    # nothing left for the job to report
            effects += self._maybe_end(call)
        for key, group in group_rows(rows, links).items():
            effects += self._adopt(key, group, tenant_of)
        return effects


    def _adopt(self, key: str, rows: list[ChannelRow],
               tenant_of: Callable[[ChannelRow], str | None] | None) -> list[Effect]:
        found = self._lookup(key)
        if found and found[1]:
            # FreeSWITCH still lists channels of a call we saw end: stuck channels, not calls.
            self.counters["resync_stale_rows"] += len(rows)
            return []
        call = found[0] if found else Call(call_uuid=key, reconstructed=True)
        if found is None:
            self._calls[key] = call
            if rows[0].uuid != key:
                # Its A-leg is gone already: a completed stand-in lets the call end with the rest.
                self._add_leg(call, Leg(uuid=key, call_uuid=key, state="complete",
                                       placeholder=True, reconstructed=True), False)
            if tenant_of is not None:
                call.tenant = tenant_of(rows[0])
        bridged = sum(row_leg_state(r) == "answered" for r in rows) >= 2
        for row in rows:
            leg = self._legs.get(row.uuid)
            if leg is None:
                if self._lookup(row.uuid):
                    continue              # a leg of an ended call
                leg = Leg(uuid=row.uuid, call_uuid=key)
                self._add_leg(call, leg, False)
            elif not leg.placeholder:
                continue                  # known and followed by events: FreeSWITCH agrees
            state = row_leg_state(row)
            leg.placeholder, leg.reconstructed = False, True
            leg.state = "bridged" if bridged and state == "answered" else state
            leg.direction, leg.created_us = row.direction, row.created_us
            leg.gateway = leg.carrier = row_gateway(row)
            leg.caller, leg.destination = row.cid_num, row.dest
            # The earliest the answer can have been; FreeSWITCH's own time replaces it.
            leg.answered_us = row.created_us if leg.state in ("answered", "bridged") else 0
            self.counters["resync_adopted_legs"] += 1
        self._refresh(call)
        if call.state == "setup" and any(l.state in ("answered", "bridged") for l in call.legs):
            self._call_step(call, "answer")
        if found is not None:
            return []
        a = call.a_leg
        if a is not None and a.state == "complete":
            self._call_step(call, "a_leg_done")
        return [CallAdopted(call.snapshot())]
