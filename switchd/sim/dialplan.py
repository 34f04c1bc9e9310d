"""mod_dialplan_xml as the simulator plays it (pure): pick the context and the extensions
whose conditions match, and expand channel variables in application data.

Modelled on src/mod/dialplans/mod_dialplan_xml/mod_dialplan_xml.c (1.10.12):
- the context named like the call's context, else `global`, else no route;
- extensions in order; an extension matches when each of its conditions does (a condition
  without `field` is always true); `break` defaults to on-false; a matched extension ends
  the hunt unless it says `continue="true"`;
- `field` is a caller-profile field (destination_number, caller_id_number, ...) or a
  `${variable}` expression; `expression` is a regex (Python `re`, close to PCRE for what a
  dialplan uses); `$1`..`$9` in action data are the last matching condition's captures;
- anti-actions run for a condition that did not match.
No route (no context, no application collected) is `None`: FreeSWITCH then hangs the call up
NO_ROUTE_DESTINATION.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

_VAR = re.compile(r"\$\{([^{}]+)\}")
_CAPTURE = re.compile(r"\$(\d)")


def expand(text: str, lookup) -> str:
    """switch_channel_expand_variables() for plain `${name}` (an unset name expands to '')."""
    if "${" not in text:
        return text
    return _VAR.sub(lambda m: lookup(m.group(1)) or "", text)


def parse(text: str) -> ET.Element | None:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return None


def hunt(root: ET.Element, context: str, fields: dict[str, str], lookup
         ) -> list[tuple[str, str]] | None:
    """Actions (application, data) for a call, or None when FreeSWITCH finds no route."""
    section = next((s for s in root.iter("section") if s.get("name") == "dialplan"), None)
    if section is None:
        return None
    contexts = {c.get("name"): c for c in section.iter("context")}
    ctx = contexts.get(context) or contexts.get("global")
    if ctx is None:
        return None
    actions: list[tuple[str, str]] = []
    for ext in ctx.findall("extension"):
        ok, found = _extension(ext, fields, lookup)
        actions += found            # even a failed extension keeps what it collected
        if ok and (ext.get("continue") or "").lower() != "true":
            break
    return actions or None          # no application at all: "No Route, Aborting"


def _extension(ext: ET.Element, fields, lookup) -> tuple[bool, list[tuple[str, str]]]:
    actions: list[tuple[str, str]] = []
    captures: tuple[str, ...] = ()
    proceed = True
    for cond in ext.findall("condition"):
        field, expression = cond.get("field"), cond.get("expression")
        brk = (cond.get("break") or "on-false").lower()
        if field is None:
            hit, groups = True, captures
        else:
            data = expand(field, lookup) if "$" in field else fields.get(field, "")
            try:
                m = re.search(expand(expression or "", lookup), data or "")
            except re.error:
                m = None
            hit, groups = m is not None, (m.groups() if m else ())
        kind = "action" if hit else "anti-action"
        if hit:
            captures = groups
        for act in cond.findall(kind):
            data = act.get("data", "")
            if hit and captures:
                data = _CAPTURE.sub(lambda c: (captures[int(c.group(1)) - 1] or "")
                                    if 0 < int(c.group(1)) <= len(captures) else "", data)
            actions.append((act.get("application", ""), data))
        if not hit:
            proceed = False
        if (brk == "on-false" and not hit) or (brk == "on-true" and hit) or brk == "always":
            break
    return proceed, actions
