"""ESL event throughput: switchd's reader against greenswitch's own, same bytes, same run.

    python benchmarks/esl_events.py            (~200k events, well under 2 min)
    python benchmarks/esl_events.py --full     (1M events)
    python benchmarks/esl_events.py --events N

A server process replays the captured FreeSWITCH 1.10 event-plain streams
(tests/fixtures/freeswitch-1.10/events-plain-*.txt, byte for byte) over loopback, repeated
to N events, after the real auth handshake: only the events switchd subscribes to (what
FreeSWITCH would send it), unless --all-events replays `event plain ALL`. The client side, measured:

- switchd: ESLConnection (sock.recv → FrameParser → name peek → channel_event_from_plain
  for channel events, parse_event_plain → to_typed for the rest → bounded queue →
  dispatcher greenlet → handler), plus CallRegistry.apply on channel events when
  switchd/calls/registry.py offers it;
- baseline: greenswitch 0.0.19 InboundESL (receive_events → handle_event → ESLEvent
  parsing → its queue → process_events → a '*' handler).

Each side is timed from the end of authentication to the last event handled. The last
stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import re
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures" / "freeswitch-1.10"


def captured_events(subscribed_only: bool = True) -> list[bytes]:
    """The text/event-plain frames of the plain captures, as raw bytes: by default only
    those FreeSWITCH sends on switchd's subscription (SUBSCRIBED_EVENTS; the captures were
    taken with `event plain ALL`, and most of their events are ones no subscriber of ours
    would receive)."""
    from switchd.adapters.esl.events import SUBSCRIBED_EVENTS
    from switchd.adapters.esl.framing import EVENT_PLAIN, FrameParser, parse_event_plain
    wanted = set(SUBSCRIBED_EVENTS)
    out = []
    for path in sorted(FIXTURES.glob("events-plain-*.txt")):
        parser = FrameParser()
        parser.feed(path.read_bytes())
        for frame in parser.frames():
            if frame.content_type != EVENT_PLAIN:
                continue
            headers = parse_event_plain(frame.body)
            name = headers.get("Event-Name", "")
            if name == "CUSTOM":
                name = headers.get("Event-Subclass", "")
            if subscribed_only and name not in wanted:
                continue
            out.append(b"Content-Length: %d\nContent-Type: text/event-plain\n\n"
                       % len(frame.body) + frame.body)
    return out


_UUID = re.compile(rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def repetitions(unit: bytes, reps: int):
    """``unit`` ``reps`` times, each copy with its own call UUIDs (same length, so every
    Content-Length holds), so the registry sees new calls, not replays of finished ones."""
    core = re.search(rb"Core-UUID: (\S+)", unit).group(1)
    parts = _UUID.split(unit)              # odd indexes are UUIDs
    for rep in range(reps):
        tag = b"%012x" % rep
        yield b"".join(p if i % 2 == 0 or p == core else p[:24] + tag
                       for i, p in enumerate(parts))


_SENTINEL_BODY = b"Event-Name: HEARTBEAT\nEvent-Date-Timestamp: 424242\n\n"
SENTINEL = (b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(_SENTINEL_BODY)
            + _SENTINEL_BODY)


def serve(listener: socket.socket, unit: bytes, reps: int, connections: int) -> None:
    for _ in range(connections):
        conn, _ = listener.accept()
        conn.sendall(b"Content-Type: auth/request\n\n")
        buf = b""
        while b"\n\n" not in buf:
            buf += conn.recv(4096)
        conn.sendall(b"Content-Type: command/reply\nReply-Text: +OK accepted\n\n")
        for chunk in repetitions(unit, reps):
            conn.sendall(chunk)
        conn.sendall(SENTINEL)
        # Keep the connection open until the client closes: greenswitch stops processing
        # its queue at EOF, which would lose events and hide its real rate.
        while conn.recv(65536):
            pass
        conn.close()


def run_switchd(port: int, total: int, registry_factory) -> dict:
    from gevent.event import Event
    from switchd.adapters.esl.connection import ESLConnection
    from switchd.adapters.esl.events import ChannelEvent, HeartbeatEvent

    registry = registry_factory() if registry_factory else None
    typed = 0
    done = Event()

    def handler(event):
        nonlocal typed
        typed += 1
        if isinstance(event, ChannelEvent):
            if registry is not None:
                registry.apply(event)
        elif isinstance(event, HeartbeatEvent) and event.timestamp_us == 424242:
            done.set()

    conn = ESLConnection("127.0.0.1", port, "ClueCon", on_event=handler,
                         connect_timeout=10, command_timeout=10, event_queue_size=100_000)
    conn.connect()
    start = time.perf_counter()
    done.wait(600)
    elapsed = time.perf_counter() - start
    dropped = conn.dropped_events
    conn.close()
    return {"seconds": elapsed, "typed": typed - 1, "dropped": dropped,
            "complete": done.is_set()}


def run_greenswitch(port: int, total: int) -> dict:
    import gevent
    from gevent.event import Event
    from greenswitch.esl import InboundESL

    done = Event()
    count = 0

    def handler(event):
        nonlocal count
        count += 1
        if event.headers.get("Event-Date-Timestamp") == "424242":
            done.set()

    conn = InboundESL("127.0.0.1", port, "ClueCon", timeout=10)
    conn.register_handle("*", handler)
    conn.connect()
    start = time.perf_counter()
    done.wait(600)
    elapsed = time.perf_counter() - start
    conn._run = False
    conn.sock.close()
    gevent.sleep(0)
    return {"seconds": elapsed, "handled": count - 1, "complete": done.is_set()}


def registry_factory():
    try:
        from switchd.calls.registry import CallRegistry
    except ImportError:
        return None
    if not hasattr(CallRegistry, "apply"):
        return None
    return CallRegistry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--full", action="store_true", help="1,000,000 events")
    ap.add_argument("--all-events", action="store_true",
                    help="replay every captured event (`event plain ALL`), not only the "
                         "ones switchd subscribes to")
    args = ap.parse_args()
    target = 1_000_000 if args.full else args.events

    events = captured_events(subscribed_only=not args.all_events)
    unit = b"".join(events)
    reps = max(1, round(target / len(events)))
    total = reps * len(events)
    print(f"{len(events)} captured events ({len(unit)} bytes) x {reps} = {total} events, "
          f"{len(unit) * reps / 1e6:.0f} MB per side")

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(
        target=serve, args=(listener, unit, reps, 2), daemon=True)
    server.start()

    factory = registry_factory()
    print("registry stand-in:", "switchd.calls.registry.CallRegistry().apply on channel events"
          if factory else "skipped (switchd/calls/registry.py has no CallRegistry.apply)")
    ours = run_switchd(port, total, factory)
    print(f"switchd:     {total / ours['seconds']:>10,.0f} events/s  "
          f"({ours['seconds']:.2f}s, {ours['typed']} typed, {ours['dropped']} dropped)")
    base = run_greenswitch(port, total)
    print(f"greenswitch: {total / base['seconds']:>10,.0f} events/s  "
          f"({base['seconds']:.2f}s, {base['handled']} handled)")
    server.join(10)

    if ours["dropped"] or not ours["complete"] or base["handled"] != total:
        print("WARNING: not every event was handled; figures are not comparable")
    eps = total / ours["seconds"]
    base_eps = total / base["seconds"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(json.dumps({"events_per_s": round(eps), "baseline_events_per_s": round(base_eps),
                      "ratio": round(eps / base_eps, 2), "events": total,
                      "subscribed_only": not args.all_events,
                      "registry": bool(factory), "dropped": ours["dropped"]}))


if __name__ == "__main__":
    main()
