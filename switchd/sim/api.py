"""`api` commands of the simulated FreeSWITCH, with the reply bodies as captured."""
from __future__ import annotations

import json
import re

from switchd.sim import wire
from switchd.sim.legs import SimLeg


def _row(sim, leg: SimLeg) -> dict[str, str]:
    """One row of `show channels as json` (keys and order from the capture)."""
    a = leg.role == "a"
    call = sim.call_of(leg.uuid)
    route = getattr(call, "route", None)
    answered = bool(leg.answered_us)
    created = leg.created_us // 1_000_000
    name = (f"sofia/local/{leg.caller}@127.0.0.1:5060" if a else f"sofia/local/{leg.number}")
    app, app_data = ("park", "") if leg.role == "o" else ("", "")
    if a:
        app, app_data = ("bridge", route.bridge or "") if route and route.bridge else ("", "")
        if answered and route and route.sched_hangup:
            app, app_data = "sched_hangup", " ".join(route.sched_hangup)
    values = {
        "uuid": leg.uuid, "direction": "inbound" if a else "outbound",
        "created": wire.stamp(leg.created_us), "created_epoch": str(created), "name": name,
        "state": "CS_EXECUTE" if leg.role != "b" else "CS_EXCHANGE_MEDIA",
        "cid_name": leg.caller_name or leg.caller, "cid_num": leg.caller,
        "ip_addr": "127.0.0.1" if leg.role != "o" else "", "dest": leg.number,
        "application": app, "application_data": app_data,
        "dialplan": "XML" if leg.role != "o" else "",
        "context": "public" if leg.role != "o" else "default",
        "read_codec": "PCMU", "read_rate": "8000", "read_bit_rate": "64000",
        "write_codec": "PCMU", "write_rate": "8000", "write_bit_rate": "64000",
        "hostname": sim.hostname, "accountcode": leg.var("accountcode", ""),
        "callstate": "ACTIVE" if answered else ("RINGING" if a else "EARLY"),
        "callee_name": "Outbound Call", "callee_num": leg.number,
        "callee_direction": "SEND" if leg.role != "o" else "RECV", "call_uuid": leg.call_uuid,
        "sent_callee_name": "Outbound Call" if a else "", "sent_callee_num": leg.number if a else "",
        "initial_cid_name": leg.caller_name or leg.caller, "initial_cid_num": leg.caller,
        "initial_ip_addr": "127.0.0.1" if leg.role != "o" else "", "initial_dest": leg.number,
        "initial_dialplan": "XML" if leg.role != "o" else "",
        "initial_context": "public" if leg.role != "o" else "default",
    }
    return {k: values.get(k, "") for k in wire.templates()["channel_row_keys"]}


def _json(rows: list[dict]) -> str:
    if not rows:
        return '{"row_count": 0}\n'          # sic: FreeSWITCH's empty form has a space
    return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":"),
                      ensure_ascii=False)


def show_channels(sim, as_json: bool) -> str:
    rows = [_row(sim, leg) for leg in sim.listed_legs()]
    if as_json:
        return _json(rows)
    keys = wire.templates()["channel_row_keys"]
    lines = [",".join(keys)] + [",".join(r[k] for k in keys) for r in rows] if rows else []
    return "".join(line + "\n" for line in lines) + f"\n{len(rows)} total.\n"


def show_calls(sim) -> str:
    keys = wire.templates()["call_row_keys"]
    rows = []
    for leg in sim.live_legs():
        if leg.role == "b":
            continue
        row = _row(sim, leg)
        call = sim.call_of(leg.uuid)
        partner = next((b for b in call.legs if b.live and b.answered_us), None) if leg.role == "a" else None
        prow = _row(sim, partner) if partner else {}
        out = {}
        for k in keys:
            if k == "call_created_epoch":
                out[k] = row["created_epoch"]
            elif k.startswith("b_"):
                out[k] = prow.get(k[2:], "")
            else:
                out[k] = row.get(k, "")
        rows.append(out)
    return _json(rows)


