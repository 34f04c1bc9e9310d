"""Exit statuses of every `switchd` command, and the one place that turns an exception into
that status and one line for the operator (docs/cli.md has the table).

Known exceptions are matched by class name along their MRO (and their `__cause__` chain for
a lost database connection), so this module imports none of the modules it knows about.
"""
from __future__ import annotations

import sys
import traceback
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0             # done
    FAILURE = 1        # the command ran and failed: a refused call, a failed migration, a crash
    USAGE = 2          # the command line is wrong
    CONFIG = 3         # the configuration is invalid (file or SWITCHD_* variable)
    INPUT = 4          # input data refused: provision file, rate CSV, request body
    UNAVAILABLE = 5    # a dependency cannot be reached: PostgreSQL, the daemon, embedded PostgreSQL
    BUSY = 6           # originate --wait: the callee was busy or declined (every attempt)
    NO_ANSWER = 7      # originate --wait: nobody answered
    NUMBER_INVALID = 8  # originate --wait: the number does not exist (404/484/410)
    NOT_FINAL = 9      # originate --wait --wait-timeout: no final outcome in time
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143   # SIGTERM


_DB_HINT = "check database.url (SWITCHD_DATABASE_URL) and that PostgreSQL is running"
_MAX_PROBLEMS = 3

# class (module.qualname, matched along the MRO) -> (status, prefix, hint)
_KNOWN: dict[str, tuple[ExitCode, str, str]] = {
    "switchd.config.ConfigError": (ExitCode.CONFIG, "configuration error: ", ""),
    "switchd.admin.provision.ProvisionError": (ExitCode.INPUT, "", ""),
    "switchd.admin.rates_import.RatesImportError": (ExitCode.INPUT, "", ""),
    "switchd.adapters.db.migrate.MigrationError": (ExitCode.FAILURE, "migration failed: ", ""),
    "switchd.adapters.db.embedded.EmbeddedPostgresError": (ExitCode.UNAVAILABLE, "", ""),
    "switchd.daemon.DaemonStartError": (ExitCode.UNAVAILABLE, "cannot start: ", ""),
    "psycopg.OperationalError": (ExitCode.UNAVAILABLE, "cannot reach PostgreSQL: ", _DB_HINT),
    "psycopg.DataError": (ExitCode.INPUT, "the database refused a value: ",
                          "check the numbers and texts of the input"),
    "psycopg.IntegrityError": (ExitCode.INPUT, "the database refused the data: ",
                               "check the input for duplicates and references"),
    "psycopg.Error": (ExitCode.FAILURE, "database error: ", ""),
    "builtins.UnicodeDecodeError": (ExitCode.INPUT, "input is not UTF-8 text: ",
                                    "save the file as UTF-8"),
    "builtins.OSError": (ExitCode.FAILURE, "", ""),
}


def _names(exc: BaseException):
    for cls in type(exc).__mro__:
        yield f"{cls.__module__}.{cls.__qualname__}"


def _lost_database(exc: BaseException) -> BaseException | None:
    """A psycopg.OperationalError anywhere in the cause chain: the database is the problem
    whatever layer wrapped it."""
    seen = 0
    while exc is not None and seen < 10:
        if "psycopg.OperationalError" in _names(exc):
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) > _MAX_PROBLEMS:
        lines = lines[:_MAX_PROBLEMS] + [f"and {len(lines) - _MAX_PROBLEMS} more "
                                         "(--debug lists them all)"]
    return "; ".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def classify(exc: BaseException) -> tuple[ExitCode, str]:
    """(status, message) for an exception that ends a command."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted"
    own = getattr(exc, "exit_code", None)
    if isinstance(own, ExitCode):
        return own, one_line(exc)
    lost = _lost_database(exc)
    if lost is not None:
        return ExitCode.UNAVAILABLE, f"cannot reach PostgreSQL: {_first_line(lost)}; {_DB_HINT}"
    for name in _names(exc):
        if name in _KNOWN:
            status, prefix, hint = _KNOWN[name]
            if name.startswith("psycopg."):
                text = _first_line(exc)
            elif isinstance(exc, OSError) and exc.filename:
                text = f"{exc.filename}: {exc.strerror or exc}"
            else:
                text = one_line(exc)
            return status, prefix + text + (f"; {hint}" if hint else "")
    return ExitCode.FAILURE, (f"unexpected error: {type(exc).__name__}: {_first_line(exc)} "
                              "(run with --debug for the traceback)")


def report_failure(exc: BaseException, command: str, debug: bool = False) -> int:
    """Print the failure as one line on stderr (with the traceback first under --debug)."""
    status, message = classify(exc)
    if debug and status != ExitCode.INTERRUPTED:
        traceback.print_exception(exc, file=sys.stderr)
        if getattr(exc, "errors", None):               # every problem, not only the first ones
            for problem in exc.errors:
                print(f"  {problem}", file=sys.stderr)
    print(f"switchd {command}: {message}", file=sys.stderr)
    return int(status)
