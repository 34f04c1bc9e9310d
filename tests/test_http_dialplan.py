"""POST /fs/dialplan in process: the captured mod_xml_curl body, hostile values in every
field, malformed bodies. Every answer is well-formed XML FreeSWITCH can act on, and no
posted value can add an action or a dial-string leg."""
from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from dialplan.model import Carrier, Did, Gateway, Tenant, World
from dialplan.ratedeck import RateDeckBuilder
from switchd.routing.books import HealthBook, SpendBook
from switchd.adapters.caps.local import LocalCaps
from switchd.config import load_config
from switchd.adapters.http.server import HttpApp, parse_form
from switchd.calls.policing import CapsGate
from switchd.routing.router import Router
from switchd.sim.make_templates import read_transcript

HOSTILE = ["x'\"<>&", "a\nb", "1001%0AEvent-Name: INJECTED", "|sofia/gateway/evil/1",
           "}{[]", "${system(rm -rf /)}", "\u202e\u0000", "A" * 5000, "+44 20 7946 0000,evil"]


@pytest.fixture(scope="module")
def captured_body() -> bytes:
    blocks = read_transcript(Path(__file__).parent / "fixtures" / "freeswitch-1.10" /
                             "xml-curl-dialplan-request.txt")
    request = next(data for conn, direction, data in blocks if conn == "http1" and direction == "C>S")
    return request.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in request else request.split(b"\n\n", 1)[1]


@pytest.fixture
def app():
    gw = Gateway(name="gw_a", carrier="alpha")
    world = World(tenants={"acme": Tenant(name="acme", accountcode="acme", default_region="GB",
                                          blocked_prefixes=("44900",))},
                  carriers={"alpha": Carrier(name="alpha", gateways=(gw,))},
                  dids={"+442079460100": Did("+442079460100", "acme", "extension", "1000")})
    deck = RateDeckBuilder().add("44", Decimal("0.01")).add("1", Decimal("0.02")).build()
    caps = CapsGate(LocalCaps(), load_config(environ={}))
    router = Router(world=lambda: world, decks=lambda: {"alpha": deck}, health=HealthBook(),
                    caps=caps, spend=SpendBook({}),
                    settings={"tenant_from": "accountcode", "tenant_variable": "switchd_tenant",
                              "max_routes": 5, "health_cooldown": 60, "emergency_gateway": ""})
    return HttpApp(route_lookup=lambda form: router.route(form).xml)


def _post(app, body: bytes, length: int | None = None):
    status = {}
    environ = {"PATH_INFO": "/fs/dialplan", "REQUEST_METHOD": "POST",
               "CONTENT_LENGTH": str(len(body) if length is None else length),
               "wsgi.input": io.BytesIO(body)}
    chunks = app(environ, lambda s, h: status.update(code=s, headers=h))
    return status["code"], b"".join(chunks)


def _actions(xml: bytes):
    root = ET.fromstring(xml)
    return [(a.get("application"), a.get("data")) for a in root.iter("action")]


def _with(body: bytes, **fields) -> bytes:
    pairs = [p.split("=", 1) for p in body.decode().split("&")]
    out = []
    for key, value in pairs:
        name = unquote(key)
        if name in fields:
            value = quote(fields.pop(name), safe="")
        out.append(f"{key}={value}")
    out += [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields.items()]
    return "&".join(out).encode()


def test_captured_lookup_routes_through_lcr(app, captured_body):
    form = parse_form(captured_body)
    assert form["section"] == "dialplan" and form["Caller-Destination-Number"] == "1001"
    body = _with(captured_body, **{"Caller-Destination-Number": "02079460123",
                                   "variable_accountcode": "acme"})
    code, xml = _post(app, body)
    assert code.startswith("200")
    actions = _actions(xml)
    bridge = [data for app_, data in actions if app_ == "bridge"]
    assert bridge and "sofia/gateway/gw_a/+442079460123" in bridge[0]
    assert ("set", "switchd_tenant=acme") in actions
    assert any(d.startswith("execute_on_answer=sched_hangup +") for a, d in actions if a == "set")


@pytest.mark.parametrize("field", ["Caller-Destination-Number", "variable_accountcode", "Unique-ID",
                                   "Caller-Caller-ID-Number", "Caller-Context", "Hunt-Context",
                                   "variable_sip_from_user", "hostname"])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_never_inject(app, captured_body, field, value):
    base = {"Caller-Destination-Number": "02079460123", "variable_accountcode": "acme"}
    base[field] = value
    code, xml = _post(app, _with(captured_body, **base))
    assert code.startswith("200")
    actions = _actions(xml)                   # well-formed, or this raises
    apps = [a for a, _ in actions]
    assert apps.count("bridge") <= 1 and "system" not in apps
    for application, data in actions:
        assert "\n" not in (data or "") and "evil" not in (data or "") and "INJECTED" not in (data or "")
        if application == "bridge":
            assert data.count("sofia/gateway/") == 1     # one carrier here: no extra leg
    refused = [d for a, d in actions if a == "respond"]
    if field == "Caller-Destination-Number":
        assert refused, "a hostile number is refused, never routed"


@pytest.mark.parametrize("body, length, code", [
    (b"a=1&b", None, "400"),                          # a field without '='
    (b"", 10 ** 9, "400"),                            # absurd Content-Length
    (b"\xff\xfe=\x00", None, "200"),                  # undecodable bytes: answered, not crashed
])
def test_malformed_bodies_get_a_clear_answer(app, body, length, code):
    status, payload = _post(app, body, length)
    assert status.startswith(code)


def test_other_sections_fall_through_to_static_config(app):
    status, xml = _post(app, b"section=directory&key_value=1000")
    assert status.startswith("200") and b'status="not found"' in xml


def test_unknown_tenant_and_bad_number_are_refused_with_codes(app, captured_body):
    for fields, code in ((dict(variable_accountcode="nobody"), "403"),
                         ({"variable_accountcode": "acme", "Caller-Destination-Number": "12"}, "484"),
                         ({"variable_accountcode": "acme", "Caller-Destination-Number": "09001234567"}, "403")):
        _, xml = _post(app, _with(captured_body, **fields))
        responds = [d for a, d in _actions(xml) if a == "respond"]
        assert responds and responds[0].startswith(code), (fields, responds)
