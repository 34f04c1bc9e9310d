"""What the simulator is told (gateway behaviours) and what it reports (SimCall)."""
from __future__ import annotations

import random
import uuid as uuidlib
from dataclasses import dataclass, field

import gevent.event

from switchd.sim.legs import SimLeg


@dataclass(frozen=True)
class GatewayBehaviour:
    """How the carrier behind a sofia gateway answers a leg.

    fail_cause: always fail with this cause (e.g. 'NORMAL_TEMPORARY_FAILURE', 'USER_BUSY');
    the carrier answers the SIP code sofia maps back to it (causes.CARRIER_SIP), or nothing
    at all for a cause no SIP answer gives (DESTINATION_OUT_OF_ORDER, GATEWAY_DOWN, ...).
    sip_status: the carrier's SIP final answer; the leg's cause is then sofia's mapping of
    it (403 → CALL_REJECTED, 480 → NO_USER_RESPONSE, ...). Alone (fail_rate 0) every leg
    fails with it; with fail_rate, only the seeded fraction does. fail_rate: fail with this
    probability (seeded), with sip_status, or fail_cause, or 503;
    answer_delay_s / fail_delay_s: simulated seconds from INVITE to answer / to failure;
    ignore_sched_hangup: the A-leg's sched_hangup never fires (for watchdog tests);
    progress_delay_s: the carrier leg rings (180: CHANNEL_PROGRESS) after this many simulated
    seconds, if before its answer or failure (None: no progress event, as before);
    unusable_answer: the carrier answers 200 OK after answer_delay_s, with an SDP offering
    no codec FreeSWITCH can use; sofia ACKs it and hangs the leg up with a BYE at once,
    never marking it answered: INCOMPATIBLE_DESTINATION, no SIP status, billsec 0,
    sip_hangup_disposition send_bye, endpoint_disposition NO CODECS, and the bridge goes on
    to its next gateway (FreeSWITCH 1.10.12, tests/realswitch/test_answer_then_fail.py);
    redirect_to: the carrier answers `302 Moved Temporarily` with this Contact after
    fail_delay_s. A leg with `outbound_redirect_fatal=true` (switchd's dial strings) then
    ends REQUESTED_CHAN_UNAVAIL with the 302 only in proto_specific_hangup_cause, no SIP
    status, send_cancel (FreeSWITCH 1.10.12, tests/fixtures/redirect/); without it sofia
    follows the redirect and the leg is answered by whoever is at the Contact, answer_delay_s
    later (a Contact at a host FreeSWITCH has no gateway to; one at FreeSWITCH's own address
    transfers the caller instead, which the simulator does not play);
    silent_after_answer: the carrier answers and then sends no RTP. A bridged leg with
    `media_timeout` (milliseconds; switchd's dial strings carry the gateway's) ends
    MEDIA_TIMEOUT that long after its answer, and FreeSWITCH hangs the caller up with the
    same cause; an originated leg parked after its answer ends the same way (FreeSWITCH
    1.10.12, tests/fixtures/media-timeout/); without it the call runs on. A carrier that
    sends RTP (the default) is never cut.
    """
    fail_cause: str | None = None
    sip_status: int | None = None
    answer_delay_s: float = 2.0
    fail_delay_s: float = 0.5
    fail_rate: float = 0.0
    ignore_sched_hangup: bool = False
    progress_delay_s: float | None = None    # ringing (CHANNEL_PROGRESS) this long after INVITE
    unusable_answer: bool = False            # 200 OK with an SDP sofia refuses (see above)
    redirect_to: str | None = None           # 302 with this Contact (see above)
    silent_after_answer: bool = False        # no RTP once answered (see above)

    def __post_init__(self) -> None:
        from switchd.sim import causes
        if self.fail_cause is not None and self.fail_cause not in causes.CAUSES:
            raise ValueError(f"unknown FreeSWITCH cause {self.fail_cause!r}")
        if self.sip_status is not None and not 300 <= self.sip_status <= 699:
            raise ValueError(f"sip_status must be a final failure code, got {self.sip_status}")
        if self.unusable_answer and (self.fail_cause or self.sip_status):
            raise ValueError("unusable_answer is an answer: not with fail_cause or sip_status")
        if self.redirect_to is not None and (self.fail_cause or self.sip_status
                                             or self.unusable_answer):
            raise ValueError("redirect_to is the carrier's answer: not with fail_cause, "
                             "sip_status or unusable_answer")
        if self.silent_after_answer and (self.fail_cause or self.sip_status
                                         or self.unusable_answer):
            raise ValueError("silent_after_answer needs an answer: not with fail_cause, "
                             "sip_status or unusable_answer")
        if self.sip_status is not None and self.sip_status < 400:
            raise ValueError(f"a {self.sip_status} is a redirect: give redirect_to instead")
        if (self.fail_cause and self.sip_status
                and causes.sip_to_cause(self.sip_status) != self.fail_cause):
            raise ValueError(f"sofia maps SIP {self.sip_status} to "
                             f"{causes.sip_to_cause(self.sip_status)}, not {self.fail_cause}")


def seeded_uuid(rng: random.Random) -> str:
    return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))


@dataclass
class SimCall:
    """One call as the simulator plays it: an inbound call (A-leg + bridge legs) or an
    originate (its legs only). `wait()` returns once every leg has hung up."""
    index: int
    kind: str                         # 'inbound' | 'originate'
    uuid: str                         # A-leg, or the originated leg
    destination: str
    caller: str
    hold_seconds: float
    rng: random.Random
    a_leg: SimLeg | None = None
    legs: list[SimLeg] = field(default_factory=list)      # bridge / originate attempts
    route_source: str | None = None    # 'xml_curl' | 'static_fallback' | None (originate)
    route: object | None = None        # xmlcurl.RouteAnswer
    result: str | None = None          # 'answered' | 'failed' | 'refused' | 'lost'
    hangup_cause: str | None = None    # A-leg cause (originate: the leg's)
    events: list[tuple[str, str]] = field(default_factory=list)   # (Event-Name, Unique-ID)
    sched_at_us: int | None = None     # pending sched_hangup (simulated time)
    sched_cause: str = "ALLOTTED_TIMEOUT"
    kill: tuple[str, str] | None = None    # (leg uuid, cause) from uuid_kill
    caller_cancelled: bool = False     # the kill is the caller's own CANCEL (cancel_call)
    set_vars: list[tuple[str, str]] = field(default_factory=list)   # A-leg, set by the dialplan
    exports: list[tuple[str, str]] = field(default_factory=list)    # exported to bridge legs
    lookups: list[tuple[str, str, str]] = field(default_factory=list)  # (dest, context, source)
    refused_sip: int | None = None     # sofia refused the INVITE itself (sessions-per-second)
    caller_name: str | None = None     # the caller's display name (default: the number)
    ignore_sched: bool = False
    wake: gevent.event.Event = field(default_factory=gevent.event.Event)
    done: gevent.event.Event = field(default_factory=gevent.event.Event)

    @property
    def causes(self) -> list[str | None]:
        return [leg.cause for leg in self.legs]

    @property
    def answered_leg(self) -> SimLeg | None:
        return next((leg for leg in self.legs if leg.answered_us), None)

    @property
    def gateway(self) -> str | None:
        leg = self.answered_leg
        return leg.gateway if leg else None

    @property
    def billmsec(self) -> int:
        leg = self.answered_leg
        return leg.billmsec if leg else 0

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def poke(self) -> None:
        self.wake.set()
