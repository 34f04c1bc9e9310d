"""Run `switchd` as an operator does: a subprocess with a clean SWITCHD_* environment.

Also finds postgres processes by data directory, so tests can prove that a command left
none behind (other tests' servers, in other directories, are not theirs to count).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**switchd_vars: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHD_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(switchd_vars)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 120,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "switchd.cli", *map(str, args)],
                          env=env if env is not None else cli_env(), cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_failure(out: subprocess.CompletedProcess, status: int, *words: str) -> str:
    """Exit `status`, nothing on stdout, one line on stderr containing every word."""
    assert out.returncode == status, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def postgres_pids(directory: Path) -> list[int]:
    """pids of postgres processes whose command line names something under `directory`."""
    needle = str(Path(directory).resolve()).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"postgres" in cmdline and needle in cmdline:
            pids.append(int(entry.name))
    return pids
