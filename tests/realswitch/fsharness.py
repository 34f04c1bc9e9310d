"""A real FreeSWITCH with sipp carriers and callers, for the real-switch suite.

The API is documented in conftest.py. This module knows nothing of switchd: it starts the
switch, the carriers and the callers, and reports what they saw.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from . import fsconfig

SCENARIOS = Path(__file__).parent / "scenarios"
FS_DIRS = ("conf", "log", "db", "run", "temp", "cache", "storage", "recordings", "sounds",
           "scripts", "grammar", "certs", "htdocs")
REJECT_REASONS = {
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 407: "Proxy Authentication Required",
    408: "Request Timeout", 480: "Temporarily Unavailable", 484: "Address Incomplete",
    486: "Busy Here", 500: "Server Internal Error", 503: "Service Unavailable",
    600: "Busy Everywhere", 603: "Decline",
    487: "Request Terminated", 502: "Bad Gateway",     # failover table rows (test_failover.py)
}
MODES = ("answer", "ring", "down", *map(str, REJECT_REASONS))
# Final answers a caller may get (each needs its own optional <recv> in sipp).
FINAL_CODES = (400, 401, 402, 403, 404, 405, 406, 407, 408, 410, 413, 414, 415, 416, 420, 421,
               423, 480, 481, 482, 483, 484, 485, 486, 487, 488, 489, 491, 500, 501, 502, 503,
               504, 505, 513, 600, 603, 604, 606, 608)


class HarnessError(RuntimeError):
    """The harness could not do what it was asked (a process failed to start, a timeout)."""


def find_freeswitch() -> str | None:
    explicit = os.environ.get("SWITCHD_TEST_FREESWITCH")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("freeswitch")


def find_sipp() -> str | None:
    return shutil.which("sipp")


def skip_reason() -> str | None:
    """Why the suite cannot run here, in one line, or None."""
    fs, sipp = find_freeswitch(), find_sipp()
    if fs and sipp:
        return None
    missing = [name for name, found in (("freeswitch", fs), ("sipp", sipp)) if not found]
    return (f"real-switch suite needs FreeSWITCH 1.10 and sipp; missing: {', '.join(missing)} "
            "(install with ../shared/realswitch/install.sh, or set SWITCHD_TEST_FREESWITCH)")


def module_dir(fs_bin: str) -> str:
    """Modules beside the binary's installation (…/bin/freeswitch → …/lib/freeswitch/mod)."""
    here = Path(os.path.realpath(fs_bin)).parent.parent / "lib" / "freeswitch" / "mod"
    return str(here if here.is_dir() else Path("/usr/local/freeswitch/lib/freeswitch/mod"))


