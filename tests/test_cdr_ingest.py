"""FreeSWITCH's own CDR (mod_json_cdr) as the record of truth, against a real PostgreSQL.

The bodies are real: tests/fixtures/json_cdr/post-*.http were captured from FreeSWITCH
1.10.12 posting to a listener (A-leg and B-leg of one call through gateway carrier_a,
billsec 3 / billmsec 2340, tariff 0.0100/min + 0.0050 connect fee, 60/6), errdir/*.json
are the files it wrote to err-log-dir when every retry failed.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import threading
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon_harness import wait_for
from switchd.accounting.cdrs.ingest import CdrIngest
from switchd.accounting.cdrs.json_cdr import CdrFormatError, decode_body, parse
from switchd.adapters.db.cdr_writer import CallRecord, CdrWriter, LegRecord
from switchd.adapters.db.spool import Spool, SpoolError
from switchd.adapters.http.server import HttpApp

FIX = Path(__file__).parent / "fixtures" / "json_cdr"
A_UUID = "53f9c8ec-8261-4139-80a1-97485d4e9169"
B_UUID = "bf0df6fa-8935-4f65-957e-305a6e6aa125"
DEAD_DB = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=1"


def _post(n: int) -> tuple[dict, bytes]:
    raw = (FIX / f"post-{n}.http").read_bytes()
    head, body = raw.split(b"\n\n", 1)
    headers = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:])
    return headers, body


B_BODY, A_BODY = _post(1)[1], _post(2)[1]


def _renamed(body: bytes, a: str, b: str) -> bytes:
    return body.replace(A_UUID.encode(), a.encode()).replace(B_UUID.encode(), b.encode())


def test_captured_post_is_raw_json_whatever_the_content_type_says():
    headers, body = _post(1)
    # disable-100-continue drops mod_json_cdr's own header list: curl's default type
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert headers["User-Agent"] == "freeswitch-json/1.0"
    assert body.startswith(b"{")


def test_parse_b_leg_and_a_leg():
    b, a = parse(B_BODY), parse(A_BODY)
    assert (b.uuid, b.call_uuid, b.is_a_leg) == (B_UUID, A_UUID, False)
    assert (a.uuid, a.call_uuid, a.is_a_leg) == (A_UUID, A_UUID, True)
    assert (b.billsec, b.billmsec, b.gateway) == (3, 2340, "carrier_a")
    assert b.vars["switchd_rate"] == "0.0100" and b.vars["switchd_increments"] == "60/6"
    assert a.vars == {"switchd_tenant": "acme", "switchd_direction": "outbound"}
    assert a.destination == "15551230001" and a.answer_us == 1796061611764256


@pytest.mark.parametrize("encode", ["json", "form", "base64", "errfile"])
def test_every_encode_form_decodes_to_the_same_record(encode):
    text = B_BODY
    body = {"json": text, "form": b"cdr=" + quote(text.decode(), safe="").encode(),
            "base64": b"cdr=" + base64.b64encode(text), "errfile": text + b"\n"}[encode]
    assert decode_body(body) == json.loads(B_BODY)


def test_error_directory_files_are_the_json_with_a_newline():
    for path in (FIX / "errdir").glob("*.cdr.json"):
        leg = parse(path.read_bytes())
        assert path.name == f"{leg.uuid}.cdr.json"


@pytest.mark.parametrize("body,why", [
    (b"", "not valid JSON"), (b"{not json", "not valid JSON"), (b"[]", "variables"),
    (b'{"variables": {}}', "uuid"), (b"cdr=!!!", "JSON"),
    (b'{"variables": {"uuid": "x", "billsec": "3s"}}', "billsec"),
    # integers the ledger's columns cannot hold, or that are no time or SIP status
    (b'{"variables": {"uuid": "x", "sip_term_status": "99999999999"}}',
     r"sip_term_status is out of range \(100\.\.699\)"),
    (b'{"variables": {"uuid": "x", "sip_term_status": "0"}}', "sip_term_status"),
    (b'{"variables": {"uuid": "x", "billsec": "2147483648"}}', "billsec is out of range"),
    (b'{"variables": {"uuid": "x", "billsec": "-1"}}', "billsec is out of range"),
    (b'{"variables": {"uuid": "x", "answer_uepoch": "-1700000000000000"}}', "answer_uepoch"),
    (b'{"variables": {"uuid": "x", "end_uepoch": "253402300800000000"}}', "end_uepoch"),
    (b'{"variables": {"uuid": "x", "progress_media_uepoch": "1e30"}}', "progress_media_uepoch"),
])
def test_bad_bodies_are_refused_with_a_reason(body, why):
    with pytest.raises(CdrFormatError, match=why):
        parse(body)


def test_encoded_values_are_decoded_when_configured():
    data = json.loads(B_BODY)
    data["variables"]["switchd_increments"] = "60%2F6"
    leg = parse(json.dumps(data).encode(), encoded_values=True)
    assert leg.vars["switchd_increments"] == "60/6"


# --- storing ---------------------------------------------------------------------------------
def _rows(url, call_uuid):
    with psycopg.connect(url) as conn:
        call = conn.execute(
            "SELECT cost, billed_seconds, cdr_source, provisional, unrated, tenant, carrier, "
            "attempts, hangup_cause FROM calls WHERE call_uuid = %s", (call_uuid,)).fetchall()
        legs = conn.execute(
            "SELECT leg_uuid, cost, billed_seconds, billsec, cdr_source, provisional "
            "FROM call_legs WHERE call_uuid = %s ORDER BY leg_uuid", (call_uuid,)).fetchall()
    return call, legs


def test_stored_cdr_is_rated_from_the_switchs_billsec(migrated_pg_url, tmp_path):
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    assert ingest.store(B_BODY).where == "database"
    assert ingest.store(A_BODY).where == "database"
    call, legs = _rows(migrated_pg_url, A_UUID)
    # billsec 3 -> 60/6 bills 60 s: 0.0050 + 0.0100 * 60 / 60
    assert call == [(Decimal("0.015000"), 60, "switch", False, False, "acme", "alpha", 1,
                     "NORMAL_CLEARING")]
    assert [l[:5] for l in legs] == [
        (A_UUID, Decimal("0.000000"), 0, 3, "switch"),
        (B_UUID, Decimal("0.015000"), 60, 3, "switch")]
    ingest.close()


def _store_while_held(ingest, bodies):
    """Post `bodies` from threads while the ingest's lock is held (a commit in progress),
    then let go; each thread's outcome, in order: Stored or the exception it raised."""
    outcomes: list = [None] * len(bodies)

    def post(i, body):
        try:
            outcomes[i] = ingest.store(body)
        except Exception as exc:   # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    with ingest._lock:
        threads = [threading.Thread(target=post, args=(i, b)) for i, b in enumerate(bodies)]
        for t in threads:
            t.start()
        wait_for(lambda: len(ingest._waiting) >= len(bodies), 20,
                 "every post to queue behind the lock")
    for t in threads:
        t.join(20)
    return outcomes


