"""`switchd cdr import DIR`: replay the CDRs FreeSWITCH wrote to its `err-log-dir` when
every POST to /fs/cdr failed (switchd down, PostgreSQL and the spool both refusing, ...).

Each `*.cdr.json` (also in the dated sub-directories `rotate=true` makes) goes through the
same CdrIngest.store as a POST, committed to PostgreSQL (no spool here: a file that cannot
be stored simply stays where it is for the next run). A stored file moves to
`DIR/imported/` (or stays, with keep=True); a file we cannot read stays and is reported
with its reason. Storing is idempotent by leg UUID, so running the import again, or
importing a CDR the switch also delivered, changes nothing.

ErrDirWatch is the daemon's side of the same (`cdr.import_dir`): where switchd runs on the
switch's host, it imports what FreeSWITCH writes there by itself, every
`cdr.import_interval` seconds.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from switchd import metrics
from switchd.accounting.cdrs.ingest import CdrIngest
from switchd.accounting.cdrs.json_cdr import CdrFormatError

log = logging.getLogger(__name__)

IMPORTED = "imported"


class CdrImportError(RuntimeError):
    pass


@dataclass
class ImportSummary:
    directory: str
    files: int = 0
    stored: int = 0
    refused: list[str] = field(default_factory=list)     # "file: reason"

    def __str__(self) -> str:
        text = (f"{self.directory}: {self.files} CDR file(s): {self.stored} stored, "
                f"{len(self.refused)} refused")
        return "\n".join([text] + [f"  refused {r}" for r in self.refused])


def cdr_files(directory: Path) -> tuple[list[Path], list[str]]:
    """Every `*.cdr.json` under `directory`, oldest first, not those already imported; and
    the directories that could not be listed, as "dir: cannot list: reason"."""
    found, unlisted = _cdr_files_with_stat(directory)
    return [path for path, _ in found], unlisted


def _cdr_files_with_stat(directory: Path) -> tuple[list[tuple[Path, os.stat_result]],
                                                   list[str]]:
    # os.walk, not Path.rglob: rglob passes over a directory it may not list (FreeSWITCH's
    # log directories are often its user's alone) as if it were empty; walk reports it.
    found, unlisted = [], []

    def refused(exc: OSError) -> None:
        unlisted.append(f"{exc.filename}: cannot list: {exc.strerror or exc}")
    for top, dirs, names in os.walk(directory, onerror=refused):
        if IMPORTED in dirs:
            dirs.remove(IMPORTED)
        for name in names:
            if not name.endswith(".cdr.json"):
                continue
            path = Path(top, name)
            try:
                st = path.stat()
            except OSError:
                continue                # gone meanwhile (imported, or unlinked by the switch)
            found.append((path, st))
    found.sort(key=lambda item: (item[1].st_mtime, str(item[0])))
    return found, sorted(unlisted)


def _direct(func: Callable[..., Any], args: tuple = ()) -> Any:
    return func(*args)


def import_dir(ingest: CdrIngest, directory: str | os.PathLike, *, keep: bool = False,
               progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    root = Path(directory)
    if not root.is_dir():
        raise CdrImportError(f"{root}: not a directory")
    files, unlisted = cdr_files(root)
    summary = ImportSummary(str(root), files=len(files), refused=unlisted)
    done_dir = root / IMPORTED
    for n, path in enumerate(files, 1):
        _import_one(ingest, path, done_dir, keep, summary)
        if progress is not None:
            progress(n, len(files))
    return summary


def _import_one(ingest: CdrIngest, path: Path, done_dir: Path, keep: bool,
                summary: ImportSummary, blocking: Callable = _direct) -> bool:
    """One file: stored (and moved, unless keep) → True; unreadable → False, reason in
    summary.refused. `blocking` runs the file system calls (the daemon: off the hub)."""
    try:
        body = blocking(path.read_bytes)
    except OSError as exc:
        summary.refused.append(f"{path}: cannot read: {exc.strerror or exc}")
        return False
    try:
        ingest.store(body)
    except CdrFormatError as exc:
        summary.refused.append(f"{path}: {exc}")
        return False
    # Anything else (PostgreSQL down...) stops the run: the rest stay for next time.
    summary.stored += 1
    if not keep:
        blocking(_move, (path, done_dir))
    return True


def _move(path: Path, done_dir: Path) -> None:
    done_dir.mkdir(exist_ok=True)
    path.replace(done_dir / path.name)


class ErrDirWatch:
    """The daemon's import of mod_json_cdr's error directory (`cdr.import_dir`).

    Each run imports the files as `switchd cdr import` does, through the daemon's own
    CdrIngest (so PostgreSQL away means spooled, still durable before the file moves). A
    file younger than `min_age_s` is left for the next run: mod_json_cdr creates the
    file, then writes it, so a fresh one may still be empty. A file that cannot be read as
    a CDR stays where it is, for an operator; it is logged once (again only once it is
    written, moved back or its permissions change: its mtime or ctime) and counted in
    switchd_cdr_import_refused_files. So is a directory under it that switchd may not
    list (logged once until it can be listed again)."""

    def __init__(self, ingest: CdrIngest, directory: str | os.PathLike, *,
                 min_age_s: float = 2.0, blocking: Callable = _direct,
                 clock: Callable[[], float] = time.time):
        self.ingest = ingest
        self.root = Path(directory)
        self.min_age_s = min_age_s
        self.blocking = blocking
        self.clock = clock
        self._refused: dict[Path, tuple[float, float]] = {}   # file -> (mtime, ctime)
        self._missing_logged = False
        self._unlisted: set[str] = set()     # "dir: cannot list: reason", logged once each

    def run_once(self) -> ImportSummary:
        summary = ImportSummary(str(self.root))
        if not self.blocking(self.root.is_dir):
            if not self._missing_logged:
                log.error("cdr.import_dir %s is not a directory (or not readable by switchd): "
                          "CDRs FreeSWITCH could not post are not imported", self.root)
                self._missing_logged = True
            return summary
        self._missing_logged = False
        files, unlisted = self.blocking(_cdr_files_with_stat, (self.root,))
        for reason in sorted(set(unlisted) - self._unlisted):
            log.error("cdr.import_dir: %s; the CDRs in it are not imported", reason)
        self._unlisted = set(unlisted)
        ready_before = self.clock() - self.min_age_s
        present = set()
        for path, st in files:
            present.add(path)
            version = (st.st_mtime, st.st_ctime)
            if st.st_mtime > ready_before or self._refused.get(path) == version:
                continue
            summary.files += 1
            if _import_one(self.ingest, path, self.root / IMPORTED, False, summary,
                           self.blocking):
                self._refused.pop(path, None)
            else:
                self._refused[path] = version
                log.warning("cdr.import_dir: left in place, %s", summary.refused[-1])
        for gone in set(self._refused) - present:
            del self._refused[gone]                  # an operator moved or fixed it
        metrics.CDR_IMPORT_REFUSED_FILES.set(len(self._refused) + len(self._unlisted))
        if summary.stored:
            log.info("imported %d CDR(s) FreeSWITCH could not post, from %s",
                     summary.stored, self.root)
        return summary
