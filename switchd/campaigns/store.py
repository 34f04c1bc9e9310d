"""Campaigns, their contacts and the do-not-call list in PostgreSQL (migration 023).

A contact moves pending → dialing (claimed, with a lease) → live (answered) → done, or
straight to done. Claims take the campaign row FOR UPDATE (the shared pace, `next_dial_at`,
and the concurrency count are read and moved under it) and the contact FOR UPDATE SKIP
LOCKED, so several daemons sharing the database never claim one contact twice.

A daemon marks a claimed contact `sent_at` (committed) just before it sends the originate,
and sends nothing if that mark finds the claim no longer its own. So when a daemon dies
(its leases run out), `recover` knows: a claim never sent goes back to pending (nobody was
called); a live contact was answered; a sent one is looked up in `calls` (same tenant and
number, started after it was sent) and takes that call's outcome, else `unknown` and is
never re-dialled by itself. Calling someone twice is worse than missing them once;
`requeue_unknown` re-dials them on purpose.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dialplan import campaigns as rules
from switchd.api import webhooks
from switchd.campaigns.spec import Contact

_NS = uuid.UUID("0b6f7c1e-5a8d-4f51-9e43-3c2d8a9b7e10")
_COLUMNS = ("c.id, c.name, t.name AS tenant, t.default_region, c.state, c.state_reason, "
            "c.pace_cps, c.max_concurrent, c.caller_id, c.timeout_s, c.hours_start, "
            "c.hours_end, c.hours_days, c.default_timezone, c.min_answer_rate, "
            "c.answer_rate_window, c.created_at, c.updated_at")


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hours_of(row: dict) -> rules.Hours:
    return rules.Hours(row["hours_start"], row["hours_end"], tuple(row["hours_days"]))


def public(row: dict) -> dict:
    """A campaign row as the API and the CLI show it."""
    hours = hours_of(row)
    return {"name": row["name"], "tenant": row["tenant"], "state": row["state"],
            "state_reason": row["state_reason"], "pace_cps": row["pace_cps"],
            "max_concurrent": row["max_concurrent"], "caller_id": row["caller_id"],
            "timeout_s": row["timeout_s"], "calling_hours": rules.format_hours(hours),
            "calling_days": rules.format_days(hours.days),
            "default_timezone": row["default_timezone"],
            "min_answer_rate": row["min_answer_rate"],
            "answer_rate_window": row["answer_rate_window"],
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


# --- campaigns --------------------------------------------------------------------------------
def create(conn: psycopg.Connection, tenant: str, name: str, settings: dict) -> dict:
    with conn.transaction():
        found = conn.execute("SELECT id FROM tenants WHERE name = %s", (tenant,)).fetchone()
        if found is None:
            raise NotFound(f"tenant: no tenant named {tenant!r}")
        if conn.execute("SELECT 1 FROM campaigns WHERE name = %s", (name,)).fetchone():
            raise Conflict(f"name: a campaign named {name!r} exists")
        cols = ["tenant_id", "name", *settings]
        conn.execute(f"INSERT INTO campaigns ({', '.join(cols)}) "
                     f"VALUES ({', '.join(['%s'] * len(cols))})",
                     (found[0], name, *settings.values()))
        # Daemons reload the world (the originator knows campaigns and their caps from it).
        conn.execute("SELECT pg_notify('switchd_world', %s)", (f"campaign {name}",))
    return get(conn, name, None)


def update(conn: psycopg.Connection, name: str, tenant: str | None, settings: dict) -> dict:
    row = get(conn, name, tenant)
    if settings:
        with conn.transaction():
            conn.execute(f"UPDATE campaigns SET {', '.join(f'{k} = %s' for k in settings)}, "
                         "updated_at = now() WHERE id = %s", (*settings.values(), row["id"]))
            conn.execute("SELECT pg_notify('switchd_world', %s)", (f"campaign {name}",))
    return get(conn, name, tenant)


def get(conn: psycopg.Connection, name: str, tenant: str | None) -> dict:
    """The campaign; NotFound when it does not exist or is another tenant's."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {_COLUMNS} FROM campaigns c JOIN tenants t ON t.id = c.tenant_id"
                          " WHERE c.name = %s AND (%s::text IS NULL OR t.name = %s)",
                          (name, tenant, tenant)).fetchone()
    if row is None:
        raise NotFound(f"name: no campaign named {name!r}")
    return row


