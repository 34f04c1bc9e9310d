"""What FreeSWITCH says its sofia gateways are doing, from `sofia xmlstatus gateway`.

Sans-I/O: text in, statuses out. The format is captured from FreeSWITCH 1.10.12 in
tests/fixtures/freeswitch-1.10/sofia-xmlstatus-gateway*.xml: a `<gateways>` root with one
`<gateway>` per gateway of every profile (`<name>`, `<profile>`, `<state>` = registration
state, NOREG for register=false, `<status>` = UP/DOWN from the OPTIONS pings, UP until a
ping fails). The daemon queries it on every ESL connect: FreeSWITCH deletes its gateways
at shutdown (sofia::gateway_delete) and adds them again at start before any ESL client
can connect, so their gateway_add events are never seen.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from dialplan import health as health_rules


class GatewayStatusError(ValueError):
    """The reply is not a gateway status document (e.g. mod_sofia not loaded)."""


@dataclass(frozen=True)
class GatewayStatus:
    name: str
    profile: str | None
    state: str | None          # registration state: NOREG, REGED, FAIL_WAIT, ...
    status: str | None         # UP / DOWN (OPTIONS pings)

    @property
    def up(self) -> bool:
        """Usable for a call: the ping status says UP, and a registering gateway has not
        failed its registration (dialplan/health.py reads the same words in events)."""
        verdict = health_rules.gateway_event_state("gateway_state", self.state, self.status)
        return verdict != "down"


def parse_xmlstatus(text: str) -> dict[str, GatewayStatus]:
    """{gateway name: GatewayStatus} from `sofia xmlstatus gateway` (all gateways, or the
    bare `<gateway>` of `sofia xmlstatus gateway NAME`)."""
    body = (text or "").strip()
    if not body.startswith("<"):
        raise GatewayStatusError(f"not a gateway status document: {body[:80]!r}")
    try:
        root = ET.fromstring(body.encode("latin-1", "replace"))
    except ET.ParseError as exc:
        raise GatewayStatusError(f"unreadable gateway status XML: {exc}") from None
    if root.tag == "gateway":
        items = [root]
    elif root.tag == "gateways":
        items = root.findall("gateway")
    else:
        raise GatewayStatusError(f"unexpected root <{root.tag}> in gateway status")
    out: dict[str, GatewayStatus] = {}
    for gw in items:
        name = (gw.findtext("name") or "").strip()
        if not name:
            continue
        out[name] = GatewayStatus(name=name, profile=_text(gw, "profile"),
                                  state=_text(gw, "state"), status=_text(gw, "status"))
    return out


def _text(element, tag: str) -> str | None:
    value = element.findtext(tag)
    return value.strip() if value and value.strip() else None
