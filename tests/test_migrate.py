from switchd.db.migrate import apply_migrations
def test_migrations_apply_once(pg_url):
    assert apply_migrations(pg_url) == ["001"]
    assert apply_migrations(pg_url) == []
