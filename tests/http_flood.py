"""A flood of mod_xml_curl lookups, in its own process: `python http_flood.py PORT N`.

N connections post lookups back to back (a new TCP connection each, as libcurl does)
until stdin closes; then one JSON line: answers counted by HTTP status, and failures.
"""
from __future__ import annotations

import json
import re
import struct
import sys
import uuid

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
from gevent import socket  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402


def lookup(port: int) -> bytes:
    body = (f"section=dialplan&Unique-ID={uuid.uuid4()}&Hunt-Context=public&"
            "Caller-Context=public&Caller-Destination-Number=%2B442079460000&"
            "Caller-Caller-ID-Number=1000&variable_accountcode=acme").encode()
    return (b"POST /fs/dialplan HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n"
            % (port, len(body)) + body)


def _read_rest(s, head: bytes) -> None:
    """The rest of the response's body; then the worker closes, as libcurl does (waiting
    for the server to close would hold a kept-alive connection for the idle timeout)."""
    end = head.find(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head[:end])
    if end < 0 or length is None:
        while s.recv(65536):
            pass
        return
    missing = int(length.group(1)) - (len(head) - end - 4)
    while missing > 0:
        chunk = s.recv(65536)
        if not chunk:
            return
        missing -= len(chunk)


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    counts: dict[str, int] = {}
    running = [True]

    def worker():
        while running[0]:
            status = "failed"
            s = socket.socket()
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(lookup(port))
                head = s.recv(65536)
                status = head[9:12].decode() or "failed"
                _read_rest(s, head)
            except OSError:
                pass
            finally:
                # A reset, not a FIN: closing first would leave this side a TIME_WAIT per
                # lookup, tens of thousands over the run, across the ephemeral ports
                # other tests then cannot bind for a minute.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            counts[status] = counts.get(status, 0) + 1

    greenlets = [gevent.spawn(worker) for _ in range(workers)]
    print("flooding", flush=True)
    FileObjectPosix(sys.stdin.fileno(), "rb", close=False).read()    # until stdin closes
    running[0] = False
    gevent.joinall(greenlets, timeout=15)
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
