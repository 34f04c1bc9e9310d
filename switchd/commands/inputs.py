"""Input files as an operator hands them over: say precisely why one cannot be read.

Called on the error path (a UnicodeDecodeError surfaced) or before a long import (a CSV
header without commas), so the common case reads nothing twice.
"""
from __future__ import annotations

import codecs
from pathlib import Path

from switchd.errors import InputError

_CHUNK = 1 << 20


def not_utf8(path: str | Path) -> InputError:
    """An InputError naming the first byte of `path` that is not UTF-8: offset and line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = line = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                bad_at = offset - pending + exc.start
                head = (b"" if exc.start < pending else chunk[:exc.start - pending])
                line += head.count(b"\n")
                bad = exc.object[exc.start]
                return InputError(f"{path}: not UTF-8 text: byte 0x{bad:02x} at offset {bad_at} "
                                  f"(line {line + 1}); save it as UTF-8 "
                                  f"(e.g. iconv -f latin1 -t utf-8)")
            offset += len(chunk)
            line += chunk.count(b"\n")
    return InputError(f"{path}: not UTF-8 text; save it as UTF-8")


def check_csv_header(path: str | Path) -> None:
    """A rate deck's header names at least two columns, so it has a comma. Without one,
    guess the delimiter the file uses and say so, before any row is read."""
    try:
        with open(path, "rb") as handle:
            header = handle.readline(64 * 1024).decode("utf-8-sig", errors="replace")
    except OSError:
        return                                  # the importer names the file and the reason
    if not header.strip() or "," in header:
        return
    for delimiter, name in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")):
        if delimiter in header:
            raise InputError(f"{path}:1: the header has no comma: the file seems to use {name} "
                             "as delimiter; save it comma-separated")