def poll(predicate, timeout: float, what: str, interval: float = 0.05):
    """Return predicate()'s first truthy value, or raise HarnessError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- ESL: a tiny client of our own (the harness must not share switchd's code) ------------
def _read_frame(sock: socket.socket, buf: bytearray) -> tuple[dict[str, str], bytes]:
    """One ESL frame: headers (values URL-decoded) and body (Content-Length bytes)."""
    while b"\n\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("ESL connection closed")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\n\n")
    headers = {}
    for line in head.decode("utf-8", "replace").split("\n"):
        name, _, value = line.partition(": ")
        headers[name] = urllib.parse.unquote(value)
    length = int(headers.get("Content-Length", "0") or 0)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("ESL connection closed")
        rest += chunk
    buf[:] = rest[length:]
    return headers, rest[:length]


def _parse_event(body: bytes) -> dict[str, str]:
    event = {}
    for line in body.decode("utf-8", "replace").split("\n"):
        if ": " in line:
            name, _, value = line.partition(": ")
            event[name] = urllib.parse.unquote(value)
    return event


class EslClient:
    """One authenticated inbound ESL connection."""

    def __init__(self, port: int, password: str, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = bytearray()
        headers, _ = _read_frame(self.sock, self.buf)
        if headers.get("Content-Type") != "auth/request":
            raise ConnectionError(f"unexpected ESL greeting {headers}")
        reply = self.command(f"auth {password}")
        if not reply.get("Reply-Text", "").startswith("+OK"):
            raise ConnectionError(f"ESL auth refused: {reply.get('Reply-Text')}")

    def command(self, line: str) -> dict[str, str]:
        self.sock.sendall(line.encode() + b"\n\n")
        while True:
            headers, _ = _read_frame(self.sock, self.buf)
            if headers.get("Content-Type") == "command/reply":
                return headers

    def api(self, cmd: str) -> str:
        if "\n" in cmd:
            raise ValueError("ESL command with a newline")
        self.sock.sendall(f"api {cmd}\n\n".encode())
        while True:
            headers, body = _read_frame(self.sock, self.buf)
            if headers.get("Content-Type") == "api/response":
                return body.decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass(frozen=True)
class Hangup:
    """A CHANNEL_HANGUP_COMPLETE as FreeSWITCH sent it."""
    uuid: str
    direction: str               # 'inbound' (caller → switch) | 'outbound' (switch → carrier)
    cause: str
    billsec: int
    billmsec: int
    sip_term_status: int | None
    gateway: str | None
    sip_call_id: str | None
    switchd: dict[str, str]      # variable_switchd_* without the 'variable_' prefix
    headers: dict[str, str] = field(repr=False)

    @classmethod
    def from_event(cls, e: dict[str, str]) -> "Hangup":
        status = e.get("variable_sip_term_status")
        return cls(uuid=e.get("Unique-ID", ""), direction=e.get("Call-Direction", ""),
                   cause=e.get("Hangup-Cause", ""), billsec=int(e.get("variable_billsec") or 0),
                   billmsec=int(e.get("variable_billmsec") or 0),
                   sip_term_status=int(status) if status and status.isdigit() else None,
                   gateway=e.get("variable_sip_gateway_name"),
                   sip_call_id=e.get("variable_sip_call_id"),
                   switchd={k[len("variable_"):]: v for k, v in e.items()
                            if k.startswith("variable_switchd_")},
                   headers=e)


class EslListener:
    """The harness's own event listener (a thread): keeps every channel event it sees."""
    EVENTS = ("CHANNEL_CREATE CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA CHANNEL_ANSWER "
              "CHANNEL_HANGUP_COMPLETE BACKGROUND_JOB CUSTOM sofia::gateway_state")

    def __init__(self, port: int, password: str):
        self.port, self.password = port, password
        self.events: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self._client: EslClient | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._client = EslClient(self.port, self.password)
        self._client.command(f"event plain {self.EVENTS}")
        self._client.sock.settimeout(None)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="rs-esl-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = self._client
        try:
            while True:
                headers, body = _read_frame(client.sock, client.buf)
                if headers.get("Content-Type") == "text/event-plain":
                    event = _parse_event(body)
                    with self.lock:
                        self.events.append(event)
        except (OSError, ConnectionError, ValueError):
            return      # switch stopped or we closed it; restart() starts a new listener

    def stop(self) -> None:
        self._stopping = True
        if self._client is not None:
            try:
                self._client.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._client.close()
        if self._thread is not None:
            self._thread.join(5)

    def snapshot(self) -> list[dict[str, str]]:
        with self.lock:
            return list(self.events)

    def clear(self) -> None:
        with self.lock:
            self.events.clear()


# --- sipp ---------------------------------------------------------------------------------
def _sipp_base(sipp: str, ports: fsconfig.SippPorts) -> list[str]:
    return [sipp, "-i", "127.0.0.1", "-mi", "127.0.0.1", "-ci", "127.0.0.1",
            "-p", str(ports.sip), "-mp", str(ports.media), "-cp", str(ports.control),
            "-aa", "-nostdin"]


def received_invites(message_file: Path) -> list[dict[str, str]]:
    """INVITEs a sipp received, once per Call-ID, from its -trace_msg file:
    [{'call_id', 'request_uri', 'from', 'to', 'text'}]."""
    try:
        text = message_file.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    seen: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n-{20,}[^\n]*\n", "\n" + text):
        header, _, message = block.partition("\n\n")
        if "message received" not in header or not message.startswith("INVITE "):
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