def list_campaigns(conn: psycopg.Connection, tenant: str | None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {_COLUMNS} FROM campaigns c JOIN tenants t ON t.id = c.tenant_id"
                           " WHERE %s::text IS NULL OR t.name = %s ORDER BY c.name",
                           (tenant, tenant)).fetchall()
    return rows


def progress(conn: psycopg.Connection, campaign_id: int) -> dict:
    """Counts by state and by outcome, and the share answered of the calls made."""
    by_state = dict(conn.execute("SELECT state, count(*) FROM campaign_contacts "
                                 "WHERE campaign_id = %s GROUP BY state", (campaign_id,)).fetchall())
    by_outcome = dict(conn.execute("SELECT outcome, count(*) FROM campaign_contacts WHERE "
                                   "campaign_id = %s AND outcome IS NOT NULL GROUP BY outcome",
                                   (campaign_id,)).fetchall())
    states = {s: by_state.get(s, 0) for s in ("pending", "dialing", "live", "done")}
    attempted = sum(by_outcome.get(o, 0) for o in rules.ATTEMPTED)
    return {"contacts": sum(states.values()), **states,
            "outcomes": {o: by_outcome.get(o, 0) for o in rules.OUTCOMES},
            "answer_rate": (round(by_outcome.get("answered", 0) / attempted, 4)
                            if attempted else None)}


def act(conn: psycopg.Connection, name: str, tenant: str | None, action: str,
        reason: str | None, horizon_s: float) -> dict:
    """start / resume / pause / stop: the state after it (rules.transition), with a
    campaign event on the tenant's webhook for pause, stop and completion."""
    with conn.transaction():
        row = get(conn, name, tenant)
        conn.execute("SELECT 1 FROM campaigns WHERE id = %s FOR UPDATE", (row["id"],))
        state = conn.execute("SELECT state FROM campaigns WHERE id = %s", (row["id"],)).fetchone()[0]
        try:
            after = rules.transition(state, action)
        except rules.TransitionError as exc:
            raise Conflict(f"state: {exc}") from None
        _set_state(conn, row["id"], row["name"], row["tenant"], after, reason, horizon_s)
    return get(conn, name, tenant)


def _set_state(conn, campaign_id: int, name: str, tenant: str, state: str, reason: str | None,
               horizon_s: float) -> None:
    seq = conn.execute("UPDATE campaigns SET state = %s, state_reason = %s, updated_at = now(), "
                       "event_seq = event_seq + 1 WHERE id = %s RETURNING event_seq",
                       (state, reason, campaign_id)).fetchone()[0]
    if state in ("paused", "stopped", "completed"):
        counts = progress(conn, campaign_id)
        event = f"campaign.{state}"
        webhooks.write_events(conn, [{
            "event_id": str(uuid.uuid5(_NS, f"{campaign_id}/{seq}")), "tenant": tenant,
            "call_uuid": f"campaign:{name}", "sequence": seq, "event": event,
            "occurred_at": _now().isoformat(),
            "data": {"campaign": name, "reason": reason, "progress": counts}}], horizon_s)