def _xmins(url, legs) -> list[str]:
    """The transaction that wrote each leg row (PostgreSQL's xmin)."""
    with psycopg.connect(url) as conn:
        return [conn.execute("SELECT xmin::text FROM call_legs WHERE leg_uuid = %s",
                             (leg,)).fetchone()[0] for leg in legs]


def test_cdrs_posted_during_a_commit_are_committed_together(migrated_pg_url, tmp_path):
    """Group commit: ten CDRs posted while another commit holds the connection are all
    durable in one transaction (one xmin), each rated as if alone."""
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    calls = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(10)]
    outcomes = _store_while_held(ingest, [_renamed(B_BODY, a, b) for a, b in calls])
    assert [o.where for o in outcomes] == ["database"] * 10
    assert [o.cost for o in outcomes] == [Decimal("0.015000")] * 10
    assert len(set(_xmins(migrated_pg_url, [b for _, b in calls]))) == 1
    ingest.close()


def test_a_lone_post_waits_for_the_other_legs_and_they_commit_together(migrated_pg_url,
                                                                       tmp_path):
    """cdr.post_gather_ms: the B-leg's post, alone, waits for company; the A-leg's post
    ends the wait at once (the gather is a minute: only its arrival can end it within the
    join) and both legs are committed in one transaction."""
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"), gather=60)
    outcome: list = []
    first = threading.Thread(target=lambda: outcome.append(ingest.store(B_BODY)))
    first.start()
    wait_for(lambda: ingest._lock.locked() and len(ingest._waiting) == 1, 20,
             "the B-leg's post to start gathering")
    second = threading.Thread(target=lambda: outcome.append(ingest.store(A_BODY)))
    second.start()
    for post in (first, second):
        post.join(20)
        assert not post.is_alive(), "the A-leg's post did not end the B-leg's wait"
    assert [o.where for o in outcome] == ["database"] * 2
    assert len(set(_xmins(migrated_pg_url, [A_UUID, B_UUID]))) == 1
    ingest.close()


