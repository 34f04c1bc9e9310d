"""mod_json_cdr as the simulator plays it: every leg's CDR is posted when the leg ends.

The record is built from the leg's CHANNEL_HANGUP_COMPLETE headers, since FreeSWITCH fills
both from the same channel: `variables` from the `variable_*` headers, `channel_data`, and
one `callflow` entry with the caller profile and times from the `Caller-*` headers.
Delivery follows freeswitch-conf/autoload_configs/json_cdr.conf.xml: POST <url>?uuid=<leg>
with the raw JSON (encode=false), HTTP Basic auth from `credentials`, any 2xx is success;
otherwise `retries` more attempts `delay_s` apart, then the record is written to
`err_dir/<uuid>.cdr.json` (what `switchd cdr import` replays), or dropped and counted when no
directory is set. A switch that dies takes its unposted CDRs with it (Simulator.restart).
"""
from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import gevent
import gevent.pool

from switchd.sim import xmlcurl

log = logging.getLogger(__name__)

# mod_json_cdr's request as captured from FreeSWITCH 1.10.12 (tests/fixtures/json_cdr/):
# with disable-100-continue the Content-Type is curl's form default, whatever the body.
_HEAD = ["POST / HTTP/1.1", "Host: -", "User-Agent: freeswitch-json/1.0", "Accept: */*",
         "Content-Length: 0", "Content-Type: application/x-www-form-urlencoded"]

# Caller profile fields of the callflow entry, from the event's Caller-* headers.
_PROFILE = {"username": "Caller-Username", "dialplan": "Caller-Dialplan",
            "caller_id_name": "Caller-Caller-ID-Name", "ani": "Caller-ANI",
            "caller_id_number": "Caller-Caller-ID-Number", "network_addr": "Caller-Network-Addr",
            "destination_number": "Caller-Destination-Number", "uuid": "Caller-Unique-ID",
            "source": "Caller-Source", "context": "Caller-Context",
            "chan_name": "Caller-Channel-Name"}
_TIMES = {"created_time": "Caller-Channel-Created-Time",
          "profile_created_time": "Caller-Profile-Created-Time",
          "progress_time": "Caller-Channel-Progress-Time",
          "progress_media_time": "Caller-Channel-Progress-Media-Time",
          "answered_time": "Caller-Channel-Answered-Time",
          "bridged_time": "Caller-Channel-Bridged-Time",
          "hangup_time": "Caller-Channel-Hangup-Time"}


@dataclass(frozen=True)
class CdrSink:
    """Where and how the simulated switch posts CDRs (json_cdr.conf.xml's settings)."""
    url: str
    credentials: str | None = None      # user:password (`cred`)
    retries: int = 3
    delay_s: float = 2.0                # real seconds between attempts
    err_dir: Path | None = None
    timeout_s: float = 5.0


def record(headers: list[tuple[str, str | None]], switchname: str) -> dict:
    """The mod_json_cdr JSON object of the leg whose HANGUP_COMPLETE headers these are."""
    h = {k: v for k, v in headers if v is not None}
    variables = {k[len("variable_"):]: v for k, v in headers
                 if k.startswith("variable_") and v is not None}
    return {
        "core-uuid": h.get("Core-UUID", ""), "switchname": switchname,
        "channel_data": {"state": "CS_REPORTING", "direction": h.get("Call-Direction", ""),
                         "state_number": "11"},
        "variables": variables,
        "callflow": [{"dialplan": h.get("Caller-Dialplan", "XML"), "profile_index": "1",
                      "caller_profile": {k: h.get(v, "") for k, v in _PROFILE.items()},
                      "times": {k: h.get(v, "0") for k, v in _TIMES.items()}}],
    }


class CdrPoster:
    """Posts CDRs in the background; `wait_idle` lets a test or the demo wait for delivery."""

    def __init__(self, sink: CdrSink, switchname: str):
        self.sink = sink
        self.switchname = switchname
        self.delivered: list[str] = []      # leg UUIDs acknowledged with a 2xx
        self.written: list[Path] = []       # records left in err_dir
        self.dropped: list[str] = []        # every attempt failed and no err_dir
        self._group = gevent.pool.Group()

    def submit(self, headers: list[tuple[str, str | None]],
               then: Callable[[], None] | None = None) -> None:
        """Post the leg's CDR in the background; `then` runs once the post is settled
        (answered, written to err_dir or dropped): the leg's HANGUP_COMPLETE."""
        data = record(headers, self.switchname)
        uuid = data["variables"].get("uuid", "")
        self._group.spawn(self._post, uuid, json.dumps(data).encode(), then)

    def _post(self, uuid: str, body: bytes, then: Callable[[], None] | None) -> None:
        self._deliver(uuid, body)
        if then is not None:
            then()

    def _deliver(self, uuid: str, body: bytes) -> None:
        head = list(_HEAD)
        if self.sink.credentials:
            token = base64.b64encode(self.sink.credentials.encode()).decode()
            head.insert(2, f"Authorization: Basic {token}")
        sep = "&" if "?" in self.sink.url else "?"
        url = f"{self.sink.url}{sep}uuid={quote(uuid)}"
        for attempt in range(self.sink.retries + 1):
            if attempt:
                gevent.sleep(self.sink.delay_s)
            try:
                status, _ = xmlcurl.send(url, head, body, self.sink.timeout_s)
            except (OSError, xmlcurl.LookupFailed) as exc:
                status, reason = 0, str(exc)
            else:
                reason = f"HTTP {status}"
            if 200 <= status < 300:
                self.delivered.append(uuid)
                return
            log.info("sim json_cdr: post of %s failed (%s), attempt %d", uuid, reason,
                     attempt + 1)
        if self.sink.err_dir is None:
            self.dropped.append(uuid)
            return
        self.sink.err_dir.mkdir(parents=True, exist_ok=True)
        path = self.sink.err_dir / f"{uuid}.cdr.json"
        path.write_bytes(body + b"\n")
        self.written.append(path)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once every submitted record was delivered, written or dropped."""
        return self._group.join(timeout=timeout)

    def kill(self) -> None:
        """The switch died: records still being posted are gone."""
        self._group.kill()
