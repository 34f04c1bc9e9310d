"""`switchd originate --wait`: follow an originated call until its outcome is final (its
retries included, and an answered call until it has ended), print the outcome and each
attempt, and exit with a status scripts can test (docs/cli.md)."""
from __future__ import annotations

import json
import time
from datetime import datetime
from decimal import Decimal

from dialplan import retry
from switchd.errors import CliError, UsageError
from switchd.exitcodes import ExitCode

POLL_S = 0.5

STATUS = {"answered": ExitCode.OK, "busy": ExitCode.BUSY, "declined": ExitCode.BUSY,
          "no_answer": ExitCode.NO_ANSWER, "invalid_number": ExitCode.NUMBER_INVALID}


def retry_payload(args) -> dict:
    """The request's `retry` object from --max-attempts / --retry-on (checked by the daemon
    too; refused here first so a typo costs no call)."""
    if args.max_attempts == 1 and not args.retry_on:
        return {}
    ask: dict = {"max_attempts": args.max_attempts}
    if args.retry_on:
        ask["on"] = [o.strip() for o in args.retry_on.split(",") if o.strip()]
    try:
        retry.parse_ask(ask)
    except retry.RetryError as exc:
        flag = "--retry-on" if str(exc).startswith("retry.on") else "--max-attempts"
        raise UsageError(f"{flag}: {str(exc).split(': ', 1)[1]}") from None
    return {"retry": ask}


def _duration(call: dict) -> float | None:
    if not call.get("answered_at") or not call.get("ended_at"):
        return None
    answered = datetime.fromisoformat(call["answered_at"])
    ended = datetime.fromisoformat(call["ended_at"])
    return round((ended - answered).total_seconds(), 1)


def wait(config, args, first: dict, request) -> int:
    """Poll GET /v1/calls/{id} until the outcome is final; print it; the exit status."""
    call_uuid = first["call_uuid"]
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    summary = None
    while summary is None:
        body = request(config, f"/v1/calls/{call_uuid}")
        attempts = body.get("originate_attempts") or []
        last = attempts[-1] if attempts else None
        if last is not None and last["final"] and last["state"] == "done":
            summary = _summary(config, request, call_uuid, attempts)
        if summary is None:
            if deadline is not None and time.monotonic() > deadline:
                print(f"{call_uuid}: no final outcome after {args.wait_timeout:g}s "
                      f"({len(attempts)} attempt(s) so far)")
                return ExitCode.NOT_FINAL
            time.sleep(POLL_S)
    if args.json:
        print(json.dumps(summary, default=str, indent=2))
    else:
        _print(summary)
    return int(STATUS.get(summary["outcome"], ExitCode.FAILURE))


def _summary(config, request, call_uuid: str, attempts: list[dict]) -> dict | None:
    """The outcome, or None while an answered call is still up (its duration and cost come
    from its CDR)."""
    last = attempts[-1]
    duration = cost = None
    if last["outcome"] == "answered" and last.get("attempt_call_uuid"):
        try:
            call = request(config, f"/v1/calls/{last['attempt_call_uuid']}")
        except CliError as exc:
            if str(exc).startswith("404"):
                return None       # between the live view and its CDR: a moment later
            raise
        if call.get("state") != "ended" or not call.get("ended_at"):
            return None           # still up (or ending: the CDR is not written yet)
        duration = _duration(call)
        cost = call.get("cost")
    return {"call_uuid": call_uuid, "outcome": last["outcome"],
            "answered": last["outcome"] == "answered", "carrier": last.get("carrier"),
            "duration_seconds": duration,
            "cost": str(Decimal(str(cost))) if cost is not None else None,
            "attempts": attempts}


_SAID = {"answered": "answered", "busy": "busy", "no_answer": "no answer",
         "declined": "declined", "invalid_number": "invalid number"}


def _print(summary: dict) -> None:
    said = _SAID.get(summary["outcome"], f"failed ({summary['outcome']})")
    head = f"{said} after {len(summary['attempts'])} attempt(s)"
    if summary["carrier"]:
        head += f", carrier {summary['carrier']}"
    if summary["duration_seconds"] is not None:
        head += f", duration {summary['duration_seconds']:g}s"
    if summary["cost"] is not None:
        head += f", cost {summary['cost']}"
    print(f"{head} (call {summary['call_uuid']})")
    for a in summary["attempts"]:
        how = f"via {a['gateway']}" if a.get("gateway") else "not placed"
        cause = ", ".join(str(x) for x in (a.get("cause"), a.get("sip_status") and
                                           f"SIP {a['sip_status']}") if x)
        print(f"  {a['attempt']} {a['outcome'] or a['state']:<16} {a.get('started_at') or '-'}"
              f"  {how}{f' ({cause})' if cause else ''}{' - ' + a['note'] if a.get('note') else ''}")
