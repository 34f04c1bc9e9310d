"""The tenant's `retry` section through every door: a provision file, the API (PATCH), and
the world load; validated by dialplan/validate.py with the key named, nothing written on a
bad value."""
from __future__ import annotations

import psycopg
import pytest

from api_helpers import call
from dialplan.retry import DEFAULT_POLICY
from switchd.admin.provision import ProvisionError, provision
from switchd.adapters.db import store
from switchd.api.routes import build_app

ADMIN = "admin-token-for-tests-0123456789"


def _world(url):
    with psycopg.connect(url) as conn:
        return store.load_world(conn)


def test_a_provision_file_sets_the_tenant_retry_table(migrated_pg_url, tmp_path):
    path = tmp_path / "world.toml"
    path.write_text('[[tenants]]\nname = "acme"\n'
                    'retry = { busy = 120, no_answer = "never", daily_cap = 3, factor = 3 }\n')
    provision(migrated_pg_url, path)
    policy = _world(migrated_pg_url).tenants["acme"].retry
    assert policy.base_s("busy") == 120 and policy.base_s("no_answer") is None
    assert (policy.daily_cap, policy.factor, policy.jitter_percent) == (3, 3, 20)
    # idempotent: the stored jsonb equals the file's table
    assert not provision(migrated_pg_url, path).changed
    path.write_text('[[tenants]]\nname = "acme"\nretry = ""\n')          # "" clears it
    provision(migrated_pg_url, path)
    assert _world(migrated_pg_url).tenants["acme"].retry is DEFAULT_POLICY


@pytest.mark.parametrize("table, message", [
    ("{ invalid_number = 60 }", "tenants[0].retry: invalid_number: cannot be set"),
    ("{ busy = 0 }", "tenants[0].retry: busy: 0 is not between 1 and 604800"),
    ("{ busy = 1.5 }", "tenants[0].retry: busy: Decimal('1.5') is not a whole number"),
    ("{ sometimes = 1 }", "tenants[0].retry: sometimes: unknown key"),
    ("5", "tenants[0].retry: must be a table"),
])
def test_a_bad_retry_table_names_the_key_and_writes_nothing(migrated_pg_url, tmp_path, table,
                                                            message):
    path = tmp_path / "world.toml"
    path.write_text(f'[[tenants]]\nname = "acme"\nretry = {table}\n')
    with pytest.raises(ProvisionError) as err:
        provision(migrated_pg_url, path)
    assert message in str(err.value)
    assert _world(migrated_pg_url).tenants == {}


def test_the_api_reads_and_patches_the_retry_table(migrated_pg_url):
    app = build_app(migrated_pg_url, admin_token=ADMIN)
    status, _, body = call(app, "POST", "/v1/tenants", ADMIN,
                           {"name": "acme", "retry": {"busy": 30, "daily_cap": 5}})
    assert status == 201, body
    status, _, body = call(app, "GET", "/v1/tenants/acme", ADMIN)
    assert status == 200 and body["retry"] == {"busy": 30, "daily_cap": 5}
    status, _, body = call(app, "PATCH", "/v1/tenants/acme", ADMIN,
                           {"retry": {"busy": 30, "daily_cap": 0}})
    assert status == 400 and body["field"] == "retry", body
    assert "daily_cap: 0 is not between 1 and 10000" in body["error"]
    assert call(app, "GET", "/v1/tenants/acme", ADMIN)[2]["retry"] == {"busy": 30, "daily_cap": 5}
    status, _, body = call(app, "PATCH", "/v1/tenants/acme", ADMIN,
                           {"retry": {"congestion": 10, "daily_cap": "none"}})
    assert status == 200, body
    policy = _world(migrated_pg_url).tenants["acme"].retry
    assert policy.base_s("congestion") == 10 and policy.daily_cap is None
    assert policy.base_s("busy") == 60           # a PATCH replaces the whole table


def test_attempts_of_a_call_waiting_for_its_retry_are_its_tenants_only(world_url):
    """GET /v1/calls/{id} of an originated call with no CDR yet: `pending` and its attempts
    for its tenant; another tenant's key gets 404, as for any call not its own."""
    import uuid
    from datetime import datetime, timezone
    from psycopg.types.json import Jsonb
    from switchd.api import keys
    app = build_app(world_url, admin_token=ADMIN)
    assert call(app, "POST", "/v1/tenants", ADMIN, {"name": "beta"})[0] == 201
    with psycopg.connect(world_url, autocommit=True) as conn:
        acme, _ = keys.create(conn, tenant="acme")
        beta, _ = keys.create(conn, tenant="beta")
        call_uuid = str(uuid.uuid4())
        now = datetime.now(timezone.utc)
        conn.execute("""INSERT INTO originate_attempts (call_uuid, attempt, tenant, destination,
                            state, scheduled_at, outcome, final, request, ended_at, started_at,
                            attempt_call_uuid)
                        VALUES (%s, 1, 'acme', '+442079460999', 'done', %s, 'busy', false, %s,
                                %s, %s, %s),
                               (%s, 2, 'acme', '+442079460999', 'pending', %s, NULL, false, %s,
                                NULL, NULL, NULL)""",
                     (call_uuid, now, Jsonb({}), now, now, call_uuid, call_uuid, now, Jsonb({})))
    status, _, body = call(app, "GET", f"/v1/calls/{call_uuid}", acme)
    assert status == 200 and body["state"] == "pending" and body["tenant"] == "acme", body
    assert [(a["attempt"], a["state"]) for a in body["originate_attempts"]] == [
        (1, "done"), (2, "pending")]
    assert call(app, "GET", f"/v1/calls/{call_uuid}", beta)[0] == 404
    assert call(app, "GET", f"/v1/calls/{uuid.uuid4()}", acme)[0] == 404
