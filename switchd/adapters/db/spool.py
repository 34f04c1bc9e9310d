"""Durable local spool for records PostgreSQL could not take (DESIGN.md §5 "PostgreSQL down").

Append-only JSON-lines files in the spool directory (``<data_dir>/spool/``; the daemon
passes that path, see ``Spool.in_data_dir``), named ``spool-<seq>.jsonl`` so
that lexical order is write order. Every ``append`` writes whole lines and fsyncs before it
returns: once it returns the records survive a crash or power cut. ``replay`` hands closed
files to a callback oldest first and deletes a file only after the callback returned (i.e.
committed), so a crash during replay replays that file again; the writer's upserts are
idempotent, which makes that harmless.

A crash in the middle of ``append`` can leave a last line without its newline; ``replay``
skips such a line (and any line that is not valid JSON) and reports it instead of failing
the whole file, because the records before it are good and the torn one was never
acknowledged to anyone.

Values are tagged so they come back with their exact type: Decimal as its string (never a
float), datetime as ISO 8601 with offset, UUID as its string.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable

from switchd.metrics import SPOOL_RECORDS

log = logging.getLogger(__name__)

_PREFIX = "spool-"
_SUFFIX = ".jsonl"
# Tags for the types JSON does not have. A dict with exactly one of these keys is a value.
_DECIMAL, _DATETIME, _DATE, _UUID = "$decimal", "$datetime", "$date", "$uuid"


class SpoolError(OSError):
    """The spool directory cannot be written: records could be lost, so say it loudly."""


def _encode(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {_DECIMAL: str(value)}
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {_UUID: str(value)}
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def dumps(record: Any) -> str:
    return json.dumps(_encode(record), separators=(",", ":"), ensure_ascii=False)


_DECODE = {_DECIMAL: Decimal, _DATETIME: datetime.fromisoformat, _DATE: date.fromisoformat,
           _UUID: uuid.UUID}


def _tagged(obj: dict) -> Any:
    """json.loads' object_hook: a one-key dict with a tag is the value it stands for."""
    if len(obj) == 1:
        for tag, raw in obj.items():
            decode = _DECODE.get(tag)
            if decode is not None:
                return decode(raw)
    return obj


def loads(line: str) -> Any:
    return json.loads(line, object_hook=_tagged)


@dataclass
class ReplayResult:
    files: int = 0             # files fully handed over and deleted
    records: int = 0           # records handed to the callback
    skipped: list[str] = field(default_factory=list)   # "file:line: reason" of torn lines


class Spool:
    """Append-only, fsync'd, rotated JSON-lines spool. Safe to share between greenlets."""

    def __init__(self, directory: str | os.PathLike, *, max_file_bytes: int = 8 << 20,
                 replay_chunk: int = 2000):
        self.directory = Path(directory)
        self.max_file_bytes = max_file_bytes
        self.replay_chunk = replay_chunk
        # Appends come from the event greenlet (queue overflow) and the writer greenlet;
        # the lock only covers the local file write, never the database.
        self._lock = threading.Lock()
        self._fh = None
        self._current: Path | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = max((self._seq_of(p) for p in self._files()), default=0)
        self._records = sum(self._count_lines(p) for p in self._files())
        SPOOL_RECORDS.set(self._records)

    @classmethod
    def in_data_dir(cls, data_dir: str | os.PathLike, **kw) -> "Spool":
        return cls(Path(data_dir) / "spool", **kw)

    # --- introspection ------------------------------------------------------------------
    @property
    def records(self) -> int:
        """Records waiting (a torn last line counts until replay skips it)."""
        return self._records

    def writable(self) -> bool:
        """Whether a record appended now could be made durable (for /readyz)."""
        return self.directory.is_dir() and os.access(self.directory, os.W_OK | os.X_OK)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob(f"{_PREFIX}*{_SUFFIX}") if p.is_file())

    @staticmethod
    def _seq_of(path: Path) -> int:
        try:
            return int(path.name[len(_PREFIX):-len(_SUFFIX)])
        except ValueError:
            return 0

    @staticmethod
    def _count_lines(path: Path) -> int:
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())

    # --- writing ------------------------------------------------------------------------
    def append(self, records: Iterable[Any]) -> int:
        """Write records durably (fsync before returning). Returns how many were written."""
        lines = [dumps(r) + "\n" for r in records]
        if not lines:
            return 0
        data = "".join(lines).encode("utf-8")
        with self._lock:
            try:
                if self._fh is None or self._fh.tell() >= self.max_file_bytes:
                    self._rotate_locked()
                self._fh.write(data)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as exc:
                # A half-written chunk must not be followed by more data on the same line.
                self._close_locked()
                raise SpoolError(f"spool {self.directory}: {exc}") from exc
            self._records += len(lines)
            SPOOL_RECORDS.set(self._records)
        return len(lines)

    def _rotate_locked(self) -> None:
        self._close_locked()
        self._seq += 1
        self._current = self.directory / f"{_PREFIX}{self._seq:012d}{_SUFFIX}"
        self._fh = open(self._current, "ab")
        # fsync the directory so the new file's name survives a power cut too.
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _close_locked(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None
                self._current = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def reject(self, records: Iterable[Any], reason: str) -> int:
        """Park records PostgreSQL refused as data (not as an outage) in ``rejected.jsonl``.

        They are not replayed (they would fail again and block everything behind them) but
        kept, fsync'd, with the server's reason, for an operator to fix and re-import.
        """
        lines = [dumps({"reason": reason, "record": r}) + "\n" for r in records]
        if not lines:
            return 0
        with self._lock:
            try:
                with open(self.directory / "rejected.jsonl", "ab") as fh:
                    fh.write("".join(lines).encode("utf-8"))
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise SpoolError(f"spool {self.directory}: {exc}") from exc
        log.error("spool: %d records rejected by PostgreSQL parked in rejected.jsonl: %s",
                  len(lines), reason)
        return len(lines)

    # --- replay -------------------------------------------------------------------------
    def replay(self, callback: Callable[[list[Any]], None],
               chunk: int | None = None) -> ReplayResult:
        """Hand every spooled record to ``callback`` in chunks (of ``chunk`` records, by
        default ``replay_chunk``), oldest first.

        A file is deleted once the callback returned for all of its chunks. If the callback
        raises, the exception propagates and that file (and the newer ones) stay for the
        next replay. Appends made while replaying go to a new file and wait for the next call.
        """
        with self._lock:
            self._close_locked()   # new appends start a new file, not ours
            files = self._files()
        result = ReplayResult()
        for path in files:
            records, skipped = self._read(path)
            result.skipped.extend(skipped)
            size = chunk or self.replay_chunk
            for start in range(0, len(records), size):
                callback(records[start:start + size])
            path.unlink()
            result.files += 1
            result.records += len(records)
            with self._lock:
                self._records = max(0, self._records - len(records) - len(skipped))
                SPOOL_RECORDS.set(self._records)
        return result

    @staticmethod
    def _read(path: Path) -> tuple[list[Any], list[str]]:
        records, skipped = [], []
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                if not raw.endswith(b"\n"):
                    skipped.append(f"{path.name}:{lineno}: torn last line (crash during write)")
                    continue
                try:
                    records.append(loads(raw.decode("utf-8")))
                except (ValueError, UnicodeDecodeError) as exc:
                    skipped.append(f"{path.name}:{lineno}: unreadable ({exc})")
        for item in skipped:
            log.warning("spool: skipped %s", item)
        return records, skipped
