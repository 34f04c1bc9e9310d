"""sipp for the harness: carriers (UAS in a mode) and callers (a UAC built per call)."""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import fsconfig
from .common import HarnessError, poll, stop_process

SCENARIOS = Path(__file__).parent / "scenarios"
REJECT_REASONS = {
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 407: "Proxy Authentication Required",
    408: "Request Timeout", 480: "Temporarily Unavailable", 484: "Address Incomplete",
    486: "Busy Here", 500: "Server Internal Error", 503: "Service Unavailable",
    600: "Busy Everywhere", 603: "Decline",
    487: "Request Terminated", 502: "Bad Gateway",     # failover table rows (test_failover.py)
}
# Modes played by a scenario file of their own (scenarios/uas-MODE.xml): `early` is 183
# with SDP and never an answer, `hangup` answers and sends its own BYE 1.5 s later; the
# answer-* ones answer and then fail (tests/realswitch/test_answer_then_fail.py).
SCENARIO_MODES = ("answer", "ring", "early", "hangup", "answer-bad-sdp", "answer-then-bye",
                  "answer-no-sdp", "answer-rtp")
# Modes that take a URI (set_mode's `contact`): `redirect` answers 302 with it as the Contact
# (tests/realswitch/test_redirect.py), `refer` answers and then REFERs the call to it.
CONTACT_MODES = ("redirect", "refer")
MODES = (*SCENARIO_MODES, "down", *CONTACT_MODES, *map(str, REJECT_REASONS))
# Final answers a caller may get (each needs its own optional <recv> in sipp).
FINAL_CODES = (400, 401, 402, 403, 404, 405, 406, 407, 408, 410, 413, 414, 415, 416, 420, 421,
               423, 480, 481, 482, 483, 484, 485, 486, 487, 488, 489, 491, 500, 501, 502, 503,
               504, 505, 513, 600, 603, 604, 606, 608)


# A restart closes the carrier's port for a moment; FreeSWITCH's gateway ping landing then
# fails, marks the gateway DOWN (ping-max 1) and takes the carrier out of routing until the
# next ping. So a running carrier restarts only while its next ping is this far away.
# FreeSWITCH sends it within about a second after the time it reports (its gateway check
# runs once a second, sofia.c), and schedules the one after at the answer + ping freq.
RESTART_BEFORE_PING_S = 2.5


@dataclass(frozen=True)
class GatewayPing:
    """A gateway's ping schedule as FreeSWITCH reports it (`sofia xmlstatus gateway`)."""
    next_at: int          # epoch seconds the next OPTIONS is due
    pinging: bool         # one is out, unanswered
    up: bool              # the gateway's ping status


def sipp_command(sipp: str, ports: fsconfig.SippPorts, ip: str = "127.0.0.1") -> list[str]:
    return [sipp, "-i", ip, "-mi", ip, "-ci", ip,
            "-p", str(ports.sip), "-mp", str(ports.media), "-cp", str(ports.control),
            "-aa", "-nostdin"]


def received_messages(message_file: Path) -> list[str]:
    """The SIP messages a sipp received, in order, from its -trace_msg file (none if it
    has not written one)."""
    try:
        text = message_file.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    received = []
    for block in re.split(r"\n-{20,}[^\n]*\n", "\n" + text):
        header, _, message = block.partition("\n\n")
        if "message received" in header:
            received.append(message)
    return received


def received_invites(message_file: Path) -> list[dict[str, str]]:
    """INVITEs a sipp received, once per Call-ID, from its -trace_msg file:
    [{'call_id', 'request_uri', 'from', 'to', 'text'}]."""
    seen: dict[str, dict[str, str]] = {}
    for message in received_messages(message_file):
        if not message.startswith("INVITE "):
            continue
        fields = {"request_uri": message.split("\n", 1)[0].split(" ")[1], "text": message}
        for line in message.split("\n"):
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key in ("call-id", "i"):
                fields.setdefault("call_id", value.strip())
            elif key in ("from", "f"):
                fields.setdefault("from", value.strip())
            elif key in ("to", "t"):
                fields.setdefault("to", value.strip())
        if fields.get("call_id"):
            seen.setdefault(fields["call_id"], fields)
    return list(seen.values())


