from pathlib import Path

from switchd.db.migrate import apply_migrations

SQL = Path(__file__).parents[1] / "switchd" / "db" / "migrations"


def test_migrations_apply_once(pg_url):
    every = sorted(p.name.split("_", 1)[0] for p in SQL.glob("[0-9][0-9][0-9]_*.sql"))
    assert every[0] == "001" and len(every) > 1
    assert apply_migrations(pg_url) == every
    assert apply_migrations(pg_url) == []
