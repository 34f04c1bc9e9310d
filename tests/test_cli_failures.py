"""Every command ends a failure with one line on stderr and the documented exit status
(docs/cli.md): 1 run time, 2 usage, 3 configuration, 4 input data, 5 unavailable dependency.
Each case runs the real `switchd` in a subprocess, as an operator would."""
from __future__ import annotations

import pytest

from cli_harness import assert_one_line_failure, cli_env, run_cli
from daemon_harness import free_port

DEAD_DB = "postgresql://switchd@127.0.0.1:1/switchd?connect_timeout=2"


@pytest.fixture
def files(tmp_path):
    def write(name: str, data: bytes):
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


# --- usage (2) -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["frobnicate"], ["invalid choice", "--help"]),
    (["report", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["provision"], ["required", "FILE.toml"]),
    (["rates", "import", "deck.csv"], ["--carrier"]),
    (["report", "--since", "yesterday"], ["--since", "ISO 8601"]),
    (["report", "--since", "2027-01-02", "--until", "2027-01-01"], ["--since", "not before --until"]),
    (["demo", "--calls", "0"], ["--calls"]),
    (["rates", "import", "x.csv", "--carrier", "a", "--effective-from", "soon"], ["--effective-from"]),
])
def test_usage_errors_exit_2(args, words, tmp_path):
    out = run_cli(*args, env=cli_env(SWITCHD_DATA_DIR=str(tmp_path)))
    assert_one_line_failure(out, 2, *words)


# --- configuration (3) ---------------------------------------------------------------------
@pytest.mark.parametrize("args", [["check-config"], ["migrate"], ["report"], ["run"], ["calls"],
                                  ["db", "status"]])
def test_configuration_errors_exit_3_naming_the_key(args):
    out = run_cli(*args, env=cli_env(SWITCHD_ESL_PORT="not-a-port"))
    assert_one_line_failure(out, 3, "SWITCHD_ESL_PORT", "configuration error")


