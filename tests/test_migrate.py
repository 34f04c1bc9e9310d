from switchd.adapters.db.migrate import apply_migrations, pending_files


def test_migrations_apply_once(pg_url):
    versions = [version for version, _ in pending_files()]
    assert versions[0] == "001"
    assert apply_migrations(pg_url) == versions
    assert apply_migrations(pg_url) == []
