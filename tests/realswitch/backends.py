"""One scenario, two switches: the simulator and the real FreeSWITCH behind one interface.

A backend places a call and reports what the *switch* saw (not what switchd stored):

- `set_carrier(gateway, mode)`: "answer" (no RTP after the answer, as the sipp carrier),
  "answer-rtp" (RTP until the BYE) or a SIP final code ("503", "486", ...);
- `call(number, tenant="acme", hold_s=1.5)` → `Outcome`: answered, the A-leg UUID (the CDR
  key), the A-leg's cause and billmsec, and every carrier leg (gateway, cause, SIP status,
  billmsec) in the order the switch tried them;
- `invites()` → `{gateway: legs attempted since the start of the test}`;
- `db_url`, `daemon` (a tests/daemon_harness.py DaemonProcess).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from daemon_harness import DaemonProcess, rows, wait_for

from . import fsharness

# What FreeSWITCH makes of a carrier's SIP answer (sofia's SIP → Q.850 mapping), for the
# simulator to play the same carrier.
SIP_TO_CAUSE = {
    401: "CALL_REJECTED", 403: "CALL_REJECTED", 404: "UNALLOCATED_NUMBER",
    407: "CALL_REJECTED", 408: "RECOVERY_ON_TIMER_EXPIRE", 480: "NO_USER_RESPONSE",
    484: "INVALID_NUMBER_FORMAT", 486: "USER_BUSY", 500: "NORMAL_TEMPORARY_FAILURE",
    503: "NORMAL_TEMPORARY_FAILURE", 600: "USER_BUSY", 603: "CALL_REJECTED",
}
TENANT_ENV = {"SWITCHD_ROUTING_TENANT_FROM": "variable",
              "SWITCHD_ROUTING_TENANT_VARIABLE": "sip_h_X-Tenant"}


@dataclass(frozen=True)
class Leg:
    gateway: str | None
    cause: str
    sip_status: int | None
    billmsec: int
    billsec: int = 0       # FreeSWITCH's: end_epoch - answer_epoch, whole seconds


@dataclass(frozen=True)
class Outcome:
    answered: bool
    call_uuid: str
    a_cause: str
    a_billmsec: int
    legs: list[Leg]
    caller: object = None          # real switch: the sipp caller's CallResult


CDR_COLUMNS = ("call_uuid", "tenant", "direction", "carrier", "gateway", "attempts",
               "billed_seconds", "cost", "hangup_cause", "first_choice_carrier", "answered_at")


# A call's row is settled once both halves are merged into it (ingest.py, cdr_batch.py):
# - FreeSWITCH's CDR of every leg: `cdr_source` is 'switch' only when every leg row stored
#   for the call came from mod_json_cdr (cdr_batch.RECOMPUTE_CALLS), and `provisional` is
#   false (no leg closed without its hangup);
# - ESL's record of the call (billing.call_record), which the CDR writer stores after the
#   ESL rows of all its legs, so that no leg is missing from the above. Only that record
#   gives a call its `disposition`, and it gives one to every call a carrier was dialled
#   for (the carrier leg's) or whose caller cancelled. A call with no disposition is
#   settled only if the routing log holds its decision and it chose no carrier (a refusal,
#   a DID to an extension), and no carrier leg is stored: then no other leg is to come.
SETTLED = """c.cdr_source = 'switch' AND NOT c.provisional
  AND (c.disposition IS NOT NULL
       OR (EXISTS (SELECT 1 FROM routing_decisions d WHERE d.call_uuid = c.call_uuid)
           AND NOT EXISTS (SELECT 1 FROM routing_decisions d, jsonb_array_elements(d.chosen) e
                           WHERE d.call_uuid = c.call_uuid AND e ? 'carrier')
           AND NOT EXISTS (SELECT 1 FROM call_legs l WHERE l.call_uuid = c.call_uuid
                           AND (l.carrier IS NOT NULL OR l.gateway IS NOT NULL))))"""


class RsDaemon:
    """`switchd run` connected to a RealSwitch (its ESL, its xml_curl URL)."""

    def __init__(self, process: DaemonProcess, db_url: str):
        self.process, self.db_url = process, db_url

    @classmethod
    def start(cls, switch: fsharness.RealSwitch, db_url: str, data_dir: Path,
              extra_env: dict | None, require_ready: bool,
              python: list[str] | None = None) -> "RsDaemon":
        data_dir.mkdir(parents=True, exist_ok=True)
        port = switch.plan.http
        env = {**TENANT_ENV, "SWITCHD_HTTP_PORT": str(port), **(extra_env or {})}
        process = DaemonProcess(db_url, switch.plan.esl, switch.esl_password, data_dir,
                                extra_env=env)
        process.http_port = port               # the port the switch's xml_curl posts to
        process.log_path = data_dir / "switchd.log"
        process.python = python or process.python
        process.start(require_ready=require_ready)
        return cls(process, db_url)

    def rows(self, query: str, *args) -> list[tuple]:
        return rows(self.db_url, query, *args)

    def api(self, method: str, path: str, body: dict | None = None,
            timeout: float = 30) -> tuple[int, dict]:
        """One request to switchd's HTTP API: (status, JSON body), errors included."""
        request = urllib.request.Request(self.process.base_url + path, method=method,
                                         data=json.dumps(body).encode() if body else None,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    def originate(self, payload: dict) -> tuple[int, dict]:
        """POST /v1/calls (answered once FreeSWITCH has a result): (status, JSON body)."""
        return self.api("POST", "/v1/calls", payload, timeout=60)

    def cdr(self, call_uuid: str) -> dict | None:
        """The `calls` row as it is now, whichever of its records are in."""
        found = self.rows(f"SELECT {', '.join(CDR_COLUMNS)} FROM calls WHERE call_uuid = %s",
                          call_uuid)
        return dict(zip(CDR_COLUMNS, found[0])) if found else None

    def settled_cdr(self, call_uuid: str) -> dict | None:
        """The `calls` row once both halves are merged (SETTLED), else None."""
        found = self.rows(f"SELECT {', '.join('c.' + c for c in CDR_COLUMNS)} FROM calls c "
                          f"WHERE c.call_uuid = %s AND {SETTLED}", call_uuid)
        return dict(zip(CDR_COLUMNS, found[0])) if found else None

    def wait_cdr(self, call_uuid: str, timeout: float = 30.0) -> dict:
        """The call's row once FreeSWITCH's CDRs and ESL's record are both merged into it
        (SETTLED): its money and fields are final, whichever half arrived first."""
        try:
            return self.wait_until(lambda: self.settled_cdr(call_uuid), timeout,
                                   f"the settled CDR of {call_uuid}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe row now: {self.cdr(call_uuid)}") from None

    def wait_until(self, predicate, timeout: float = 30.0, what: str = "condition"):
        return wait_for(predicate, timeout, what, self.process)


class RealBackend:
    name = "real"

    def __init__(self, switch: fsharness.RealSwitch, daemon: RsDaemon):
        self.switch, self.rs = switch, daemon
        self.daemon, self.db_url = daemon.process, daemon.db_url

    def set_carrier(self, gateway: str, mode: str) -> None:
        self.switch.carrier(gateway).set_mode(mode)

    def call(self, number: str, tenant: str = "acme", hold_s: float = 1.5) -> Outcome:
        result = self.switch.call(number, tenant=tenant, hold_ms=int(hold_s * 1000))
        legs = self.switch.wait_call(result)
        a, carriers = legs[0], legs[1:]
        return Outcome(answered=result.answered, call_uuid=a.uuid, a_cause=a.cause,
                       a_billmsec=a.billmsec,
                       legs=[Leg(h.gateway, h.cause, h.sip_term_status, h.billmsec, h.billsec)
                             for h in carriers],
                       caller=result)

    def invites(self) -> dict[str, int]:
        return self.switch.invites()


class SimBackend:
    name = "sim"

    def __init__(self, sim, daemon: DaemonProcess, db_url: str):
        from switchd.sim import CdrSink
        self.sim, self.daemon, self.db_url = sim, daemon, db_url
        self.rs = RsDaemon(daemon, db_url)
        # As the real switch (conftest: mod_json_cdr posts every leg to /fs/cdr), so that
        # a CDR settles the same way on both backends (RsDaemon.wait_cdr).
        sim.set_cdr_sink(CdrSink(daemon.base_url + "/fs/cdr"))

    def set_carrier(self, gateway: str, mode: str) -> None:
        from switchd.sim import GatewayBehaviour
        if mode in ("answer", "answer-rtp"):     # the sipp carrier's "answer" sends no RTP
            self.sim.set_gateway(gateway, GatewayBehaviour(
                answer_delay_s=1.0, silent_after_answer=mode == "answer"))
        elif mode.isdigit() and int(mode) in SIP_TO_CAUSE:
            self.sim.set_gateway(gateway, GatewayBehaviour(fail_cause=SIP_TO_CAUSE[int(mode)],
                                                           sip_status=int(mode)))
        else:
            raise NotImplementedError(f"the simulator cannot play carrier mode {mode!r}")

    def call(self, number: str, tenant: str = "acme", hold_s: float = 1.5) -> Outcome:
        call = self.sim.place_call(number, accountcode=tenant, hold_seconds=hold_s)
        assert call.wait(30), f"simulated call to {number} did not end"
        a = call.a_leg
        return Outcome(answered=call.result == "answered", call_uuid=call.uuid,
                       a_cause=a.cause if a else call.hangup_cause, a_billmsec=a.billmsec if a else 0,
                       legs=[Leg(l.gateway, l.cause, l.sip_status, l.billmsec, _billsec(l))
                             for l in call.legs])

    def invites(self) -> dict[str, int]:
        counts = {"gw_a": 0, "gw_b": 0, "gw_c": 0}
        for call in self.sim.calls:
            for leg in call.legs:
                counts[leg.gateway] = counts.get(leg.gateway, 0) + 1
        return counts


def _billsec(leg) -> int:
    """The simulator leg's billsec as FreeSWITCH computes it (whole epoch seconds)."""
    if not leg.answered_us or not leg.hangup_us:
        return 0
    return leg.hangup_us // 1_000_000 - leg.answered_us // 1_000_000