# --- contacts ---------------------------------------------------------------------------------
def add_contacts(conn: psycopg.Connection, campaign_id: int, contacts: list[Contact]) -> dict:
    """Insert contacts; a number already in the campaign is skipped (never dialled twice)."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS _contacts (number text, timezone text, "
                    "data jsonb) ON COMMIT DROP")
        with cur.copy("COPY _contacts (number, timezone, data) FROM STDIN") as copy:
            for c in contacts:
                copy.write_row((c.number, c.timezone, Jsonb(c.data)))
        cur.execute("INSERT INTO campaign_contacts (campaign_id, number, timezone, data) "
                    "SELECT DISTINCT ON (number) %s, number, timezone, data FROM _contacts "
                    "ORDER BY number ON CONFLICT (campaign_id, number) DO NOTHING", (campaign_id,))
        added = cur.rowcount
    return {"received": len(contacts), "added": added, "duplicates": len(contacts) - added}


def list_contacts(conn: psycopg.Connection, campaign_id: int, state: str | None = None,
                  outcome: str | None = None, after_id: int = 0, limit: int = 100) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            """SELECT id, number, timezone, data, state, outcome, detail, call_uuid, hangup_cause,
                      attempts, claimed_at, finished_at
               FROM campaign_contacts WHERE campaign_id = %s AND id > %s
                 AND (%s::text IS NULL OR state = %s) AND (%s::text IS NULL OR outcome = %s)
               ORDER BY id LIMIT %s""",
            (campaign_id, after_id, state, state, outcome, outcome, limit)).fetchall()


def requeue_unknown(conn: psycopg.Connection, campaign_id: int) -> int:
    """Put contacts whose outcome is `unknown` back to pending: an operator's decision. A
    completed campaign becomes paused, to be resumed."""
    with conn.transaction():
        count = conn.execute("UPDATE campaign_contacts SET state = 'pending', outcome = NULL, "
                             "detail = NULL, finished_at = NULL, sent_at = NULL, "
                             "claimed_by = NULL WHERE campaign_id = %s AND state = 'done' "
                             "AND outcome = 'unknown'", (campaign_id,)).rowcount
        if count:
            conn.execute("UPDATE campaigns SET state = 'paused', state_reason = %s, "
                         "updated_at = now() WHERE id = %s AND state = 'completed'",
                         (f"{count} unknown contact(s) requeued", campaign_id))
    return count


# --- do not call -----------------------------------------------------------------------------
def _tenant_id(conn, tenant: str) -> int:
    found = conn.execute("SELECT id FROM tenants WHERE name = %s", (tenant,)).fetchone()
    if found is None:
        raise NotFound(f"tenant: no tenant named {tenant!r}")
    return found[0]


def dnc_add(conn: psycopg.Connection, tenant: str, numbers: list[str], note: str = "") -> int:
    with conn.transaction():
        tid = _tenant_id(conn, tenant)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO dnc (tenant_id, number, note) VALUES (%s, %s, %s) "
                            "ON CONFLICT DO NOTHING", [(tid, n, note) for n in numbers])
            return cur.rowcount


def dnc_remove(conn: psycopg.Connection, tenant: str, number: str) -> bool:
    tid = _tenant_id(conn, tenant)
    return conn.execute("DELETE FROM dnc WHERE tenant_id = %s AND number = %s",
                        (tid, number)).rowcount > 0


def dnc_list(conn: psycopg.Connection, tenant: str | None) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT t.name AS tenant, d.number, d.note, d.added_at FROM dnc d "
                           "JOIN tenants t ON t.id = d.tenant_id WHERE %s::text IS NULL OR "
                           "t.name = %s ORDER BY t.name, d.number", (tenant, tenant)).fetchall()


# --- what the dialer does --------------------------------------------------------------------------
def running(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"SELECT {_COLUMNS}, t.max_concurrent AS tenant_max FROM campaigns c "
                           "JOIN tenants t ON t.id = c.tenant_id WHERE c.state = 'running' "
                           "ORDER BY c.id").fetchall()


def zone_keys(conn: psycopg.Connection, campaign_id: int) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT timezone FROM campaign_contacts "
                                       "WHERE campaign_id = %s AND state = 'pending'",
                                       (campaign_id,)).fetchall()]


def claim(conn: psycopg.Connection, campaign_id: int, node: str, open_zones: list[str],
          limit: int, lease_s: float, lookahead_s: float, most: int = 1) -> list[dict]:
    """Claim the next contacts to dial, each with its slot in the pace: at most `most`,
    never beyond `limit` calls in flight, only slots due within `lookahead_s`, only
    contacts in their calling hours (`open_zones`); [] when the campaign is not running.
    A contact on the tenant's do-not-call list is settled `dnc` here, at dial time. Each
    answer carries `delay_s`: when to dial it."""
    out: list[dict] = []
    with conn.transaction():
        camp = conn.execute(
            "SELECT c.state, c.pace_cps, c.next_dial_at, now(), c.tenant_id FROM campaigns c "
            "WHERE c.id = %s FOR UPDATE", (campaign_id,)).fetchone()
        if camp is None or camp[0] != "running" or not open_zones:
            return out
        _, pace, next_at, db_now, tenant_id = camp
        in_flight = conn.execute("SELECT count(*) FROM campaign_contacts WHERE campaign_id = %s "
                                 "AND state IN ('dialing', 'live')", (campaign_id,)).fetchone()[0]
        slots = []
        while len(slots) < min(most, limit - in_flight):
            slot, following = rules.next_slot(next_at, db_now, pace)
            if (slot - db_now).total_seconds() > lookahead_s:
                break
            slots.append(slot)
            next_at = following
        while slots:
            with conn.cursor(row_factory=dict_row) as cur:
                found = cur.execute(
                    """SELECT k.id, k.number, k.timezone, k.data,
                              EXISTS (SELECT 1 FROM dnc WHERE dnc.tenant_id = %s
                                      AND dnc.number = k.number) AS dnc
                       FROM campaign_contacts k
                       WHERE k.campaign_id = %s AND k.state = 'pending' AND k.timezone = ANY(%s)
                         AND k.id <> ALL(%s)
                       ORDER BY k.id LIMIT %s FOR UPDATE SKIP LOCKED""",
                    (tenant_id, campaign_id, open_zones, [c["id"] for c in out],
                     len(slots))).fetchall()
            blocked = [r["id"] for r in found if r["dnc"]]
            if blocked:
                conn.execute("UPDATE campaign_contacts SET state = 'done', outcome = 'dnc', "
                             "detail = 'on the do-not-call list at dial time', "
                             "finished_at = now() WHERE id = ANY(%s)", (blocked,))
            for row in (r for r in found if not r["dnc"]):
                slot = slots.pop(0)
                out.append({**row, "campaign_id": campaign_id, "slot": slot,
                            "delay_s": max(0.0, (slot - db_now).total_seconds())})
            if not blocked:
                break           # fewer pending contacts than slots, or all slots used
        if out:
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE campaign_contacts SET state = 'dialing', claimed_by = %s, "
                    "claimed_at = %s, lease_until = %s + %s * interval '1 second', "
                    "attempts = attempts + 1 WHERE id = %s",
                    [(node, c["slot"], c["slot"], lease_s, c["id"]) for c in out])
            following = rules.next_slot(out[-1]["slot"], out[-1]["slot"], pace)[1]
            conn.execute("UPDATE campaigns SET next_dial_at = %s WHERE id = %s",
                         (following, campaign_id))
    return out


def release(conn: psycopg.Connection, contact_id: int, node: str) -> None:
    """Back to pending: the call was not placed (caps full, switch away, budget)."""
    conn.execute("UPDATE campaign_contacts SET state = 'pending', claimed_by = NULL, "
                 "lease_until = NULL, sent_at = NULL, attempts = greatest(attempts - 1, 0) "
                 "WHERE id = %s AND claimed_by = %s AND state = 'dialing'", (contact_id, node))


def mark_sent(conn: psycopg.Connection, contact_id: int, node: str) -> bool:
    """Just before the originate: True if the claim is still this node's (then the mark is
    committed and a restart will not re-dial it); False: do not dial."""
    return conn.execute("UPDATE campaign_contacts SET sent_at = now() WHERE id = %s AND "
                        "claimed_by = %s AND state = 'dialing' AND sent_at IS NULL",
                        (contact_id, node)).rowcount == 1


def mark_live(conn: psycopg.Connection, contact_id: int, node: str, call_uuid: str) -> None:
    conn.execute("UPDATE campaign_contacts SET state = 'live', outcome = 'answered', "
                 "call_uuid = %s WHERE id = %s AND claimed_by = %s AND state = 'dialing'",
                 (call_uuid, contact_id, node))


def finish(conn: psycopg.Connection, contact_id: int, node: str, outcome: str,
           call_uuid: str | None, hangup_cause: str | None, detail: str | None) -> bool:
    return conn.execute(
        "UPDATE campaign_contacts SET state = 'done', outcome = %s, call_uuid = "
        "coalesce(%s, call_uuid), hangup_cause = %s, detail = %s, finished_at = now(), "
        "lease_until = NULL WHERE id = %s AND claimed_by = %s AND state IN ('dialing', 'live')",
        (outcome, call_uuid, hangup_cause, detail, contact_id, node)).rowcount > 0


def refresh_leases(conn: psycopg.Connection, node: str, contact_ids: list[int],
                   lease_s: float) -> None:
    if contact_ids:
        conn.execute("UPDATE campaign_contacts SET lease_until = greatest(lease_until, now() + "
                     "%s * interval '1 second') WHERE id = ANY(%s) AND claimed_by = %s "
                     "AND state IN ('dialing', 'live')", (lease_s, contact_ids, node))


def recover(conn: psycopg.Connection) -> int:
    """Settle contacts whose daemon died mid-call (lease run out); never re-dial them."""
    settled = 0
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """SELECT k.id, k.number, k.state, k.claimed_at, k.claimed_by, k.call_uuid,
                      k.sent_at, t.name AS tenant
               FROM campaign_contacts k JOIN campaigns c ON c.id = k.campaign_id
               JOIN tenants t ON t.id = c.tenant_id
               WHERE k.state IN ('dialing', 'live') AND k.lease_until < now()
               ORDER BY k.id LIMIT 500 FOR UPDATE OF k SKIP LOCKED""").fetchall()
        for row in rows:
            if row["state"] == "dialing" and row["sent_at"] is None:
                cur.execute("UPDATE campaign_contacts SET state = 'pending', claimed_by = NULL, "
                            "lease_until = NULL, attempts = greatest(attempts - 1, 0) "
                            "WHERE id = %s", (row["id"],))
                settled += 1
                continue            # claimed, never sent: nobody was called
            if row["state"] == "live":
                call = cur.execute("SELECT hangup_cause FROM calls WHERE call_uuid = %s",
                                   (row["call_uuid"],)).fetchone()
                outcome, cause = "answered", call and call["hangup_cause"]
                detail = f"daemon {row['claimed_by']} stopped during the answered call"
                call_uuid = row["call_uuid"]
            else:
                call = cur.execute(
                    """SELECT call_uuid, answered_at, hangup_cause FROM calls
                       WHERE tenant = %s AND destination IN (%s, %s) AND direction = 'outbound'
                         AND started_at >= %s - interval '10 seconds'
                       ORDER BY started_at LIMIT 1""",
                    (row["tenant"], row["number"], row["number"].lstrip("+"),
                     row["sent_at"])).fetchone()
                if call is not None:
                    outcome = rules.outcome_of(call["answered_at"] is not None, call["hangup_cause"])
                    cause, call_uuid = call["hangup_cause"], call["call_uuid"]
                    detail = (f"daemon {row['claimed_by']} stopped before the originate's "
                              "result; outcome from the call record")
                else:
                    outcome, cause, call_uuid = "unknown", None, None
                    detail = (f"daemon {row['claimed_by']} stopped before the originate's "
                              "result and no call record matches; not re-dialled (it may "
                              "have rung)")
            cur.execute("UPDATE campaign_contacts SET state = 'done', outcome = %s, "
                        "hangup_cause = %s, call_uuid = coalesce(%s, call_uuid), detail = %s, "
                        "finished_at = now(), lease_until = NULL WHERE id = %s",
                        (outcome, cause, call_uuid, detail, row["id"]))
            settled += 1
    return settled


def recent_outcomes(conn: psycopg.Connection, campaign_id: int, window: int) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT outcome FROM campaign_contacts WHERE campaign_id = %s AND outcome = ANY(%s) "
        "ORDER BY claimed_at DESC, id DESC LIMIT %s",
        (campaign_id, list(rules.ATTEMPTED), window)).fetchall()]


def pause_if(conn: psycopg.Connection, campaign_id: int, reason: str, horizon_s: float) -> bool:
    """Pause a running campaign with `reason` (auto-pause); False if it was not running."""
    with conn.transaction():
        row = conn.execute("SELECT c.state, c.name, t.name FROM campaigns c JOIN tenants t "
                           "ON t.id = c.tenant_id WHERE c.id = %s FOR UPDATE OF c",
                           (campaign_id,)).fetchone()
        if row is None or row[0] != "running":
            return False
        _set_state(conn, campaign_id, row[1], row[2], "paused", reason, horizon_s)
    return True


def complete_finished(conn: psycopg.Connection, horizon_s: float) -> list[str]:
    """Running campaigns with no contact left to dial or in a call: completed."""
    done = []
    with conn.transaction():
        rows = conn.execute(
            """SELECT c.id, c.name, t.name FROM campaigns c JOIN tenants t ON t.id = c.tenant_id
               WHERE c.state = 'running' AND NOT EXISTS (
                   SELECT 1 FROM campaign_contacts k WHERE k.campaign_id = c.id
                   AND k.state <> 'done')
                 AND EXISTS (SELECT 1 FROM campaign_contacts k WHERE k.campaign_id = c.id)
               FOR UPDATE OF c SKIP LOCKED""").fetchall()
        for cid, name, tenant in rows:
            _set_state(conn, cid, name, tenant, "completed", "every contact done", horizon_s)
            done.append(name)
    return done