def test_an_unusable_data_dir_exits_3(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run_cli("migrate", env=cli_env(SWITCHD_DATA_DIR=str(blocker / "data")))
    assert_one_line_failure(out, 3, "data_dir", str(blocker / "data"), "SWITCHD_DATA_DIR")


def test_an_unknown_environment_variable_exits_3():
    out = run_cli("migrate", env=cli_env(SWITCHD_DATABSE_URL=DEAD_DB))
    assert_one_line_failure(out, 3, "SWITCHD_DATABSE_URL", "unknown setting")


# --- unavailable dependency (5) ------------------------------------------------------------
@pytest.mark.parametrize("args", [["migrate"], ["report"], ["run"],
                                  ["provision", "examples/provision.toml"],
                                  ["rates", "import", "DECK", "--carrier", "alpha"]])
def test_database_unreachable_exits_5_in_one_line(args, files):
    deck = files("deck.csv", b"prefix,rate_per_min\n44,0.01\n")
    args = [str(deck) if a == "DECK" else a for a in args]
    # warning: the daemon's INFO start-up lines (HTTP listening) are not part of the failure
    out = run_cli(*args, env=cli_env(SWITCHD_DATABASE_URL=DEAD_DB, SWITCHD_ESL_PORT="1",
                                     SWITCHD_LOG_LEVEL="warning"))
    assert_one_line_failure(out, 5, "cannot reach PostgreSQL", "Connection refused",
                            "SWITCHD_DATABASE_URL")


@pytest.mark.parametrize("args", [["calls"], ["originate", "--tenant", "acme", "--to", "+441234"]])
def test_daemon_unreachable_exits_5(args):
    port = free_port()                                      # nothing listens here
    out = run_cli(*args, env=cli_env(SWITCHD_HTTP_PORT=str(port)))
    assert_one_line_failure(out, 5, "cannot reach the daemon", str(port), "switchd run")


# --- input data (4), against a real database -----------------------------------------------
@pytest.fixture
def db_env(migrated_pg_url, tmp_path):
    return cli_env(SWITCHD_DATABASE_URL=migrated_pg_url, SWITCHD_DATA_DIR=str(tmp_path))


@pytest.mark.parametrize("toml, words", [
    (b'[[tenants]]\nname = "big"\nmax_call_seconds = 99999999999\n', ["tenants[0].max_call_seconds", "out of range"]),
    (b'[[carriers]]\nname = "x"\nmax_channels = 3000000000\n', ["out of range"]),
    (b'[[tenants]]\nname = "rich"\nmonthly_budget = 123456789012345678901.5\n', ["tenants[0].monthly_budget", "too large"]),
    (b'[[tenants]]\nname = "caf\xe9"\n', ["not UTF-8", "byte 0xe9 at offset 23", "line 2"]),
    (b'[[tenants\nname = 1\n', ["TOML syntax error", "line 1"]),
    (b'[[tenants]]\nname = 5\nfoo = 1\nmax_call_seconds = "x"\n[[carriers]]\nbar = 2\n',
     ["tenants[0].name", "more (--debug lists them all)"]),
])
def test_provision_refusals_exit_4_in_one_line(toml, words, files, db_env):
    path = files("world.toml", toml)
    out = run_cli("provision", path, env=db_env)
    assert_one_line_failure(out, 4, "switchd provision:", *words)


def test_debug_lists_every_provision_problem(files, db_env):
    path = files("world.toml", b'[[tenants]]\nname = 5\nfoo = 1\nmax_call_seconds = "x"\n'
                               b'[[carriers]]\nbar = 2\n')
    out = run_cli("provision", path, "--debug", env=db_env)
    assert out.returncode == 4
    assert "carriers[0].bar" in out.stderr and "Traceback" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("switchd provision: ")


def test_provision_of_a_missing_file_exits_4(db_env, tmp_path):
    out = run_cli("provision", tmp_path / "nope.toml", env=db_env)
    assert_one_line_failure(out, 4, "nope.toml", "cannot read")


@pytest.fixture
def carrier_env(db_env, files):
    assert run_cli("provision", files("c.toml", b'[[carriers]]\nname = "alpha"\n'),
                   env=db_env).returncode == 0
    return db_env


def test_a_latin1_csv_names_the_byte_and_line(carrier_env, files):
    deck = files("deck.csv", b"prefix,rate_per_min,description\n44,0.01,London\n33,0.02,Orl\xe9ans\n")
    out = run_cli("rates", "import", deck, "--carrier", "alpha", env=carrier_env)
    assert_one_line_failure(out, 4, "deck.csv", "not UTF-8", "byte 0xe9 at offset 58", "line 3")


def test_a_latin1_byte_beyond_the_first_megabyte_is_located(carrier_env, files):
    rows = b"".join(b"%d,0.01\n" % (440000 + i) for i in range(120_000))      # ~1.4 MB
    deck = files("deck.csv", b"prefix,rate_per_min\n" + rows + b"49,0.0\xe9\n")
    out = run_cli("rates", "import", deck, "--carrier", "alpha", env=carrier_env)
    offset = len(b"prefix,rate_per_min\n" + rows) + 6
    assert_one_line_failure(out, 4, f"at offset {offset}", "line 120002")


@pytest.mark.parametrize("header, hint", [(b"prefix;rate_per_min\n44;0.01\n", "';'"),
                                          (b"prefix\trate_per_min\n44\t0.01\n", "a tab")])
def test_a_csv_with_another_delimiter_gets_a_hint(carrier_env, files, header, hint):
    deck = files("deck.csv", header)
    out = run_cli("rates", "import", deck, "--carrier", "alpha", env=carrier_env)
    assert_one_line_failure(out, 4, "deck.csv:1", f"seems to use {hint} as delimiter")


def test_rates_import_for_an_unknown_carrier_exits_4(carrier_env, files):
    deck = files("deck.csv", b"prefix,rate_per_min\n44,0.01\n")
    out = run_cli("rates", "import", deck, "--carrier", "nobody", env=carrier_env)
    assert_one_line_failure(out, 4, "unknown carrier 'nobody'", "alpha")


# --- run time (1) --------------------------------------------------------------------------
def test_run_with_its_http_port_taken_exits_1(migrated_pg_url, tmp_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("run", env=cli_env(SWITCHD_DATABASE_URL=migrated_pg_url,
                                         SWITCHD_DATA_DIR=str(tmp_path), SWITCHD_HTTP_PORT=str(port),
                                         SWITCHD_LOG_LEVEL="error", SWITCHD_ESL_PORT=str(free_port())))
    assert_one_line_failure(out, 1, "cannot start", "Address already in use", str(port),
                            "SWITCHD_HTTP_PORT")


def test_a_failed_migration_exits_1(pg_url, tmp_path):
    (tmp_path / "001_broken.sql").write_text("CREATE TABLE oops (;\n")
    out = run_cli("migrate", env=cli_env(SWITCHD_DATABASE_URL=pg_url, SWITCHD_SQL_DIR=str(tmp_path)))
    assert_one_line_failure(out, 1, "migration failed", "001_broken.sql", "syntax error")


def test_an_unexpected_exception_is_one_line_with_the_debug_hint(capsys):
    from switchd.exitcodes import report_failure
    try:
        {}["missing"]
    except KeyError as exc:
        assert report_failure(exc, "report") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["switchd report: unexpected error: KeyError: 'missing' "
                   "(run with --debug for the traceback)"]
    try:
        {}["missing"]
    except KeyError as exc:
        assert report_failure(exc, "report", debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("switchd report: ")


def test_a_lost_database_under_a_wrapper_is_still_unavailable():
    import psycopg
    from switchd.exitcodes import ExitCode, classify
    from switchd.admin.rates_import import RatesImportError
    try:
        try:
            raise psycopg.OperationalError("connection failed: server closed the connection\nmore")
        except psycopg.OperationalError as inner:
            raise RatesImportError("deck.csv: database refused the import") from inner
    except RatesImportError as exc:
        status, line = classify(exc)
    assert status == ExitCode.UNAVAILABLE
    assert line.startswith("cannot reach PostgreSQL: connection failed: server closed") and "\n" not in line


def test_docs_list_every_exit_status_with_its_number():
    from cli_harness import ROOT
    from switchd.exitcodes import ExitCode
    text = (ROOT / "docs" / "cli.md").read_text()
    table = text[text.index("## Exit status"):text.index("## Error lines")]
    rows = {line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")}
    assert {str(int(code)) for code in ExitCode} <= rows
    from switchd.cli import EPILOG
    for code in ExitCode:
        assert str(int(code)) in EPILOG
