"""A stand-in for PostgreSQL's Unix socket that a test can cut, as if the server stopped.

`PgProxy(url)` listens on a socket of its own and forwards each connection to the real
server of `url`; `.url` is the same URL through the proxy. `cut()` closes every open
connection and removes the socket (clients get "connection refused"/"no such file", as when
PostgreSQL is down), `restore()` listens again. Threads, not greenlets: the test process
is not monkey-patched.
"""
from __future__ import annotations

import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path


class PgProxy:
    def __init__(self, url: str):
        host = re.search(r"host=(\S+)", url)
        port = re.search(r"port=(\d+)", url)
        if not host or not host.group(1).startswith("/"):
            raise ValueError(f"not a Unix-socket conninfo: {url}")
        name = f".s.PGSQL.{port.group(1) if port else 5432}"
        self.target = str(Path(host.group(1)) / name)
        self.dir = Path(tempfile.mkdtemp(prefix="pgproxy-"))   # short: socket paths are limited
        self.path = self.dir / name
        self.url = url.replace(host.group(0), f"host={self.dir}")
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def start(self) -> "PgProxy":
        self.restore()
        return self

    def restore(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self.path.unlink(missing_ok=True)
        with self._lock:
            for sock in list(self._open):
                _shut(sock)
            self._open.clear()

    def stop(self) -> None:
        self.cut()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return                                  # cut: the listener is closed
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            _shut(sock)
            with self._lock:
                self._open.discard(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
