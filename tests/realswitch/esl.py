"""ESL for the harness: a tiny client and event listener of our own (the harness must not
share switchd's code, or a bug there would hide itself)."""
from __future__ import annotations

import socket
import threading
import urllib.parse
from dataclasses import dataclass, field


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
