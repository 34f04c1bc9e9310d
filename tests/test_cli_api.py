"""`switchd keys` and `switchd webhooks` against real PostgreSQL."""
from __future__ import annotations

import hashlib

import psycopg
import pytest

from switchd.cli import main


@pytest.fixture
def db(world_url, monkeypatch):
    monkeypatch.setenv("SWITCHD_DATABASE_URL", world_url)
    return world_url


def test_keys_create_list_revoke(db, capsys):
    assert main(["keys", "create", "--tenant", "acme", "--label", "crm"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("sk_") and "shown once" in err
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT secret_hash FROM api_keys").fetchone()[0] == \
            hashlib.sha256(token.encode()).hexdigest()
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert token[:11] in listing and "acme" in listing and "crm" in listing
    assert token not in listing
    assert main(["keys", "revoke", token[:11]]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "list", "--tenant", "acme"]) == 0
    assert "revoked" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["keys", "create", "--tenant", "nobody"], "tenant: no tenant named 'nobody'"),
    (["keys", "revoke", "sk_00000000"], "no key 'sk_00000000'"),
    (["keys", "create", "--tenant", "acme", "--rate", "fast"], "--rate: 'fast' is not a number"),
    (["webhooks", "set", "--tenant", "acme", "--url", "ftp://x"], "url: must be an http"),
    (["webhooks", "show", "--tenant", "acme"], "tenant 'acme' has no webhook"),
])
def test_refusals_are_one_line(db, capsys, argv, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_webhooks_set_show_delete(db, capsys):
    assert main(["webhooks", "set", "--tenant", "acme", "--url", "http://127.0.0.1:9/h"]) == 0
    assert "secret: whsec_" in capsys.readouterr().out
    assert main(["webhooks", "show", "--tenant", "acme"]) == 0
    assert "http://127.0.0.1:9/h (enabled)" in capsys.readouterr().out
    assert main(["webhooks", "delete", "--tenant", "acme"]) == 0
    assert main(["webhooks", "delete", "--tenant", "acme"]) == 1
