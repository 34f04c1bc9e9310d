"""`switchd campaign` and `switchd dnc` against real PostgreSQL."""
from __future__ import annotations

import json

import psycopg
import pytest

from switchd.cli import main


@pytest.fixture
def db(world_url, monkeypatch):
    monkeypatch.setenv("SWITCHD_DATABASE_URL", world_url)
    return world_url


def test_campaign_from_csv_show_pause_and_dnc(db, tmp_path, capsys):
    csv = tmp_path / "contacts.csv"
    csv.write_text("number,name\n020 7946 0001,Ann\n+442079460002,Bob\n+442079460001,again\n")
    assert main(["campaign", "create", "spring", "--tenant", "acme", "--csv", str(csv),
                 "--pace", "2.5", "--max-concurrent", "4", "--hours", "09:00-20:00",
                 "--days", "mon-fri", "--min-answer-rate", "0.2", "--start"]) == 0
    out = capsys.readouterr().out
    assert "spring (acme): running, 2 contact(s) added, 1 duplicate(s) skipped" in out
    assert main(["campaign", "pause", "spring", "--reason", "lunch"]) == 0
    assert main(["campaign", "show", "spring", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert shown["state"] == "paused" and shown["state_reason"] == "lunch"
    assert shown["pace_cps"] == "2.500" and shown["calling_hours"] == "09:00-20:00"
    assert shown["progress"]["pending"] == 2
    assert main(["campaign", "contacts", "spring", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [c["data"]["name"] for c in lines] == ["Ann", "Bob"]
    assert main(["dnc", "add", "--tenant", "acme", "020 7946 0001", "--note", "asked"]) == 0
    assert main(["dnc", "list", "--json"]) == 0
    capsys.readouterr()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT number, note FROM dnc").fetchall() == [("+442079460001", "asked")]
    assert main(["dnc", "remove", "--tenant", "acme", "+442079460001"]) == 0
    assert main(["campaign", "stop", "spring"]) == 0
    assert main(["campaign", "resume", "spring"]) == 1
    assert "cannot resume a campaign that is stopped" in capsys.readouterr().err


def test_bad_csv_names_file_and_line_and_creates_nothing(db, tmp_path, capsys):
    csv = tmp_path / "bad.csv"
    csv.write_text("number\n+442079460001\nnot-a-number\n")
    assert main(["campaign", "create", "c2", "--tenant", "acme", "--csv", str(csv)]) == 4
    err = capsys.readouterr().err
    assert f"{csv}: line 3.number" in err
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM campaigns").fetchone()[0] == 0
