"""`switchd cdr import DIR`: replay the CDRs FreeSWITCH wrote to its `err-log-dir` when
every POST to /fs/cdr failed (switchd down, PostgreSQL and the spool both refusing, ...).

Each `*.cdr.json` (also in the dated sub-directories `rotate=true` makes) goes through the
same CdrIngest.store as a POST, committed to PostgreSQL (no spool here: a file that cannot
be stored simply stays where it is for the next run). A stored file moves to
`DIR/imported/` (or stays, with keep=True); a file we cannot read stays and is reported
with its reason. Storing is idempotent by leg UUID, so running the import again, or
importing a CDR the switch also delivered, changes nothing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


def cdr_files(directory: Path) -> list[Path]:
    """Every `*.cdr.json` under `directory`, oldest first, not those already imported."""
    found = [p for p in directory.rglob("*.cdr.json")
             if p.is_file() and IMPORTED not in p.relative_to(directory).parts[:-1]]
    return sorted(found, key=lambda p: (p.stat().st_mtime, str(p)))


def import_dir(ingest: CdrIngest, directory: str | os.PathLike, *, keep: bool = False,
               progress: Callable[[int, int], None] | None = None) -> ImportSummary:
    root = Path(directory)
    if not root.is_dir():
        raise CdrImportError(f"{root}: not a directory")
    files = cdr_files(root)
    summary = ImportSummary(str(root), files=len(files))
    done_dir = root / IMPORTED
    for n, path in enumerate(files, 1):
        _import_one(ingest, path, done_dir, keep, summary)
        if progress is not None:
            progress(n, len(files))
    return summary


def _import_one(ingest: CdrIngest, path: Path, done_dir: Path, keep: bool,
                summary: ImportSummary) -> None:
    try:
        body = path.read_bytes()
    except OSError as exc:
        summary.refused.append(f"{path}: cannot read: {exc.strerror or exc}")
        return
    try:
        ingest.store(body)
    except CdrFormatError as exc:
        summary.refused.append(f"{path}: {exc}")
        return
    # Anything else (PostgreSQL down...) stops the run: the rest stay for next time.
    summary.stored += 1
    if not keep:
        done_dir.mkdir(exist_ok=True)
        path.replace(done_dir / path.name)
