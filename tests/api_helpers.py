"""Helpers for the /v1 API tests: call the WSGI app in-process (real PostgreSQL behind it)
and a real local HTTP receiver for webhooks."""
from __future__ import annotations

import io
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def call(app, method: str, path: str, token: str | None = None, body=None,
         raw: bytes | None = None, headers: dict | None = None):
    """(status, headers, parsed body) of one request through the WSGI app."""
    parts = urlsplit(path)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    environ = {"REQUEST_METHOD": method, "PATH_INFO": parts.path,
               "QUERY_STRING": parts.query, "CONTENT_LENGTH": str(len(data)),
               "wsgi.input": io.BytesIO(data)}
    if token:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    for k, v in (headers or {}).items():
        environ["HTTP_" + k.upper().replace("-", "_")] = v
    seen = {}

    def start_response(status, hdrs):
        seen["status"] = int(status.split()[0])
        seen["headers"] = dict(hdrs)
    out = b"".join(app(environ, start_response))
    ctype = seen["headers"].get("Content-Type", "")
    parsed = json.loads(out) if ctype == "application/json" and out else out.decode()
    return seen["status"], seen["headers"], parsed


def helper_port(offset: int) -> int:
    """A port in this helper's range when SWITCHD_TEST_PORT_BASE is set, else any free one."""
    base = os.environ.get("SWITCHD_TEST_PORT_BASE")
    if base:
        return int(base) + 900 + offset
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A webhook receiver on a fixed port that can be down (not listening) and then up.
    Every POST is kept with its headers; `wait_for(n)` blocks on a condition, not a sleep."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/switchd"
        self.received: list[dict] = []
        self.cond = threading.Condition()
        self.server = None

    def up(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.cond:
                    receiver.received.append({"headers": dict(self.headers), "body": body,
                                              "path": self.path})
                    receiver.cond.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def wait_for(self, predicate, timeout: float = 20.0) -> list[dict]:
        with self.cond:
            if not self.cond.wait_for(lambda: predicate(self.received), timeout):
                raise AssertionError(f"receiver: condition not met; got {len(self.received)} "
                                     f"deliveries: {[json.loads(r['body'])['event'] for r in self.received]}")
            return list(self.received)
