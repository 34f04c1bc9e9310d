"""Build switchd/sim/data/templates.json from the FreeSWITCH 1.10 captures.

    python -m switchd.sim.make_templates tests/fixtures/freeswitch-1.10

The simulator renders its events and the mod_xml_curl POST from these templates, so its
bytes follow a real FreeSWITCH header for header. Call-specific values become
{{PLACEHOLDERS}}; times are overridden by header name at render time (switchd/sim/legs.py).
tests/test_sim_wire.py checks the shipped JSON equals what this builds.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

from switchd.sim.wire import TEMPLATES_PATH


def read_transcript(path: Path) -> list[tuple[str, str, bytes]]:
    data = path.read_bytes()
    pos, blocks = 0, []
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end].decode()
        pos = end + 1
        if line.startswith("@@ note"):
            continue
        m = re.match(r"@@ conn=(\S+) dir=(\S+) len=(\d+)", line)
        n = int(m.group(3))
        blocks.append((m.group(1), m.group(2), data[pos:pos + n]))
        pos += n + 1
    return blocks


def read_events(path: Path) -> list[list[tuple[str, str]]]:
    data = path.read_bytes()
    pos, events = 0, []
    while pos < len(data):
        end = data.index(b"\n\n", pos)
        head = dict(line.split(": ", 1) for line in data[pos:end].decode().split("\n"))
        pos = end + 2
        n = int(head.get("Content-Length", 0))
        if head.get("Content-Type") == "text/event-plain":
            block = data[pos:pos + n].split(b"\n\n")[0].decode()
            events.append([(k, unquote(v)) for k, v in
                           (line.split(": ", 1) for line in block.split("\n"))])
        pos += n
    return events


def _subst(value: str, mapping: dict[str, str]) -> str:
    for literal, name in mapping.items():
        if literal.isdigit():           # a number only where it stands alone
            value = re.sub(rf"(?<![0-9]){literal}(?![0-9])", "{{%s}}" % name, value)
        elif literal.isalpha():
            value = re.sub(rf"(?<![A-Za-z0-9]){literal}(?![A-Za-z0-9])", "{{%s}}" % name, value)
        else:
            value = value.replace(literal, "{{%s}}" % name)
    return value


SET_VARS = ("variable_route_source", "variable_continue_on_fail",
            "variable_hangup_after_bridge", "variable_execute_on_answer")


def _template(headers, mapping):
    out, marked = [], False
    for name, value in headers:
        if name in SET_VARS:
            if not marked:             # where the dialplan's `set` variables go
                out.append(["@@SETVARS@@", ""])
                marked = True
            continue
        out.append([name, _subst(value, mapping)])
    return out


def pick(events, name, uuid, nth=0):
    found = [e for e in events if e[0] == ("Event-Name", name) and ("Unique-ID", uuid) in e]
    return found[nth]


def build(fixtures: Path) -> dict:
    ev = {k: read_events(fixtures / f"events-plain-{k}.txt") for k in "abcdeg"}
    out: dict = {"events": {}}
    t = out["events"]
    # b: A-leg 2aa200b6, failed B-leg dab161bd (carrier_a 503), answered B-leg 05e55dea.
    a, b1, b2 = ("2aa200b6-027b-44b3-ae1f-77fe4177ff38", "dab161bd-fbfc-43a8-815c-3c1fcad83a78",
                 "05e55dea-9aac-4785-a55d-860e48bf28a5")
    common = {"1002": "DEST", "sipp": "CALLER"}
    m_a = {a: "A", b2: "B", b1: "B_FAILED", **common}
    m_b = {a: "A", b2: "B", "carrier_b": "GW", **common}
    m_f = {a: "A", b1: "B", "carrier_a": "GW", **common}
    for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_HANGUP",
                 "CHANNEL_HANGUP_COMPLETE"):
        t[f"a.{name}"] = _template(pick(ev["b"], name, a), m_a)
    for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
        t[f"b.{name}"] = _template(pick(ev["b"], name, b2), m_b)
    for name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
        t[f"bfail.{name}"] = _template(pick(ev["b"], name, b1), m_f)
    # c: sched_hangup fired: A ALLOTTED_TIMEOUT, B NORMAL_CLEARING + bridge_hangup_cause.
    ca, cb = "c9e6b4b9-ffef-468f-adb1-3c5159f480c2", "61211ccc-7080-45b0-98d4-97e224221319"
    m_c = {ca: "A", cb: "B", "1003": "DEST", "sipp": "CALLER", "carrier_a": "GW"}
    for name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
        t[f"a.sched.{name}"] = _template(pick(ev["c"], name, ca), m_c)
        t[f"b.sched.{name}"] = _template(pick(ev["c"], name, cb), m_c)
    # d: bgapi originate, answered and parked, then uuid_kill. e: originate refused 486.
    d = "8f74583b-42d4-4ee6-bbb0-548d0e499fae"
    m_d = {d: "B", "2001": "DEST", "5551000": "CALLER", "ESL": "CALLER_NAME", "carrier_a": "GW"}
    for name in ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
        t[f"o.{name}"] = _template(pick(ev["d"], name, d), m_d)
    e = "1ccfe6b7-46ab-455b-9738-9657b7cb10c5"
    m_e = {e: "B", "2002": "DEST", "5551000": "CALLER", "carrier_a": "GW"}
    for name in ("CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE"):
        t[f"ofail.{name}"] = _template(pick(ev["e"], name, e), m_e)
    t["HEARTBEAT"] = [list(h) for h in next(x for x in ev["a"] if x[0] == ("Event-Name", "HEARTBEAT"))]
    t["gateway_state"] = [list(h) for h in next(
        x for x in ev["g"] if ("Event-Subclass", "sofia::gateway_state") in x)]
    bg = read_transcript(fixtures / "esl-bgapi.txt")
    job = next(blk for c, dr, blk in bg if b"Job-Command: originate" in blk)
    job_head = job.split(b"text/event-plain\n\n", 1)[1].split(b"\nContent-Length:")[0].decode()
    t["BACKGROUND_JOB"] = [[k, unquote(v)] for k, v in
                           (line.split(": ", 1) for line in job_head.split("\n"))]
    api = read_transcript(fixtures / "esl-api.txt")
    bodies = [blk.split(b"\n\n", 1)[1].decode() for c, dr, blk in api if dr == "S>C"
              and blk.startswith(b"Content-Type: api/response")]
    out["status"] = next(x for x in bodies if x.startswith("UP "))
    rows = [r for r in (json.loads(x) for x in bodies if x.startswith("{\"row_count\":")) if "rows" in r]
    out["channel_row_keys"] = list(rows[0]["rows"][0].keys())
    out["call_row_keys"] = list(next(r for r in rows if "b_uuid" in r["rows"][0])["rows"][0].keys())
    http = read_transcript(fixtures / "xml-curl-dialplan-request.txt")
    req = http[0][2]
    head, body = req.split(b"\r\n\r\n", 1) if b"\r\n\r\n" in req else req.split(b"\n\n", 1)
    out["dialplan_request_head"] = head.decode()
    ha = "3ea30e5f-6258-4225-b4a4-31cbc0030d47"
    m_h = {ha: "A", "1001": "DEST", "sipp": "CALLER"}
    fields = [pair.split("=", 1) for pair in body.decode().split("&")]
    out["dialplan_request"] = _template([(k, unquote(v)) for k, v in fields], m_h)
    return out


def main(argv: list[str]) -> int:
    fixtures = Path(argv[1] if len(argv) > 1 else "tests/fixtures/freeswitch-1.10")
    TEMPLATES_PATH.write_text(json.dumps(build(fixtures), indent=0) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
