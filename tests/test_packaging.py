"""A plain (non-editable) install carries what `switchd migrate` and `switchd demo` read:
the migrations and the simulator's data, inside the package."""
from __future__ import annotations

import subprocess
import sys

import pytest

from cli_harness import ROOT, run_cli
from switchd.adapters.db.migrate import migrations_dir, pending_files


def test_migrations_live_inside_the_package():
    assert migrations_dir() == ROOT / "switchd" / "adapters" / "db" / "migrations"
    assert [v for v, _ in pending_files()][0] == "001"
    assert not (ROOT / "sql").exists(), "migrations belong in switchd/adapters/db/migrations/"


@pytest.mark.slow
def test_the_built_package_ships_every_migration_and_the_simulator_data(tmp_path):
    # Build from a copy of the tracked files, so nothing of the work tree leaks in.
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    # setuptools' build_py is what a wheel is made from (the `wheel` package may be absent).
    build = tmp_path / "build"
    out = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                          "build_py", "--build-lib", str(build)],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    names = {p.relative_to(build).as_posix() for p in build.rglob("*") if p.is_file()}
    for path in migrations_dir().glob("*.sql"):
        assert f"switchd/adapters/db/migrations/{path.name}" in names
    sim_data = [p for p in (ROOT / "switchd" / "sim" / "data").iterdir() if p.is_file()]
    for path in sim_data:
        assert f"switchd/sim/data/{path.name}" in names


def test_version_comes_from_the_package_metadata():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("switchd ")
    from importlib.metadata import PackageNotFoundError, version
    try:
        assert out.stdout.split()[1] == version("switchd")
    except PackageNotFoundError:
        assert "not installed" in out.stdout
