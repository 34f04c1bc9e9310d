"""`switchd rates import FILE.csv --carrier NAME`: load a rate deck CSV (DESIGN.md §10).

All or nothing: the deck row, its rates and the NOTIFY that tells daemons to reload commit in
one transaction. A bad row aborts the import with the file, line number and reason; readers
keep the previous deck until the commit. The file is streamed (csv reader → COPY), never held
in memory; duplicates are found by PostgreSQL after the COPY, so memory stays flat for a
million rows.
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import psycopg

from dialplan import rating, validate

NOTIFY_CHANNEL = "switchd_rates"
_MAX_DIGITS = 16
_BATCH_ROWS = 5_000                 # rows per COPY write: fewer calls, bounded buffer
_NULL = "\\N"                        # NULL in COPY text format


class RatesImportError(Exception):
    """The import was refused; nothing was written. The message is for the operator."""


@dataclass(frozen=True)
class ImportSummary:
    rows: int
    prefixes: int
    min_rate: Decimal | None
    max_rate: Decimal | None
    deck_id: int
    seconds: float


class RateRow(NamedTuple):
    """One validated CSV row (prefix without '+'; increments already defaulted)."""
    line: int
    prefix: str
    rate_per_min: Decimal
    connect_fee: Decimal
    initial_increment: int
    subsequent_increment: int
    effective_from: datetime | None
    effective_to: datetime | None
    description: str | None


def read_rates(csv_path: str | Path, default_initial: int = 60,
               default_subsequent: int = 60) -> list[RateRow]:
    """Parse and validate a rate CSV by the rules of `import_rates`, storing nothing (for
    `switchd rerate`). Duplicates (same prefix and effective_from) are refused as an
    import refuses them."""
    path = Path(csv_path)
    try:
        handle = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise RatesImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        parser = _RowParser(path, str(default_initial), str(default_subsequent))
        reader = csv.reader(handle)
        parser.header(next(reader, None))
        rows, first_line = [], {}
        for row in parser.parse(reader):
            key = (row.prefix, row.effective_from)
            if key in first_line:
                when = f" effective_from {row.effective_from.isoformat()}" \
                    if row.effective_from else ""
                raise parser.fail(row.line, f"duplicate prefix {row.prefix}{when} "
                                            f"(first on line {first_line[key]})")
            first_line[key] = row.line
            rows.append(row)
    if not rows:
        raise RatesImportError(f"{path}: no rate rows after the header")
    return rows


def import_rates(url_or_conn: str | psycopg.Connection, csv_path: str | Path,
                 carrier_name: str, effective_from: datetime | None = None,
                 progress: Callable[[int], None] | None = None,
                 progress_every: int = 100_000) -> ImportSummary:
    """Import `csv_path` as the deck of `carrier_name` starting at `effective_from` (None:
    the carrier's base deck, live from the beginning of time). An existing deck of the same
    carrier and start is replaced. `progress(rows_so_far)` is called every
    `progress_every` rows."""
    started = time.perf_counter()
    path = Path(csv_path)
    if effective_from is not None:
        effective_from = _aware(effective_from)
    try:
        if isinstance(url_or_conn, str):
            with psycopg.connect(url_or_conn) as conn:
                return _import(conn, path, carrier_name, effective_from, progress,
                               progress_every, started)
        return _import(url_or_conn, path, carrier_name, effective_from, progress,
                       progress_every, started)
    except psycopg.Error as exc:
        # Validation should leave nothing for the database to refuse; if it still does,
        # the operator gets one line, and the transaction has rolled back.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RatesImportError(f"{path}: database refused the import: {reason}") from exc


def _import(conn, path, carrier_name, effective_from, progress, every, started):
    try:
        handle = open(path, newline="", encoding="utf-8-sig")   # Excel writes a BOM
    except OSError as exc:
        raise RatesImportError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle, conn.transaction():
        carrier = conn.execute(
            "SELECT id, default_initial_increment, default_subsequent_increment "
            "FROM carriers WHERE name = %s", (carrier_name,)).fetchone()
        if carrier is None:
            known = [r[0] for r in conn.execute("SELECT name FROM carriers ORDER BY name")]
            raise RatesImportError(f"unknown carrier {carrier_name!r} "
                                   f"(known: {', '.join(known) or 'none'})")
        carrier_id, default_initial, default_subsequent = carrier
        start = effective_from if effective_from is not None else "-infinity"
        # Replacing inside the transaction: readers see the old deck until we commit.
        conn.execute("DELETE FROM rate_decks WHERE carrier_id = %s AND effective_from = %s",
                     (carrier_id, start))
        deck_id = conn.execute(
            "INSERT INTO rate_decks (carrier_id, effective_from, source) "
            "VALUES (%s, %s, %s) RETURNING id", (carrier_id, start, str(path))).fetchone()[0]
        parser = _RowParser(path, str(default_initial), str(default_subsequent))
        reader = csv.reader(handle)
        parser.header(next(reader, None))
        with conn.cursor() as cur:
            with cur.copy("COPY rates (deck_id, prefix, rate_per_min, connect_fee, "
                          "initial_increment, subsequent_increment, effective_from, "
                          "effective_to, description) FROM STDIN") as copy:
                parser.stream(reader, f"{deck_id}\t", copy.write, progress, every)
        if parser.rows == 0:
            raise RatesImportError(f"{path}: no rate rows after the header")
        _check_duplicates(conn, deck_id, path, parser)
        prefixes = parser.rows if not parser.windowed else conn.execute(
            "SELECT count(DISTINCT prefix) FROM rates WHERE deck_id = %s",
            (deck_id,)).fetchone()[0]
        conn.execute("UPDATE rate_decks SET row_count = %s WHERE id = %s",
                     (parser.rows, deck_id))
        # Delivered to listeners only at commit, together with the data.
        conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, carrier_name))
    if progress is not None and parser.rows % every:
        progress(parser.rows)
    return ImportSummary(rows=parser.rows, prefixes=prefixes, min_rate=parser.min_rate,
                         max_rate=parser.max_rate, deck_id=deck_id,
                         seconds=time.perf_counter() - started)


def _check_duplicates(conn, deck_id: int, path: Path, parser: "_RowParser") -> None:
    dup = conn.execute(
        "SELECT prefix, effective_from FROM rates WHERE deck_id = %s "
        "GROUP BY prefix, effective_from HAVING count(*) > 1 LIMIT 1", (deck_id,)).fetchone()
    if dup is None:
        return
    prefix, start = dup
    # Error path only: a second pass over the file names the two lines.
    lines = parser.lines_of(prefix, start)
    when = f" effective_from {start.isoformat()}" if start else ""
    raise RatesImportError(f"{path}:{lines[1]}: duplicate prefix {prefix}{when} "
                           f"(first on line {lines[0]})")


def _aware(value: datetime) -> datetime:
    # An ISO date without an offset is taken as UTC (documented in docs/rates.md).
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class _RowParser:
    """Validates rows and turns them into COPY text lines; tracks the summary figures."""

    def __init__(self, path: Path, default_initial: str, default_subsequent: str):
        self.path = path
        self.defaults = (default_initial, default_subsequent)
        self.rows = 0
        self.windowed = False
        self.min_rate: Decimal | None = None
        self.max_rate: Decimal | None = None
        self.columns: dict[str, int] = {}

    def fail(self, line: int, reason: str) -> RatesImportError:
        return RatesImportError(f"{self.path}:{line}: {reason}")

    def header(self, names: list[str] | None) -> None:
        if not names:
            raise self.fail(1, "empty file (expected a header row)")
        self.columns = {}
        for i, name in enumerate(names):
            self.columns.setdefault(name.strip().lower(), i)   # unknown columns: ignored
        missing = [c for c in ("prefix", "rate_per_min") if c not in self.columns]
        if missing:
            raise self.fail(1, f"header lacks required column(s) {', '.join(missing)}")

    def parse(self, reader) -> Iterator[RateRow]:
        """Every data row of `reader`, validated (blank lines skipped); raises
        RatesImportError naming the line at the first bad one."""
        col = self.columns.get
        i_prefix, i_rate = col("prefix"), col("rate_per_min")
        i_fee, i_init, i_sub = col("connect_fee"), col("initial_increment"), \
            col("subsequent_increment")
        i_from, i_to, i_desc = col("effective_from"), col("effective_to"), col("description")
        width = max(self.columns.values()) + 1
        for fields in reader:
            line = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue                                     # blank line
            if len(fields) < width:
                fields = fields + [""] * (width - len(fields))
            prefix = fields[i_prefix].strip()
            if prefix[:1] == "+":
                prefix = prefix[1:]
            if not (0 < len(prefix) <= _MAX_DIGITS and prefix.isascii() and prefix.isdigit()):
                raise self.fail(line, f"prefix {fields[i_prefix]!r} is not 1..16 digits")
            rate = self.money(fields[i_rate], "rate_per_min", line, required=True)
            fee = self.money(fields[i_fee], "connect_fee", line) if i_fee is not None else None
            initial = self.increment(fields, i_init, 0, "initial_increment", line)
            subsequent = self.increment(fields, i_sub, 1, "subsequent_increment", line)
            start = self.when(fields, i_from, "effective_from", line)
            end = self.when(fields, i_to, "effective_to", line)
            if start is not None and end is not None and end <= start:
                raise self.fail(line, f"effective_to {fields[i_to].strip()} is not after "
                                      f"effective_from {fields[i_from].strip()}")
            desc = fields[i_desc].strip() if i_desc is not None else ""
            yield RateRow(line, prefix, rate, fee if fee is not None else Decimal(0),
                          int(initial), int(subsequent), start, end, desc or None)

    def stream(self, reader, lead: str, write, progress, every) -> None:
        batch: list[str] = []
        lo = hi = None
        for row in self.parse(reader):
            rate, start, end = row.rate_per_min, row.effective_from, row.effective_to
            if start is not None or end is not None:
                self.windowed = True
            desc = _copy_text(row.description) if row.description else ""
            batch.append(f"{lead}{row.prefix}\t{rate}\t{row.connect_fee}\t"
                         f"{row.initial_increment}\t{row.subsequent_increment}\t"
                         f"{start.isoformat() if start else _NULL}\t"
                         f"{end.isoformat() if end else _NULL}\t{desc or _NULL}\n")
            if lo is None or rate < lo:
                lo = rate
            if hi is None or rate > hi:
                hi = rate
            self.rows += 1
            if len(batch) >= _BATCH_ROWS:
                write("".join(batch))
                batch.clear()
            if progress is not None and self.rows % every == 0:
                progress(self.rows)
        if batch:
            write("".join(batch))
        self.min_rate, self.max_rate = lo, hi

    def money(self, text: str, name: str, line: int, required: bool = False) -> Decimal | None:
        """An exact amount that fits numeric(12,6): the rules (and words) of
        dialplan/validate.py, as for money in `switchd provision` — never rounded."""
        text = text.strip()
        if not text:
            if required:
                raise self.fail(line, f"{name} is empty")
            return None
        try:
            return validate.RATE(text)
        except validate.Invalid as exc:
            raise self.fail(line, f"{name} {exc}") from None

    def increment(self, fields, index, default_slot, name, line) -> str:
        text = fields[index].strip() if index is not None else ""
        if not text:
            return self.defaults[default_slot]
        if not (text.isascii() and text.isdigit() and 0 < int(text) <= rating.MAX_INCREMENT):
            raise self.fail(line, f"{name} {text!r} is not a whole number of seconds "
                                  f"1..{rating.MAX_INCREMENT}")
        return str(int(text))

    def when(self, fields, index, name, line) -> datetime | None:
        text = fields[index].strip() if index is not None else ""
        if not text:
            return None
        try:
            return _aware(datetime.fromisoformat(text))
        except ValueError:
            raise self.fail(line, f"{name} {text!r} is not an ISO 8601 date/time") from None

    def lines_of(self, prefix: str, start: datetime | None) -> list[int]:
        """Line numbers of the rows with this prefix and start (for the duplicate error)."""
        found = []
        with open(self.path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            i_prefix, i_from = self.columns["prefix"], self.columns.get("effective_from")
            for fields in reader:
                if len(fields) <= i_prefix or fields[i_prefix].strip().lstrip("+") != prefix:
                    continue
                row_start = self.when(fields, i_from, "effective_from", reader.line_num) \
                    if i_from is not None and i_from < len(fields) else None
                if row_start == start:
                    found.append(reader.line_num)
        return found if len(found) >= 2 else [found[0] if found else 0] * 2


def _copy_text(value: str) -> str:
    # COPY text format: backslash, tab and newlines must be escaped.
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (value.replace("\\", "\\\\").replace("\t", "\\t")
                 .replace("\n", "\\n").replace("\r", "\\r"))
    return value