def status(sim) -> str:
    up_ms = int(sim.uptime() * 1000)
    s, ms = divmod(up_ms, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    body = wire.templates()["status"]
    body = re.sub(r"^UP .*$", f"UP 0 years, {d} days, {h} hours, {m} minutes, {s} seconds, "
                  f"{ms} milliseconds, 0 microseconds", body, count=1, flags=re.M)
    live = len(sim.live_legs())
    body = re.sub(r"^\d+ session\(s\) since startup", f"{sim.sessions_since_startup} session(s) "
                  "since startup", body, flags=re.M)
    return re.sub(r"^\d+ session\(s\) - peak \d+, last 5min \d+ ",
                  f"{live} session(s) - peak {sim.peak}, last 5min {sim.peak} ", body, flags=re.M)


NO_CHANNEL = "-ERR No such channel!\n"


def sofia_xmlstatus_gateway(sim, args: list[str]) -> str:
    """`sofia xmlstatus gateway [NAME]` in the captured shape (only the fields switchd
    reads, plus name/profile), from `sim.gateway_status` {name: 'UP'|'DOWN'}; gateways
    deleted by `sim.delete_gateways()` are absent, as on a switch shutting down. A simulator
    told nothing about gateways answers like a switch without mod_sofia (the daemon then
    keeps what gateway events say), so tests that never set a status are unaffected."""
    status = getattr(sim, "gateway_status", None) or {}
    if not status and not getattr(sim, "gateways_deleted", False):
        return "-ERR sofia Command not found!\n"

    def one(name: str, indent: str) -> str:
        return (f"{indent}<gateway>\n{indent}  <name>{name}</name>\n"
                f"{indent}  <profile>external</profile>\n{indent}  <state>NOREG</state>\n"
                f"{indent}  <status>{status[name]}</status>\n{indent}</gateway>\n")
    head = '<?xml version="1.0" encoding="ISO-8859-1"?>\n'
    if args:
        return head + one(args[0], "  ") if args[0] in status else "Invalid Gateway!\n"
    return head + "<gateways>\n" + "".join(one(n, "  ") for n in status) + "</gateways>\n"


def execute(sim, line: str) -> str:
    cmd, _, arg = line.strip().partition(" ")
    args = arg.split()
    if cmd == "version":
        return wire.VERSION
    if cmd == "status":
        return status(sim)
    if cmd == "show" and args[:1] == ["channels"]:
        return show_channels(sim, args[1:] == ["as", "json"])
    if cmd == "show" and args[:1] == ["calls"]:
        return show_calls(sim)
    if cmd == "sofia" and args[:2] == ["xmlstatus", "gateway"]:
        return sofia_xmlstatus_gateway(sim, args[2:])
    if cmd == "uuid_exists":
        return "true" if args and sim.leg(args[0]) else "false"
    if cmd == "uuid_getvar":
        leg = sim.leg(args[0]) if args else None
        if leg is None:
            return NO_CHANNEL
        builtin = {"uuid": leg.uuid, "call_uuid": leg.call_uuid,
                   "sip_gateway_name": leg.gateway or "", "sip_call_id": leg.uuid}
        value = leg.var(args[1]) if len(args) > 1 else None
        return value if value is not None else builtin.get(args[1] if len(args) > 1 else "", "_undef_")
    if cmd == "uuid_setvar" and len(args) >= 2:
        leg = sim.leg(args[0])
        if leg is None:
            return NO_CHANNEL
        leg.vars.append((args[1], " ".join(args[2:])))
        return "+OK\n"
    if cmd == "uuid_kill":
        ok = bool(args) and sim.kill_call(args[0], args[1] if len(args) > 1 else "NORMAL_CLEARING")
        return "+OK\n" if ok else NO_CHANNEL
    if cmd == "strmicroepoch" and not args:
        return str(sim.clock.now_us())
    if cmd == "sched_del":
        if not args:
            return "-ERR Invalid syntax\n"
        return f"+OK Deleted: {sim.sched_del(args[0]) if not args[0].isdigit() else 0}\n"
    if cmd == "sched_hangup" and len(args) >= 2:
        ok = sim.sched_hangup(args[1], args[0], args[2] if len(args) > 2 else "ALLOTTED_TIMEOUT")
        return "+OK\n" if ok else NO_CHANNEL
    return f"-ERR {cmd} Command not found!\n"