def test_a_post_that_gets_no_company_is_committed_after_the_gather(migrated_pg_url, tmp_path):
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"), gather=0.05)
    assert ingest.store(B_BODY).where == "database"
    assert ingest.store(A_BODY).where == "database"
    assert len(set(_xmins(migrated_pg_url, [A_UUID, B_UUID]))) == 2
    ingest.close()


def test_a_cdr_postgresql_refuses_fails_its_own_post_only(migrated_pg_url, tmp_path):
    """One CDR of a group is one PostgreSQL refuses (here a constraint an operator added;
    what the door can see it refuses itself): its post fails, so FreeSWITCH keeps it, and
    the others are stored."""
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    calls = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(5)]
    bodies = [_renamed(B_BODY, a, b) for a, b in calls]
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE call_legs ADD CONSTRAINT refuse_one "
                     f"CHECK (leg_uuid <> '{calls[2][1]}')")
    outcomes = _store_while_held(ingest, bodies)
    assert isinstance(outcomes[2], psycopg.Error)
    assert [o.where for i, o in enumerate(outcomes) if i != 2] == ["database"] * 4
    with psycopg.connect(migrated_pg_url) as conn:
        stored = {r[0] for r in conn.execute("SELECT leg_uuid FROM call_legs").fetchall()}
    assert stored == {b for i, (_, b) in enumerate(calls) if i != 2}
    ingest.close()


def test_a_group_spools_together_when_postgresql_is_down(tmp_path):
    spool = Spool(tmp_path / "spool")
    ingest = CdrIngest(DEAD_DB, spool)
    calls = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(4)]
    outcomes = _store_while_held(ingest, [_renamed(B_BODY, a, b) for a, b in calls])
    assert [o.where for o in outcomes] == ["spool"] * 4
    assert spool.records == 8          # each CDR: its call record and its leg


def _replay(url: str, spool: Spool) -> None:
    """What the daemon's CDR writer does with the spool once PostgreSQL is back."""
    import gevent
    writer = CdrWriter(url, spool=spool, flush_interval=0.05).start()
    try:
        with gevent.Timeout(20):
            while spool.records:
                gevent.sleep(0.05)
    finally:
        writer.stop()


def test_a_commit_slower_than_the_timeout_is_spooled_and_acknowledged(migrated_pg_url,
                                                                       tmp_path):
    """call_legs locked by another transaction: the post is not held until the lock goes
    (FreeSWITCH would hold the channel); past cdr.commit_timeout it is spooled, answered,
    and the writer's replay stores it once the lock is gone."""
    spool = Spool(tmp_path / "spool")
    ingest = CdrIngest(migrated_pg_url, spool, commit_timeout=0.5)
    with psycopg.connect(migrated_pg_url) as blocker:
        blocker.execute("LOCK TABLE call_legs IN EXCLUSIVE MODE")
        assert ingest.store(B_BODY).where == "spool"
        assert spool.records == 2
        blocker.rollback()
    assert ingest.store(A_BODY).where == "database"       # a fresh connection, in time
    _replay(migrated_pg_url, spool)
    call, legs = _rows(migrated_pg_url, A_UUID)
    assert call[0][:3] == (Decimal("0.015000"), 60, "switch") and len(legs) == 2
    ingest.close()


def _esl_records(a, b, provisional=False):
    t = datetime.fromtimestamp(1796061611, tz=timezone.utc)
    cost = Decimal("0.999000")            # deliberately wrong: the switch's CDR must win
    leg = LegRecord(leg_uuid=b, call_uuid=a, direction="outbound", carrier="alpha",
                    gateway="carrier_a", started_at=t, answered_at=t,
                    ended_at=t + timedelta(seconds=3), billmsec=2340, billed_seconds=66,
                    cost=cost, provisional=provisional)
    call = CallRecord(call_uuid=a, direction="outbound", tenant="acme", started_at=t,
                      answered_at=t, ended_at=t + timedelta(seconds=3),
                      hangup_cause="UNKNOWN_AFTER_RESYNC" if provisional else "NORMAL_CLEARING",
                      carrier="alpha", attempts=1, billed_seconds=66, cost=cost,
                      reconstructed=provisional)
    return [("leg", leg), ("call", call)]


