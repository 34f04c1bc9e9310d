"""Where each key of a TOML file is, by line. tomllib reports positions only for syntax
errors, so provisioning errors look up here the line of the value they name.

`key_lines(text)` maps paths in the form errors use (`tenants[0]`, `carriers[1].gateways[0].name`,
`delete.tenants`) to 1-based line numbers; `line_of` finds the closest known line for a path
(the key's own, else its table's). Only what a provisioning file uses is understood: table
and array-of-tables headers and `key = value` lines; a key inside a multi-line string is
never at the start of a line in practice.
"""
from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_-]+)\s*=""")
_LAST = re.compile(r"(\.[^.\[]+|\[\d+\])$")


def _unquote(name: str) -> str:
    return name[1:-1] if name[:1] in "\"'" else name


def key_lines(text: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    last_index: dict[str, int] = {}      # array-of-tables path -> index of its latest table
    current = ""

    def resolve(parts: list[str]) -> str:
        path = ""
        for part in parts:
            path = f"{path}.{part}" if path else part
            if path in last_index:
                path = f"{path}[{last_index[path]}]"
        return path

    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            parts = [_unquote(p.strip()) for p in header.group(2).split(".")]
            if header.group(1) == "[[":
                array = resolve(parts[:-1])
                array = f"{array}.{parts[-1]}" if array else parts[-1]
                last_index[array] = last_index.get(array, -1) + 1
                current = f"{array}[{last_index[array]}]"
            else:
                current = resolve(parts)
            lines.setdefault(current, number)
            continue
        key = _KEY.match(line)
        if key:
            name = _unquote(key.group(1))
            lines.setdefault(f"{current}.{name}" if current else name, number)
    return lines


def line_of(lines: dict[str, int], path: str) -> int | None:
    """The line of `path`, else of the nearest enclosing table or key; None if unknown."""
    while path:
        if path in lines:
            return lines[path]
        shorter = _LAST.sub("", path)
        if shorter == path:
            return None
        path = shorter
    return None