class Carrier:
    """A sipp UAS behind one FreeSWITCH gateway, in a mode (answer, ring, a SIP code, down)."""

    def __init__(self, name: str, ports: fsconfig.SippPorts, sipp: str, run_dir: Path):
        self.name, self.ports, self.sipp = name, ports, sipp
        self.dir = run_dir / "sipp" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mode = "down"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self._baseline: set[str] = set()

    def set_mode(self, mode: str) -> None:
        """Restart the carrier in `mode`; 'down' leaves it stopped (its port unreachable)."""
        mode = str(mode)
        if mode not in MODES:
            raise ValueError(f"carrier mode {mode!r}: one of {', '.join(MODES)}")
        if mode == self.mode and (mode == "down" or self.alive()):
            return
        self.stop()
        self.mode = mode
        if mode == "down":
            return
        self.starts += 1
        cmd = _sipp_base(self.sipp, self.ports)
        if mode in ("answer", "ring"):
            cmd += ["-sf", str(SCENARIOS / f"uas-{mode}.xml")]
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
        poll(lambda: self.proc.poll() is not None or not fsconfig._free(self.ports.sip, tcp=False),
             5, f"sipp carrier {self.name} to bind 127.0.0.1:{self.ports.sip}")
        if self.proc.poll() is not None:
            raise HarnessError(f"sipp carrier {self.name} exited {self.proc.returncode} "
                               f"(see {self.dir}/stderr.log)")

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
            code = int(re.search(r"code=(\d+)", marks["final"]).group(1))
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
            bye_reason=reason, returncode=rc, dir=self.dir)


def _first_call_id(message_file: Path) -> str:
    try:
        text = message_file.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    m = re.search(r"^Call-ID:\s*(\S+)", text, re.M | re.I)
    return m.group(1) if m else ""


def uac_scenario(from_value: bytes, extra_headers: list[bytes], hold_ms: int) -> bytes:
    template = (SCENARIOS / "uac-call.xml").read_bytes()
    for bad in (b"\r", b"\n", b"[", b"]"):
        if bad in from_value or any(bad in h for h in extra_headers):
            raise ValueError(f"From/extra headers may not hold {bad!r} (sipp would read it)")
    finals = "\n".join(
        f'  <recv response="{c}" optional="true" next="rejected">\n'
        f'    <action><log message="rs final_ms=[clock_tick] code={c}"/></action>\n  </recv>'
        for c in FINAL_CODES).encode()
    extra = b"".join(b"      " + h + b"\n" for h in extra_headers)
    return (template.replace(b"@FROM@", from_value).replace(b"@EXTRA@\n", extra)
            .replace(b"@EXTRA@", extra).replace(b"@HOLD_MS@", str(int(hold_ms)).encode())
            .replace(b"@FINALS@", finals))


def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