def test_any_order_and_any_number_of_deliveries_give_one_cdr(migrated_pg_url, tmp_path):
    """A, B (switch) and ESL's leg+call (normal, or provisional) in every order, each
    switch CDR delivered twice: always one call row, two leg rows, the switch's money."""
    from switchd.adapters.db.cdr_writer import write_batch
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    steps = ["A", "B", "esl", "esl_provisional"]
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        for order in itertools.permutations(steps):
            a, b = str(uuid.uuid4()), str(uuid.uuid4())
            for step in order + order[:2]:            # repeats: retried deliveries
                if step == "A":
                    ingest.store(_renamed(A_BODY, a, b))
                elif step == "B":
                    ingest.store(_renamed(B_BODY, a, b))
                else:
                    write_batch(conn, _esl_records(a, b, step == "esl_provisional"))
            call, legs = _rows(migrated_pg_url, a)
            assert len(call) == 1 and len(legs) == 2, order
            assert call[0][:5] == (Decimal("0.015000"), 60, "switch", False, False), order
            assert call[0][8] == "NORMAL_CLEARING", order
            assert {l[4] for l in legs} == {"switch"}, order
            assert conn.execute("SELECT direction FROM calls WHERE call_uuid = %s",
                                (a,)).fetchone()[0] == "outbound", order     # the A-leg's
    ingest.close()


def _failover_bodies(a: str, b1: str, b2: str) -> dict[str, bytes]:
    """The switch's CDRs of a call that failed over and was then given up by its caller:
    alpha's leg refused 503, bravo's was ringing when the caller CANCELled (the captured
    call's bodies, its times and causes changed to these)."""
    t = 1796061611_744157

    def body(raw: bytes, changes: dict) -> bytes:
        data = json.loads(_renamed(raw, a, b1))
        data["variables"].update({k: str(v) for k, v in changes.items()})
        return json.dumps(data).encode()
    unanswered = {"answer_uepoch": 0, "answer_epoch": 0, "billsec": 0, "billmsec": 0,
                  "progress_uepoch": 0}
    return {
        "A": body(A_BODY, {**unanswered, "start_uepoch": t, "end_uepoch": t + 900_000,
                           "hangup_cause": "ORIGINATOR_CANCEL", "sip_term_status": 487}),
        "alpha": body(B_BODY, {**unanswered, "start_uepoch": t + 10_000,
                               "end_uepoch": t + 60_000, "sip_term_status": 503,
                               "hangup_cause": "NORMAL_TEMPORARY_FAILURE",
                               "sip_hangup_disposition": "recv_refuse"}),
        "bravo": body(B_BODY, {**unanswered, "uuid": b2, "start_uepoch": t + 70_000,
                               "progress_uepoch": t + 300_000, "end_uepoch": t + 900_000,
                               "hangup_cause": "ORIGINATOR_CANCEL", "sip_term_status": "",
                               "sip_hangup_disposition": "send_cancel",
                               "sip_gateway_name": "carrier_b", "switchd_carrier": "bravo"}),
    }


def _failover_esl(a: str, b1: str, b2: str) -> dict[str, list]:
    """What ESL tells the writer of the same call: alpha's leg when it ends, then bravo's
    leg with the call's record when the caller gives up."""
    t = datetime.fromtimestamp(1796061611.744157, tz=timezone.utc)
    alpha = LegRecord(leg_uuid=b1, call_uuid=a, direction="outbound", carrier="alpha",
                      gateway="carrier_a", started_at=t + timedelta(milliseconds=10),
                      ended_at=t + timedelta(milliseconds=60),
                      hangup_cause="NORMAL_TEMPORARY_FAILURE", sip_status=503,
                      disposition="carrier_failure")
    bravo = LegRecord(leg_uuid=b2, call_uuid=a, direction="outbound", carrier="bravo",
                      gateway="carrier_b", started_at=t + timedelta(milliseconds=70),
                      ended_at=t + timedelta(milliseconds=900),
                      hangup_cause="ORIGINATOR_CANCEL", disposition="cancelled")
    call = CallRecord(call_uuid=a, direction="outbound", tenant="acme", started_at=t,
                      ended_at=t + timedelta(milliseconds=900), hangup_cause="ORIGINATOR_CANCEL",
                      carrier="bravo", gateway="carrier_b", first_choice_carrier="alpha",
                      attempts=2, disposition="cancelled")
    return {"esl_alpha": [("leg", alpha)], "esl_bravo": [("leg", bravo), ("call", call)]}


