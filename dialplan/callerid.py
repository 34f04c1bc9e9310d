"""The caller ID switchd passes to carriers, made safe (DESIGN §4, docs/routing.md).

Seen on FreeSWITCH 1.10.12: a caller display name holding an escaped quote or `<>`
(`"Bad \\"q\\" <x>"`) makes sofia fail every carrier leg before anything is sent
(DESTINATION_OUT_OF_ORDER), and a caller number holding `${...}` ends every leg with
sofia's status 900. The router therefore always sets `effective_caller_id_name` /
`effective_caller_id_number` to the values below, which sofia puts in the From header.

Name: percent-encoded control characters (`%0A`, `%0d`, ...) and then every `%` removed,
anything but letters, digits, marks, spaces and `. - _ ( ) & + #` dropped
(quotes, angle brackets, `$`, braces, backslashes, control characters, the replacement
character left by undecodable bytes), spaces collapsed, cut to MAX_NAME characters.
(`:` is not kept: seen on FreeSWITCH 1.10.12, sofia cuts a display name at its colon,
`a b X-Evil: 1` reached the carrier as `" 1"`.)
Number: visual separators (space . - ( )) removed; a `+` and 2-20 digits is kept, anything
else becomes ANONYMOUS (the call still routes; RFC 3323's anonymous user). An empty name
becomes the number.
"""
from __future__ import annotations

import re
import unicodedata

__all__ = ["sanitise_name", "sanitise_number", "caller_id", "MAX_NAME", "ANONYMOUS"]

MAX_NAME = 48
ANONYMOUS = "anonymous"
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9a-f]|7f)", re.IGNORECASE)
_KEEP_PUNCT = frozenset(" .-_()&+#")
_SEPARATORS = str.maketrans("", "", " .-()")
_NUMBER = re.compile(r"\+?[0-9]{2,20}")


def sanitise_name(raw: str | None) -> str:
    text = _ENCODED_CONTROL.sub(" ", raw or "").replace("%", "")
    kept = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in _KEEP_PUNCT:
            kept.append(ch)
        elif unicodedata.category(ch)[0] in "LNM" and ch != "\ufffd":
            kept.append(ch)
        elif ch.isspace():
            kept.append(" ")
    return " ".join("".join(kept).split())[:MAX_NAME].strip()


def sanitise_number(raw: str | None) -> str:
    text = (raw or "").strip().translate(_SEPARATORS)
    return text if _NUMBER.fullmatch(text) else ANONYMOUS


def caller_id(name: str | None, number: str | None) -> tuple[str, str]:
    """(name, number) safe for the From header and for a FreeSWITCH `set`."""
    clean_number = sanitise_number(number)
    clean_name = sanitise_name(name) or (clean_number if clean_number != ANONYMOUS
                                         else "Anonymous")
    return clean_name, clean_number