class RealSwitch:
    """FreeSWITCH + three sipp carriers (gw_a, gw_b, gw_c) + sipp callers, in `run_dir`."""

    def __init__(self, run_dir: Path, *, esl_password: str = "rs-secret",
                 cdr_url: str | None = None, plan: fsconfig.PortPlan | None = None):
        reason = skip_reason()
        if reason:
            raise HarnessError(reason)
        self.fs_bin, self.sipp = find_freeswitch(), find_sipp()
        self.run_dir = Path(run_dir)
        self.plan = plan or fsconfig.PortPlan.allocate()
        self.esl_password = esl_password
        self.dialplan_url = f"http://127.0.0.1:{self.plan.http}/fs/dialplan"
        self.cdr_url = cdr_url
        self.fs_dir = self.run_dir / "fs"
        self.carriers = {name: Carrier(name, ports, self.sipp, self.run_dir)
                         for name, ports in self.plan.carriers.items()}
        self.listener = EslListener(self.plan.esl, esl_password)
        self._slots = list(range(len(self.plan.callers)))
        self._slot_lock = threading.Lock()
        self._calls = 0
        self._handles: list[CallHandle] = []
        self.fs_pid: int | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "RealSwitch":
        try:
            for carrier in self.carriers.values():     # before FreeSWITCH: first ping answered
                carrier.set_mode("answer")
            self._start_fs()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_fs(self, timeout: float = 30.0) -> None:
        for d in FS_DIRS:
            (self.fs_dir / d).mkdir(parents=True, exist_ok=True)
        (self.fs_dir / "conf" / "freeswitch.xml").write_text(fsconfig.render(
            self.plan, esl_password=self.esl_password, dialplan_url=self.dialplan_url,
            cdr_url=self.cdr_url))
        pid_file = self.fs_dir / "run" / "freeswitch.pid"
        pid_file.unlink(missing_ok=True)
        busy = [p for p in (self.plan.esl, self.plan.sip) if not fsconfig._free(p)]
        if busy:
            raise HarnessError(f"ports {busy} on 127.0.0.1 are taken; FreeSWITCH cannot start")
        args = [self.fs_bin, "-nonat", "-nonatmap", "-ncwait", "-base", str(self.fs_dir),
                "-mod", module_dir(self.fs_bin)]
        for d in FS_DIRS:
            args += [f"-{d}", str(self.fs_dir / d)]
        with open(self.fs_dir / "log" / "console.out", "ab") as out:
            rc = subprocess.call(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 timeout=timeout)
        if pid_file.exists():
            self.fs_pid = int(pid_file.read_text().strip())
        if rc != 0:
            raise HarnessError(f"freeswitch -ncwait exited {rc} (logs: {self.fs_dir / 'log'})")
        poll(self._esl_answers, timeout, f"ESL on 127.0.0.1:{self.plan.esl}", 0.1)
        self.fs_pid = int(pid_file.read_text().strip())
        poll(lambda: re.search(rf"^\s*{fsconfig.PROFILE}\s+profile\s.*RUNNING",
                               self.api("sofia status"), re.M),
             timeout, f"sofia profile {fsconfig.PROFILE} RUNNING", 0.1)
        self.listener.start()

    def _esl_answers(self) -> bool:
        try:
            EslClient(self.plan.esl, self.esl_password, timeout=2).close()
            return True
        except (OSError, ConnectionError):
            return False

    def _stop_fs(self, timeout: float = 20.0) -> None:
        self.listener.stop()
        pid, self.fs_pid = self.fs_pid, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            poll(lambda: not _alive(pid), timeout, f"freeswitch pid {pid} to exit", 0.1)
        except HarnessError:
            os.kill(pid, signal.SIGKILL)
            poll(lambda: not _alive(pid), 5, f"freeswitch pid {pid} to die", 0.1)

    def restart(self) -> None:
        """Stop FreeSWITCH (SIGTERM: gateways deleted, calls hung up) and start it again with
        the same config; carriers keep running. The listener reconnects; events are kept."""
        self._stop_fs()
        self._start_fs()

    def stop(self) -> None:
        for handle in self._handles:
            if handle.proc.poll() is None:
                stop_process(handle.proc)
        self._stop_fs()
        for carrier in self.carriers.values():
            carrier.stop()

    def reset(self, timeout: float = 20.0) -> None:
        """Between tests: no channels, every carrier answering, every gateway UP, counts and
        events forgotten."""
        for handle in self._handles:
            if handle.proc.poll() is None:
                stop_process(handle.proc)
        self._handles.clear()
        if self.fs_pid is None or not _alive(self.fs_pid):
            self._start_fs()
        self.api("hupall NORMAL_CLEARING")
        poll(lambda: self.channel_count() == 0, timeout, "no channels left on the switch", 0.1)
        for carrier in self.carriers.values():
            carrier.set_mode("answer")
        for name in self.carriers:
            poll(lambda: self.gateway_state(name) == "UP", timeout, f"gateway {name} UP", 0.2)
        for carrier in self.carriers.values():
            carrier.reset_counts()
        self.listener.clear()

    # -- the switch --------------------------------------------------------------------------
    def api(self, cmd: str) -> str:
        """One API command on a fresh ESL connection; returns FreeSWITCH's text."""
        client = EslClient(self.plan.esl, self.esl_password)
        try:
            return client.api(cmd)
        finally:
            client.close()

    def channel_count(self) -> int:
        m = re.search(r"(\d+) total", self.api("show channels count"))
        return int(m.group(1)) if m else 0

    def gateway_state(self, name: str) -> str | None:
        """'UP' or 'DOWN' (the ping status), None if the gateway does not exist."""
        text = self.api(f"sofia status gateway {name}")
        m = re.search(r"^Status\s+(\S+)", text, re.M)
        return m.group(1) if m else None

    # -- carriers ----------------------------------------------------------------------------
    def carrier(self, name: str) -> Carrier:
        return self.carriers[name]

    def invites(self) -> dict[str, int]:
        return {name: c.invites() for name, c in self.carriers.items()}

    # -- events ------------------------------------------------------------------------------
    def events(self, name: str | None = None) -> list[dict[str, str]]:
        return [e for e in self.listener.snapshot() if name is None or e.get("Event-Name") == name]

    def hangups(self, sip_call_id: str | None = None) -> list[Hangup]:
        found = [Hangup.from_event(e) for e in self.events("CHANNEL_HANGUP_COMPLETE")]
        if sip_call_id is None:
            return found
        # the A-leg carries the caller's Call-ID; carrier legs name the A-leg (_links)
        a_legs = {h.uuid for h in found if h.sip_call_id == sip_call_id and h.direction == "inbound"}
        return [h for h in found if h.uuid in a_legs or a_legs & _links(h.headers)]

    def wait_call(self, call: CallResult, timeout: float = 15.0) -> list[Hangup]:
        """Every leg of the caller's call once all have hung up: the A-leg first, then the
        carrier legs in the order FreeSWITCH created them."""
        return poll(lambda: self._call_legs(call.call_id), timeout,
                    f"every leg of Call-ID {call.call_id} to hang up")

    def _call_legs(self, sip_call_id: str) -> list[Hangup] | None:
        events = self.listener.snapshot()
        a_leg = next((e.get("Unique-ID") for e in events
                      if e.get("Event-Name") == "CHANNEL_CREATE"
                      and e.get("variable_sip_call_id") == sip_call_id), None)
        if a_leg is None:
            a_leg = next((e.get("Unique-ID") for e in events
                          if e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE"
                          and e.get("variable_sip_call_id") == sip_call_id
                          and e.get("Call-Direction") == "inbound"), None)
        if a_leg is None:
            return None
        created = [a_leg] + [e["Unique-ID"] for e in events
                             if e.get("Event-Name") == "CHANNEL_CREATE" and e.get("Unique-ID") != a_leg
                             and a_leg in _links(e)]
        done = {e["Unique-ID"]: Hangup.from_event(e) for e in events
                if e.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE" and e.get("Unique-ID") in created}
        if any(uuid not in done for uuid in created):
            return None
        return [done[uuid] for uuid in dict.fromkeys(created)]

    # -- callers -----------------------------------------------------------------------------
    def call_async(self, number: str, *, caller_number: str = "1000",
                   caller_name: str | bytes = "switchd test", from_header: str | bytes | None = None,
                   headers: dict[str, str] | None = None, hold_ms: int = 1000,
                   timeout_s: float = 120.0) -> CallHandle:
        """Start one call (a sipp caller) to `number` at the switch's SIP profile.
        `from_header` replaces the whole From value (byte for byte, without ';tag=');
        otherwise it is `"caller_name" <sip:caller_number@127.0.0.1>`."""
        if from_header is None:
            from_header = b'"' + _as_bytes(caller_name) + b'" <sip:' + _as_bytes(caller_number) \
                          + b"@127.0.0.1>"
        extra = [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
        with self._slot_lock:
            if not self._slots:
                raise HarnessError(f"all {len(self.plan.callers)} caller slots are busy")
            slot = self._slots.pop(0)
            self._calls += 1
            directory = self.run_dir / "calls" / f"call-{self._calls:04d}"
        directory.mkdir(parents=True)
        (directory / "uac.xml").write_bytes(uac_scenario(_as_bytes(from_header), extra, hold_ms))
        ports = self.plan.callers[slot]
        cmd = [*_sipp_base(self.sipp, ports), f"127.0.0.1:{self.plan.sip}", "-sf", "uac.xml",
               "-s", number, "-m", "1", "-timeout", f"{int(timeout_s)}s",
               "-trace_msg", "-message_file", "messages.log", "-trace_logs", "-log_file", "call.log",
               "-trace_err", "-error_file", "errors.log"]
        with open(directory / "stderr.log", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        handle = CallHandle(proc, slot, directory, self._release_slot)
        self._handles.append(handle)
        return handle

    def call(self, number: str, **kwargs) -> CallResult:
        """`call_async(...)` then wait: the caller's view of one call."""
        return self.call_async(number, **kwargs).wait()

    def _release_slot(self, slot: int) -> None:
        with self._slot_lock:
            if slot not in self._slots:
                self._slots.append(slot)


def _links(event: dict[str, str]) -> set[str]:
    """UUIDs of the legs an event's channel was created for (a carrier leg names its A-leg)."""
    return {event[k] for k in ("variable_originating_leg_uuid", "Other-Leg-Unique-ID",
                               "Channel-Call-UUID", "variable_originator") if event.get(k)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:    # a zombie is dead for us
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