def test_a_failed_over_call_in_any_order_names_its_last_carrier(migrated_pg_url, tmp_path):
    """Every order of the three switch CDRs and ESL's two writes of a call that failed
    over from alpha (503) to bravo (cancelled while ringing): one settled call whose
    carrier is the last one tried, bravo, first choice alpha, two attempts, cost 0."""
    from switchd.adapters.db.cdr_writer import write_batch
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    wrong = []
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        for order in itertools.permutations(["A", "alpha", "bravo", "esl_alpha", "esl_bravo"]):
            a, b1, b2 = (str(uuid.uuid4()) for _ in range(3))
            bodies, esl = _failover_bodies(a, b1, b2), _failover_esl(a, b1, b2)
            for step in order:
                if step in bodies:
                    ingest.store(bodies[step])
                else:
                    write_batch(conn, esl[step])
            row = conn.execute(
                "SELECT carrier, first_choice_carrier, attempts, cost, cdr_source, "
                "disposition FROM calls WHERE call_uuid = %s", (a,)).fetchall()
            if row != [("bravo", "alpha", 2, Decimal("0"), "switch", "cancelled")]:
                wrong.append((order, row))
    ingest.close()
    assert not wrong, wrong


def test_the_a_legs_cdr_names_the_direction_even_after_the_carrier_legs(migrated_pg_url,
                                                                        tmp_path):
    """A DID call (switchd_direction=inbound): its carrier leg's CDR, alone, can only say
    outbound; the A-leg's CDR arriving after it puts the call's direction right."""
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    inbound = A_BODY.replace(b'"switchd_direction":"outbound"', b'"switchd_direction":"inbound"')
    assert inbound != A_BODY
    ingest.store(_renamed(B_BODY, a, b))
    ingest.store(_renamed(inbound, a, b))
    ingest.close()
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT direction FROM calls WHERE call_uuid = %s",
                            (a,)).fetchone()[0] == "inbound"


def test_esl_provisional_call_until_the_switch_settles_it(migrated_pg_url, tmp_path):
    from switchd.adapters.db.cdr_writer import write_batch
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(migrated_pg_url, autocommit=True) as conn:
        write_batch(conn, _esl_records(a, b, provisional=True))
    call, _ = _rows(migrated_pg_url, a)
    assert call[0][:5] == (Decimal("0.999000"), 66, "esl", True, False)
    CdrIngest(migrated_pg_url, Spool(tmp_path / "s")).store(_renamed(B_BODY, a, b))
    call, _ = _rows(migrated_pg_url, a)
    assert call[0][:5] == (Decimal("0.015000"), 60, "switch", False, False)
    assert call[0][8] == "UNKNOWN_AFTER_RESYNC"         # until the A-leg's CDR says
    CdrIngest(migrated_pg_url, Spool(tmp_path / "s")).store(_renamed(A_BODY, a, b))
    call, legs = _rows(migrated_pg_url, a)
    assert call[0][8] == "NORMAL_CLEARING" and len(legs) == 2


def test_unrated_leg_is_flagged_never_zero(migrated_pg_url, tmp_path):
    data = json.loads(B_BODY)
    for k in ("switchd_rate", "switchd_connect_fee", "switchd_increments"):
        del data["variables"][k]
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    assert ingest.store(json.dumps(data).encode()).cost is None
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT cost, unrated FROM call_legs WHERE leg_uuid = %s",
                            (B_UUID,)).fetchone() == (None, True)
        assert conn.execute("SELECT cost, unrated FROM calls WHERE call_uuid = %s",
                            (A_UUID,)).fetchone() == (Decimal("0"), True)


def test_ceil_ms_carrier_rounds_billmsec_up(migrated_pg_url, tmp_path):
    data = json.loads(B_BODY)
    data["variables"]["switchd_increments"] = "1/1"
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"),
                       rounding_of=lambda carrier: "ceil_ms")
    stored = ingest.store(json.dumps(data).encode())
    # ceil(2340 ms) = 3 s: 0.0050 + 0.0100 * 3 / 60
    assert stored.cost == Decimal("0.005500")


def test_database_down_spools_durably_and_the_writer_replays(migrated_pg_url, tmp_path):
    spool = Spool(tmp_path / "spool")
    ingest = CdrIngest(DEAD_DB, spool)
    assert ingest.store(B_BODY).where == "spool"
    assert ingest.store(A_BODY).where == "spool"
    assert spool.records == 4
    _replay(migrated_pg_url, spool)
    call, legs = _rows(migrated_pg_url, A_UUID)
    assert call[0][:3] == (Decimal("0.015000"), 60, "switch") and len(legs) == 2


def _broken_spool(tmp_path) -> Spool:
    """A spool whose directory has become a file (root ignores permission bits)."""
    spool = Spool(tmp_path / "spool")
    (tmp_path / "spool").rmdir()
    (tmp_path / "spool").write_text("not a directory")
    return spool