def received_responses(message_file: Path, method: str) -> list[int]:
    """The status codes of the responses to `method` (their CSeq's) a sipp received, in
    order, from its -trace_msg file."""
    codes = []
    for message in received_messages(message_file):
        if not message.startswith("SIP/2.0 "):
            continue
        cseq = re.search(r"(?im)^(?:CSeq|c)\s*:\s*\d+\s+(\S+)", message)
        if cseq and cseq.group(1).upper() == method.upper():
            codes.append(int(message.split(" ", 2)[1]))
    return codes


class Carrier:
    """A sipp UAS behind one FreeSWITCH gateway, in a mode (answer, ring, a SIP code, down).
    `ip`: the loopback address it binds (another one than 127.0.0.1 is a host FreeSWITCH
    has no gateway to: tests/realswitch/test_redirect.py). `gateway_ping` reads FreeSWITCH's
    ping schedule for the gateway in front of it (None: no gateway, or no switch running),
    so a restart keeps clear of the pings."""

    def __init__(self, name: str, ports: fsconfig.SippPorts, sipp: str, run_dir: Path,
                 ip: str = "127.0.0.1",
                 gateway_ping: Callable[[], GatewayPing | None] = lambda: None):
        self.name, self.ports, self.sipp, self.ip = name, ports, sipp, ip
        self.gateway_ping = gateway_ping
        self.dir = run_dir / "sipp" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        # mode answer-rtp streams this: one second of PCMU silence (0xFF), looped
        (self.dir / "silence.ulaw").write_bytes(b"\xff" * 8000)
        self.mode = "down"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._baseline: set[str] = set()

    def set_mode(self, mode: str, *, contact: str | None = None) -> None:
        """Restart the carrier in `mode`; 'down' leaves it stopped (its port unreachable).
        'redirect' and 'refer' need `contact`, the URI they send the call to."""
        mode = str(mode)
        if mode not in MODES:
            raise ValueError(f"carrier mode {mode!r}: one of {', '.join(MODES)}")
        if (mode in CONTACT_MODES) != (contact is not None):
            raise ValueError(f"carrier modes {', '.join(CONTACT_MODES)} take a contact, and only they")
        if mode == self.mode and mode not in CONTACT_MODES and (mode == "down" or self.alive()):
            return
        before = self._clear_of_the_next_ping() if self.alive() and mode != "down" else None
        self.stop()
        self.mode = mode
        if mode == "down":
            return
        self.starts += 1
        cmd = sipp_command(self.sipp, self.ports, self.ip)
        if mode in SCENARIO_MODES:
            cmd += ["-sf", str(SCENARIOS / f"uas-{mode}.xml")]
        elif mode in CONTACT_MODES:
            scenario = self.dir / f"uas-{mode}.xml"
            scenario.write_text((SCENARIOS / f"uas-{mode}.xml").read_text()
                                .replace("@CONTACT@", contact))
            cmd += ["-sf", str(scenario)]
        else:
            scenario = self.dir / f"uas-{mode}.xml"
            scenario.write_text((SCENARIOS / "uas-reject.xml").read_text()
                                .replace("@CODE@", mode).replace("@REASON@", REJECT_REASONS[int(mode)]))
            cmd += ["-sf", str(scenario)]
        cmd += ["-trace_msg", "-message_file", str(self.dir / f"messages-{self.starts}.log"),
                "-trace_err", "-error_file", str(self.dir / f"errors-{self.starts}.log")]
        with open(self.dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        # sipp binds at once; a bind failure makes it exit within a moment
        poll(lambda: self.proc.poll() is not None
             or not fsconfig.port_free(self.ports.sip, tcp=False, ip=self.ip),
             5, f"sipp carrier {self.name} to bind {self.ip}:{self.ports.sip}")
        if self.proc.poll() is not None:
            raise HarnessError(f"sipp carrier {self.name} exited {self.proc.returncode} "
                               f"(see {self.dir}/stderr.log)")
        if before is not None:
            self._up_again_if_pinged_since(before)

    def _clear_of_the_next_ping(self) -> GatewayPing | None:
        """The gateway's ping schedule once its next ping is RESTART_BEFORE_PING_S away
        (waiting for the coming one to be answered if need be); None: no gateway to dodge."""
        ping = self.gateway_ping()
        if ping is None or (not ping.pinging and ping.next_at - time.time() >= RESTART_BEFORE_PING_S):
            return ping
        return self._wait_for_a_ping_answered_after(ping.next_at, "answered before a restart")

    def _up_again_if_pinged_since(self, before: GatewayPing) -> None:
        """A restart slower than the margin lets a ping land on the closed port and the
        gateway go DOWN: then wait for the next ping to be answered with the gateway UP."""
        now = self.gateway_ping()
        if now is None or (now.next_at == before.next_at and not now.pinging):
            return
        self._wait_for_a_ping_answered_after(before.next_at, "answered after a restart", up=True)

    def _wait_for_a_ping_answered_after(self, due: int, what: str,
                                        up: bool = False) -> GatewayPing | None:
        def answered() -> GatewayPing | bool:
            ping = self.gateway_ping()
            if ping is None:
                return True                 # the switch went away: no ping to wait for
            done = ping.next_at > due and not ping.pinging and (ping.up or not up)
            return ping if done else False
        found = poll(answered, 2 * fsconfig.GATEWAY_PING_S + 5,
                     f"carrier {self.name}'s gateway ping {what}", 0.1)
        return found if isinstance(found, GatewayPing) else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        self.mode = "down"

    def invite_log(self) -> list[dict[str, str]]:
        """Every INVITE received since the last reset (one per Call-ID), oldest first."""
        found = []
        for n in range(1, self.starts + 1):
            found += received_invites(self.dir / f"messages-{n}.log")
        return [i for i in found if i["call_id"] not in self._baseline]

    def invites(self) -> int:
        return len(self.invite_log())

    def responses(self, method: str) -> list[int]:
        """Status codes FreeSWITCH answered this carrier's `method` requests with, since
        its mode was last set (e.g. responses("REFER") → [202], or [405] refused)."""
        return received_responses(self.dir / f"messages-{self.starts}.log", method)

    def reset_counts(self) -> None:
        self._baseline |= {i["call_id"] for i in self.invite_log()}


@dataclass
class CallResult:
    """What the caller saw. Times are seconds from sending the INVITE (sipp's clock)."""
    code: int | None              # final SIP answer to the INVITE (200 when answered)
    call_id: str
    progress_after: float | None  # first 180/183
    answered_after: float | None
    duration: float | None        # answer → BYE (either side)
    ended_by: str | None          # 'caller' | 'switch' | None (not answered)
    bye_reason: str | None        # Reason header of the switch's BYE
    returncode: int
    dir: Path
    refer_answer: int | None = None   # `refer_to`: FreeSWITCH's answer to the REFER (202, 405)

    @property
    def answered(self) -> bool:
        return self.code == 200


class CallHandle:
    """A sipp caller in flight; `wait()` returns its CallResult."""

    def __init__(self, proc: subprocess.Popen, slot: int, directory: Path, release):
        self.proc, self.slot, self.dir, self._release = proc, slot, directory, release
        self.result: CallResult | None = None

    def wait(self, timeout: float = 120.0) -> CallResult:
        if self.result is None:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
                self._release(self.slot)
                raise HarnessError(f"sipp caller still running after {timeout}s ({self.dir})")
            self._release(self.slot)
            if rc not in (0, 1):
                raise HarnessError(f"sipp caller failed (rc {rc}); see {self.dir}")
            self.result = self._read(rc)
        return self.result

    def _read(self, rc: int) -> CallResult:
        log = (self.dir / "call.log").read_text(errors="replace") if (self.dir / "call.log").exists() else ""
        marks: dict[str, str] = {}
        for m in re.finditer(r"rs (\w+)_ms=(\d+)((?: \w+=[^\n]*)?)", log):
            marks.setdefault(m.group(1), m.group(2) + m.group(3))
        ms = {k: int(v.split(" ", 1)[0]) for k, v in marks.items()}
        t0 = ms.get("invite", 0)
        code = None
        if "answered" in ms:
            code = 200
        elif "final" in marks:
            code = _mark_code(marks["final"])
        call_id = _first_call_id(self.dir / "messages.log")
        reason = None
        if "bye_rx" in marks:
            reason = marks["bye_rx"].split("reason=", 1)[1].strip() if "reason=" in marks["bye_rx"] else None
            reason = re.sub(r"^Reason:\s*", "", reason or "") or None
        bye = ms.get("bye_rx", ms.get("bye_tx"))
        return CallResult(
            code=code, call_id=call_id,
            progress_after=(ms["progress"] - t0) / 1000 if "progress" in ms else None,
            answered_after=(ms["answered"] - t0) / 1000 if "answered" in ms else None,
            duration=(bye - ms["answered"]) / 1000 if bye is not None and "answered" in ms else None,
            ended_by=("switch" if "bye_rx" in ms else "caller" if "bye_tx" in ms else None),
            bye_reason=reason, returncode=rc, dir=self.dir,
            refer_answer=(202 if "refer_accepted" in ms else
                          _mark_code(marks["refer_refused"]) if "refer_refused" in marks
                          else None))


def _mark_code(mark: str) -> int:
    """The SIP code a scenario's log mark carries ("N code=C")."""
    return int(re.search(r"code=(\d+)", mark).group(1))


@dataclass(frozen=True)
class LoadResult:
    """What a load caller (many calls from one sipp) saw: its own count of answers."""
    answered: int
    rejected: dict[int, int]      # final SIP code -> calls
    returncode: int
    dir: Path


class LoadHandle:
    """A sipp load caller in flight; `wait()` returns its LoadResult."""

    def __init__(self, proc: subprocess.Popen, slot: int, directory: Path, release):
        self.proc, self.slot, self.dir, self._release = proc, slot, directory, release
        self.result: LoadResult | None = None

    def wait(self, timeout: float = 600.0) -> LoadResult:
        if self.result is None:
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                stop_process(self.proc)
                raise HarnessError(f"sipp load still running after {timeout}s ({self.dir})")
            finally:
                self._release(self.slot)
            if rc not in (0, 1):
                raise HarnessError(f"sipp load failed (rc {rc}); see {self.dir}")
            log = (self.dir / "call.log").read_text(errors="replace") \
                if (self.dir / "call.log").exists() else ""
            rejected: dict[int, int] = {}
            for code in re.findall(r"rs final_ms=\d+ code=(\d+)", log):
                rejected[int(code)] = rejected.get(int(code), 0) + 1
            self.result = LoadResult(answered=len(re.findall(r"rs answered_ms=", log)),
                                     rejected=rejected, returncode=rc, dir=self.dir)
        return self.result


def _first_call_id(message_file: Path) -> str:
    try:
        text = message_file.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    m = re.search(r"^Call-ID:\s*(\S+)", text, re.M | re.I)
    return m.group(1) if m else ""


def uac_scenario(from_value: bytes, extra_headers: list[bytes], hold_ms: int,
                 cancel_after_ms: int | None = None, cancel_from: str = "progress",
                 refer_to: str | None = None) -> bytes:
    """The caller's scenario: uac-call.xml, or with `cancel_after_ms` uac-cancel.xml (the
    caller CANCELs that long after the first 180/183, or with cancel_from="trying" after
    the switch's 100 Trying), or with `refer_to` uac-refer.xml (answered, the caller
    blind-transfers the call to that number after hold_ms)."""
    if cancel_from not in ("progress", "trying"):
        raise ValueError(f"cancel_from {cancel_from!r}: 'progress' or 'trying'")
    if refer_to is not None and (cancel_after_ms is not None
                                 or not re.fullmatch(r"\+?[0-9]{1,20}", refer_to)):
        raise ValueError(f"refer_to {refer_to!r}: a number, and not with a cancel")
    name = ("uac-refer.xml" if refer_to is not None
            else "uac-call.xml" if cancel_after_ms is None else "uac-cancel.xml")
    template = (SCENARIOS / name).read_bytes().replace(b"@REFER_TO@",
                                                       (refer_to or "").encode())
    for bad in (b"\r", b"\n", b"[", b"]"):
        if bad in from_value or any(bad in h for h in extra_headers):
            raise ValueError(f"From/extra headers may not hold {bad!r} (sipp would read it)")
    finals = "\n".join(
        f'  <recv response="{c}" optional="true" next="rejected">\n'
        f'    <action><log message="rs final_ms=[clock_tick] code={c}"/></action>\n  </recv>'
        for c in FINAL_CODES).encode()
    extra = b"".join(b"      " + h + b"\n" for h in extra_headers)
    return (template.replace(b"@FROM@", from_value).replace(b"@EXTRA@", extra)
            .replace(b"@HOLD_MS@", str(int(hold_ms)).encode())
            .replace(b"@CANCEL_MS@", str(int(cancel_after_ms or 0)).encode())
            .replace(b"@ON_TRYING@", b"progress" if cancel_from == "trying" else b"wait")
            .replace(b"@FINALS@", finals))


def as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")
