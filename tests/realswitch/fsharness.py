"""A real FreeSWITCH with sipp carriers and callers, for the real-switch suite.

The API is documented in conftest.py. This module knows nothing of switchd: it starts the
switch, the carriers and the callers, and reports what they saw.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

from . import fsconfig
from .common import HarnessError, poll, stop_process
from .esl import EslClient, EslListener, Hangup
from .sipp import (CallHandle, CallResult, Carrier, GatewayPing, LoadHandle, as_bytes,
                   sipp_command, uac_scenario)

FS_DIRS = ("conf", "log", "db", "run", "temp", "cache", "storage", "recordings", "sounds",
           "scripts", "grammar", "certs", "htdocs")


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
    explicit = os.environ.get("SWITCHD_TEST_FREESWITCH")
    missing = [("freeswitch" if not explicit else
                f"freeswitch (SWITCHD_TEST_FREESWITCH={explicit} is not an executable)")
               ] if not fs else []
    missing += [] if sipp else ["sipp"]
    return (f"real-switch suite needs FreeSWITCH 1.10 and sipp; missing: {', '.join(missing)} "
            "(install both with ../shared/realswitch/install.sh, or set SWITCHD_TEST_FREESWITCH)")


def module_dir(fs_bin: str) -> str:
    """Modules beside the binary's installation (…/bin/freeswitch → …/lib/freeswitch/mod)."""
    here = Path(os.path.realpath(fs_bin)).parent.parent / "lib" / "freeswitch" / "mod"
    return str(here if here.is_dir() else Path("/usr/local/freeswitch/lib/freeswitch/mod"))

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
        self.default_cdr_url = cdr_url   # what reset() returns to (the session's choice)
        self.sessions_per_second = 100   # FreeSWITCH's throttle (a call is 2 sessions)
        self.profile_params: dict[str, str] = {}    # a test's extra sofia profile settings
        self.fs_dir = self.run_dir / "fs"
        self.carriers = {name: Carrier(name, ports, self.sipp, self.run_dir,
                                       gateway_ping=partial(self.gateway_ping, name))
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
        self._write_config()
        pid_file = self.fs_dir / "run" / "freeswitch.pid"
        pid_file.unlink(missing_ok=True)
        busy = [p for p in (self.plan.esl, self.plan.sip) if not fsconfig.port_free(p)]
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

    def _pid_from_file(self) -> int | None:
        """FreeSWITCH's pid even when a start failed half-way (so stop() leaves no stray)."""
        try:
            pid = int((self.fs_dir / "run" / "freeswitch.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        return pid if str(self.fs_dir).encode() in cmdline else None     # ours, not a reused pid

    def _write_config(self) -> None:
        (self.fs_dir / "conf" / "freeswitch.xml").write_text(fsconfig.render(
            self.plan, esl_password=self.esl_password, dialplan_url=self.dialplan_url,
            cdr_url=self.cdr_url, sessions_per_second=self.sessions_per_second,
            profile_params=self.profile_params))

    def _esl_answers(self) -> bool:
        try:
            EslClient(self.plan.esl, self.esl_password, timeout=2).close()
            return True
        except (OSError, ConnectionError):
            return False

    def _stop_fs(self, timeout: float = 20.0) -> None:
        self.listener.stop()
        pid, self.fs_pid = self.fs_pid or self._pid_from_file(), None
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
        """Between tests: no channels, every carrier answering, every gateway UP, counts,
        events and mod_json_cdr's error directory forgotten."""
        for handle in self._handles:
            if handle.proc.poll() is None:
                stop_process(handle.proc)
        self._handles.clear()
        if self.fs_pid is None or not _alive(self.fs_pid):
            self._start_fs()
        if self.cdr_url != self.default_cdr_url:
            self.set_cdr_url(self.default_cdr_url)
        if self.profile_params:
            self.set_profile_params({})
        self.api("hupall NORMAL_CLEARING")
        self.api(f"fsctl sps {self.sessions_per_second}")     # a test may have lowered it
        poll(lambda: self.channel_count() == 0, timeout, "no channels left on the switch", 0.1)
        for carrier in self.carriers.values():
            carrier.set_mode("answer")
        for name in self.carriers:
            poll(lambda: self.gateway_state(name) == "UP", timeout, f"gateway {name} UP", 0.2)
        for carrier in self.carriers.values():
            carrier.reset_counts()
        self.listener.clear()
        # CDRs mod_json_cdr could not post while no daemon listened (between tests) belong
        # to earlier tests: each test starts with an empty error directory.
        for leftover in (self.fs_dir / "log" / "json_cdr").glob("*.cdr.json"):
            leftover.unlink()

    def set_cdr_url(self, url: str | None) -> None:
        """Turn mod_json_cdr on (posting every leg's CDR to `url`) or off (None), at once:
        the config is rewritten, `reloadxml`, then the module is (re)loaded or unloaded.
        `reset()` returns to the URL the switch was built with."""
        was, self.cdr_url = self.cdr_url, url
        self._write_config()
        if not self.api("reloadxml").startswith("+OK"):
            raise HarnessError("reloadxml failed after writing the CDR URL")
        if was:
            self.api("unload mod_json_cdr")
        if url:
            reply = self.api("load mod_json_cdr")
            if not reply.startswith("+OK"):
                raise HarnessError(f"load mod_json_cdr: {reply.strip()}")

    def set_profile_params(self, params: dict[str, str], timeout: float = 20.0) -> None:
        """Give the sofia profile these extra settings (on top of fsconfig's). mod_sofia
        reads most of them only when a profile starts, and `sofia profile ... restart` is
        asynchronous: FreeSWITCH is restarted with them (`restart()`). Returns once the
        gateways are UP again. `reset()` takes them away the same way."""
        self.profile_params = dict(params)
        self.restart()
        for name in self.carriers:
            poll(lambda: self.gateway_state(name) == "UP", timeout, f"gateway {name} UP", 0.2)

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
        ping = self.gateway_ping(name)
        return None if ping is None else "UP" if ping.up else "DOWN"

    def gateway_ping(self, name: str) -> GatewayPing | None:
        """The gateway's ping schedule, None when FreeSWITCH is not running or has no such
        gateway (after a restart, until the profile has loaded it)."""
        if self.fs_pid is None or not _alive(self.fs_pid):
            return None
        try:
            text = self.api(f"sofia xmlstatus gateway {name}")
        except (OSError, HarnessError):
            return None
        fields = dict(re.findall(r"<(ping|pinging|status)>([^<]*)</", text))
        if len(fields) < 3:
            return None
        return GatewayPing(next_at=int(fields["ping"]), pinging=fields["pinging"] == "1",
                           up=fields["status"] == "UP")

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

    def wait_hangups(self, uuids, timeout: float = 20.0) -> list[Hangup]:
        """FreeSWITCH's own CHANNEL_HANGUP_COMPLETE of each of these channel UUIDs, in
        their order, once every one has hung up."""
        uuids = list(uuids)

        def found():
            by_uuid = {h.uuid: h for h in self.hangups() if h.uuid in uuids}
            return [by_uuid[u] for u in uuids] if len(by_uuid) == len(uuids) else None
        return poll(found, timeout, f"hangup events of {uuids}")

    def wait_call(self, call: CallResult, timeout: float = 15.0) -> list[Hangup]:
        """Every leg of the caller's call once all have hung up: the A-leg first, then the
        carrier legs in the order FreeSWITCH created them. [] when the switch refused the
        INVITE without creating a channel (a SIP-level 4xx, e.g. an unparsable From): that is
        decided after 3 s without a CHANNEL_CREATE for a call the caller saw refused."""
        deadline = time.monotonic() + 3.0
        refused = call.code is not None and call.code != 200

        def legs():
            found = self._call_legs(call.call_id)
            if found is None and refused and time.monotonic() > deadline \
                    and not self._a_leg(self.listener.snapshot(), call.call_id):
                return []
            return found
        found = poll(lambda: (lambda v: (v,) if v is not None else None)(legs()), timeout,
                     f"every leg of Call-ID {call.call_id} to hang up")
        return found[0]

    @staticmethod
    def _a_leg(events: list[dict[str, str]], sip_call_id: str) -> str | None:
        return next((e.get("Unique-ID") for e in events
                     if e.get("Event-Name") in ("CHANNEL_CREATE", "CHANNEL_HANGUP_COMPLETE")
                     and e.get("Call-Direction") == "inbound"
                     and e.get("variable_sip_call_id") == sip_call_id), None)

    def _call_legs(self, sip_call_id: str) -> list[Hangup] | None:
        events = self.listener.snapshot()
        a_leg = self._a_leg(events, sip_call_id)
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
                   tenant: str | None = "acme", headers: dict[str, str] | None = None,
                   hold_ms: int = 1000, timeout_s: float = 120.0,
                   cancel_after_ms: int | None = None,
                   cancel_from: str = "progress", refer_to: str | None = None) -> CallHandle:
        """Start one call (a sipp caller) to `number` at the switch's SIP profile.
        `cancel_after_ms`: the caller gives up, CANCELling that long after the first
        180/183 (scenarios/uac-cancel.xml), or after the switch's 100 Trying with
        cancel_from="trying"; the result's code is then 487.
        `from_header` replaces the whole From value (byte for byte, without ';tag=');
        otherwise it is `"caller_name" <sip:caller_number@127.0.0.1>`. `tenant` is sent as
        `X-Tenant` (None: no header, e.g. a call to a DID); `headers` adds more.
        `refer_to`: answered, the caller blind-transfers the call to that number after
        hold_ms (an in-dialog REFER, scenarios/uac-refer.xml); the result's `refer_answer`
        is FreeSWITCH's answer to it (202, or 405 refused: the caller then talks another
        hold_ms and hangs up)."""
        if from_header is None:
            from_header = b'"' + as_bytes(caller_name) + b'" <sip:' + as_bytes(caller_number) \
                          + b"@127.0.0.1>"
        all_headers = ({"X-Tenant": tenant} if tenant else {}) | (headers or {})
        extra = [f"{k}: {v}".encode() for k, v in all_headers.items()]
        with self._slot_lock:
            if not self._slots:
                raise HarnessError(f"all {len(self.plan.callers)} caller slots are busy")
            slot = self._slots.pop(0)
            self._calls += 1
            directory = self.run_dir / "calls" / f"call-{self._calls:04d}"
        directory.mkdir(parents=True)
        (directory / "uac.xml").write_bytes(uac_scenario(as_bytes(from_header), extra, hold_ms,
                                                          cancel_after_ms, cancel_from,
                                                          refer_to))
        ports = self.plan.callers[slot]
        cmd = [*sipp_command(self.sipp, ports), f"127.0.0.1:{self.plan.sip}", "-sf", "uac.xml",
               "-s", number, "-m", "1", "-timeout", f"{int(timeout_s)}s",
               "-trace_msg", "-message_file", "messages.log", "-trace_logs", "-log_file", "call.log",
               "-trace_err", "-error_file", "errors.log"]
        with open(directory / "stderr.log", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        handle = CallHandle(proc, slot, directory, self._release_slot)
        self._handles.append(handle)
        return handle

    def load_async(self, number: str, *, rate: float, count: int, hold_ms: int,
                   tenant: str | None = "acme", limit: int = 200,
                   timeout_s: float = 600.0) -> LoadHandle:
        """`count` calls to `number` from one sipp caller, `rate` new calls a second, each
        held `hold_ms` (at most `limit` up at once); `.wait()` gives the LoadResult. What
        the switch did is in `hangups()`, as for single calls."""
        extra = [f"X-Tenant: {tenant}".encode()] if tenant else []
        with self._slot_lock:
            if not self._slots:
                raise HarnessError(f"all {len(self.plan.callers)} caller slots are busy")
            slot = self._slots.pop(0)
            self._calls += 1
            directory = self.run_dir / "calls" / f"load-{self._calls:04d}"
        directory.mkdir(parents=True)
        from_value = b'"switchd load" <sip:1000@127.0.0.1>'
        (directory / "uac.xml").write_bytes(uac_scenario(from_value, extra, hold_ms))
        cmd = [*sipp_command(self.sipp, self.plan.callers[slot]), f"127.0.0.1:{self.plan.sip}",
               "-sf", "uac.xml", "-s", number, "-m", str(count), "-r", str(rate),
               "-l", str(limit), "-timeout", f"{int(timeout_s)}s",
               "-trace_logs", "-log_file", "call.log", "-trace_err", "-error_file", "errors.log"]
        with open(directory / "stderr.log", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=directory, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=err)
        handle = LoadHandle(proc, slot, directory, self._release_slot)
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