def test_neither_database_nor_spool_raises(tmp_path):
    with pytest.raises(SpoolError):
        CdrIngest(DEAD_DB, _broken_spool(tmp_path)).store(B_BODY)


# --- the endpoint -----------------------------------------------------------------------------
def _wsgi(app, body: bytes, auth: str | None = None, method="POST"):
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/fs/cdr",
               "QUERY_STRING": f"uuid={B_UUID}", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    if auth:
        environ["HTTP_AUTHORIZATION"] = "Basic " + base64.b64encode(auth.encode()).decode()
    seen = {}
    out = b"".join(app(environ, lambda status, headers: seen.setdefault("status", status)))
    return int(seen["status"].split()[0]), out


def test_endpoint_answers_200_only_once_durable(migrated_pg_url, tmp_path):
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    app = HttpApp(cdr_ingest=ingest, cdr_credentials="fs:secret")
    assert _wsgi(app, B_BODY)[0] == 401
    assert _wsgi(app, B_BODY, "fs:wrong")[0] == 401
    assert _wsgi(app, B_BODY, "fs:secret", method="GET")[0] == 405
    assert _wsgi(app, b"garbage", "fs:secret")[0] == 400
    status, out = _wsgi(app, B_BODY, "fs:secret")
    assert status == 200 and json.loads(out)["stored"] == "database"
    assert _rows(migrated_pg_url, A_UUID)[1][0][0] == B_UUID


def test_endpoint_refuses_what_the_ledger_cannot_hold_and_stores_nothing(migrated_pg_url,
                                                                        tmp_path):
    """A SIP status no column takes is a 400 naming the variable, before PostgreSQL sees it;
    the next good CDR is stored as usual."""
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    app = HttpApp(cdr_ingest=ingest)
    data = json.loads(B_BODY)
    data["variables"]["sip_term_status"] = "99999999999"
    status, out = _wsgi(app, json.dumps(data).encode())
    assert status == 400 and "sip_term_status is out of range" in json.loads(out)["error"]
    assert _rows(migrated_pg_url, A_UUID) == ([], [])
    assert not list((tmp_path / "spool").glob("*"))
    assert _wsgi(app, B_BODY)[0] == 200


def test_a_nul_in_a_text_field_does_not_cost_the_cdr(migrated_pg_url, tmp_path):
    # JSON's \u0000 decodes to a character no PostgreSQL text column takes.
    data = json.loads(B_BODY)
    data["variables"]["hangup_cause"] = "NORMAL\u0000CLEARING"
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    assert ingest.store(json.dumps(data).encode()).where == "database"
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT hangup_cause FROM call_legs WHERE leg_uuid = %s",
                            (B_UUID,)).fetchone() == ("NORMAL\ufffdCLEARING",)


def test_a_tariff_the_ledger_cannot_hold_leaves_the_leg_unrated(migrated_pg_url, tmp_path):
    data = json.loads(B_BODY)
    data["variables"]["switchd_rate"] = "1000000"       # rate_per_min is numeric(12,6)
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    assert ingest.store(json.dumps(data).encode()).cost is None
    with psycopg.connect(migrated_pg_url) as conn:
        assert conn.execute("SELECT cost, unrated, rate_per_min FROM call_legs WHERE "
                            "leg_uuid = %s", (B_UUID,)).fetchone() == (None, True, None)


def test_endpoint_answers_503_when_nothing_could_keep_it(tmp_path):
    app = HttpApp(cdr_ingest=CdrIngest(DEAD_DB, _broken_spool(tmp_path)))
    assert _wsgi(app, B_BODY)[0] == 503


# --- switchd cdr import DIR --------------------------------------------------------------------
def test_cdr_import_replays_the_error_directory_idempotently(migrated_pg_url, tmp_path,
                                                             monkeypatch, capsys):
    import shutil

    from switchd.cli import main
    err = tmp_path / "errdir"
    shutil.copytree(FIX / "errdir", err / "2026-11-30-18-00-00")      # rotate=true layout
    (err / "broken.cdr.json").write_text("{truncated")
    monkeypatch.setenv("SWITCHD_DATABASE_URL", migrated_pg_url)
    assert main(["cdr", "import", str(err)]) == 1                    # one refused
    out = capsys.readouterr()
    assert "3 CDR file(s): 2 stored, 1 refused" in out.out and "broken.cdr.json" in out.out
    assert "3/3 CDRs" in out.err
    a = "f0dd170c-c2ce-44a5-8b2b-6664f2c8a31b"
    call, legs = _rows(migrated_pg_url, a)
    # billsec 2 (1.5 s hold), 60/6: 0.0050 + 0.0100 * 60 / 60
    assert call[0][:5] == (Decimal("0.015000"), 60, "switch", False, False) and len(legs) == 2
    assert sorted(p.name for p in (err / "imported").iterdir()) == sorted(
        p.name for p in (FIX / "errdir").iterdir())
    # again, with the files put back: nothing changes
    for p in (err / "imported").iterdir():
        shutil.copy(p, err / p.name)
    (err / "broken.cdr.json").unlink()
    assert main(["cdr", "import", str(err), "--keep"]) == 0
    assert "2 stored, 0 refused" in capsys.readouterr().out
    assert _rows(migrated_pg_url, a) == (call, legs)


def test_the_daemon_imports_its_error_directory_by_itself(migrated_pg_url, tmp_path, caplog):
    """cdr.import_dir: files FreeSWITCH wrote are stored and moved, a file too young to be
    complete waits for the next look, an unreadable one stays, is logged once and counted."""
    import os
    import shutil

    from switchd import metrics
    from switchd.accounting.cdrs.importer import ErrDirWatch
    err = tmp_path / "errdir"
    shutil.copytree(FIX / "errdir", err / "2026-11-30-18-00-00")      # rotate=true layout
    now = [2_000_000_000.0]
    for p in (err / "2026-11-30-18-00-00").iterdir():
        os.utime(p, (now[0] - 10, now[0] - 10))
    fresh = err / "fresh.cdr.json"
    fresh.write_text("")                          # just created by mod_json_cdr, not written
    os.utime(fresh, (now[0] - 0.5, now[0] - 0.5))
    broken = err / "broken.cdr.json"
    broken.write_text("{truncated")
    os.utime(broken, (now[0] - 10, now[0] - 10))
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    watch = ErrDirWatch(ingest, err, min_age_s=2.0, clock=lambda: now[0])
    try:
        first = watch.run_once()
        assert (first.files, first.stored, len(first.refused)) == (3, 2, 1)
        assert "broken.cdr.json" in first.refused[0]
        a = "f0dd170c-c2ce-44a5-8b2b-6664f2c8a31b"
        call, legs = _rows(migrated_pg_url, a)
        assert call[0][:5] == (Decimal("0.015000"), 60, "switch", False, False) and len(legs) == 2
        assert sorted(p.name for p in (err / "imported").iterdir()) == sorted(
            p.name for p in (FIX / "errdir").iterdir())
        assert metrics.REGISTRY.get_sample_value("switchd_cdr_import_refused_files") == 1
        # the young file, now complete and old enough, is imported; the broken one is not
        # read (nor logged) again while it is unchanged
        fresh.write_bytes((FIX / "errdir" / f"{a}.cdr.json").read_bytes())
        os.utime(fresh, (now[0] - 0.5, now[0] - 0.5))
        now[0] += 5
        caplog.clear()
        second = watch.run_once()
        assert (second.files, second.stored, second.refused) == (1, 1, [])
        assert "broken" not in caplog.text
        assert _rows(migrated_pg_url, a) == (call, legs)               # idempotent by leg
        # an operator takes the broken file away: nothing is left refused
        broken.unlink()
        assert watch.run_once().files == 0
        assert metrics.REGISTRY.get_sample_value("switchd_cdr_import_refused_files") == 0
        assert {p.name for p in err.rglob("*.cdr.json") if "imported" not in p.parts} == set()
    finally:
        ingest.close()


def _unlistable(monkeypatch, directory: Path) -> None:
    """`directory` as FreeSWITCH's user may leave it to switchd's: mode 0. Root lists any
    directory whatever its mode, so for root os.scandir refuses it as the kernel would."""
    import errno
    import os
    directory.chmod(0)
    if os.geteuid() == 0:
        real = os.scandir

        def scandir(path="."):
            if Path(path) == directory:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path)
        monkeypatch.setattr(os, "scandir", scandir)


def test_a_directory_switchd_may_not_list_is_said_and_counted(migrated_pg_url, tmp_path,
                                                              monkeypatch, capsys, caplog):
    """A rotate=true sub-directory switchd's user may not list hides its CDRs: the import
    names it instead of taking it for empty, and the daemon counts it until it can list it."""
    import os
    import shutil

    from switchd import metrics
    from switchd.accounting.cdrs.importer import ErrDirWatch
    from switchd.cli import main
    err = tmp_path / "errdir"
    dated = err / "2026-11-30-18-00-00"
    shutil.copytree(FIX / "errdir", dated)
    for p in dated.iterdir():
        os.utime(p, (1_700_000_000, 1_700_000_000))
    _unlistable(monkeypatch, dated)
    monkeypatch.setenv("SWITCHD_DATABASE_URL", migrated_pg_url)
    assert main(["cdr", "import", str(err)]) == 1
    assert f"refused {dated}: cannot list: Permission denied" in capsys.readouterr().out
    ingest = CdrIngest(migrated_pg_url, Spool(tmp_path / "spool"))
    watch = ErrDirWatch(ingest, err)
    try:
        assert watch.run_once().files == 0 and watch.run_once().files == 0
        assert caplog.text.count(f"cdr.import_dir: {dated}: cannot list") == 1
        assert metrics.REGISTRY.get_sample_value("switchd_cdr_import_refused_files") == 1
        monkeypatch.undo()                      # the operator gives switchd's user access
        dated.chmod(0o755)
        assert watch.run_once().stored == 2
        assert metrics.REGISTRY.get_sample_value("switchd_cdr_import_refused_files") == 0
    finally:
        dated.chmod(0o755)
        ingest.close()


def test_a_missing_import_dir_is_said_once(migrated_pg_url, tmp_path, caplog):
    from switchd.accounting.cdrs.importer import ErrDirWatch
    watch = ErrDirWatch(CdrIngest(migrated_pg_url, None), tmp_path / "nowhere")
    assert watch.run_once().files == 0 and watch.run_once().files == 0
    assert caplog.text.count("cdr.import_dir") == 1 and "nowhere" in caplog.text


# --- hostile input: only CdrFormatError, never anything else -------------------------------
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 _json.map(lambda v: json.dumps(v).encode()),
                 st.dictionaries(st.sampled_from(["uuid", "billsec", "billmsec", "answer_uepoch",
                                                  "originating_leg_uuid", "switchd_rate"]),
                                 _json, max_size=6).map(
                     lambda v: json.dumps({"variables": v, "callflow": v}).encode())))
def test_any_body_parses_or_is_refused_cleanly(body):
    try:
        parse(body)
    except CdrFormatError:
        pass


def test_a_caller_name_that_is_not_utf8_does_not_cost_the_cdr():
    # Seen on FreeSWITCH 1.10.12: a display name sent as Latin-1 reaches mod_json_cdr's
    # body (and its error-directory file) byte for byte, so the JSON is not UTF-8.
    body = B_BODY.replace(b'"sip_from_display":"sipp"', b'"sip_from_display":"Jos\xe9 \xff"')
    assert body != B_BODY
    leg = parse(body)
    assert (leg.uuid, leg.billsec, leg.billmsec) == (B_UUID, 3, 2340)


_INTS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from(
    [0, 1, 99, 100, 699, 700, 2**31 - 1, 2**31, 2**63 - 1, 2**63,
     253_402_300_799_999_999, 253_402_300_800_000_000, 1_764_547_200_000_000]))
_FIGURES = ("sip_term_status", "billsec", "billmsec", "start_uepoch", "answer_uepoch",
            "progress_uepoch", "progress_media_uepoch", "end_uepoch")
_TEXTS = ("hangup_cause", "sip_gateway_name", "switchd_carrier", "switchd_tenant",
          "switchd_route_id", "switchd_rate", "switchd_connect_fee", "switchd_increments",
          "switchd_direction", "direction")


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(figures=st.dictionaries(st.sampled_from(_FIGURES), _INTS.map(str)),
       texts=st.dictionaries(st.sampled_from(_TEXTS), st.text(max_size=30)))
def test_whatever_the_door_lets_in_postgresql_stores(migrated_pg_url, tmp_path, figures,
                                                     texts):
    """The door's checks are the ledger's: a CDR that parses is stored (never a 500 from a
    value PostgreSQL refuses); one that does not is refused naming what is wrong."""
    data = json.loads(_renamed(B_BODY, str(uuid.uuid4()), str(uuid.uuid4())))
    data["variables"].update(figures, **texts)
    body = json.dumps(data).encode()
    try:
        parse(body)
    except CdrFormatError as exc:
        assert any(name in str(exc) for name in _FIGURES), exc
        return
    ingest = CdrIngest(migrated_pg_url, None)      # no spool: an outage would raise
    try:
        assert ingest.store(body).where == "database"
    finally:
        ingest.close()
