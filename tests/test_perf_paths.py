"""The hot path's fast paths and caches against the straightforward code they stand in for.

Each fast path (parse_form's C-level split, the normalise LRU, the XML renderer's one-pass
checks and remembered dial-string fragments, rank's per-tariff cost keys and remembered
outcomes, LocalCaps's prepared acquire) must give exactly what the plain code gives —
the same value or the same exception — stay bounded, and never serve a stale answer after
the world, a deck, health or the gateways changed.
"""
from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from urllib.parse import quote, unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialplan import lcr, numbers, xml_answer
from dialplan.health import CarrierHealth
from dialplan.lcr import CarrierCandidate, one_minute_cost, rank
from dialplan.model import Carrier, Gateway, Tenant, World
from dialplan.ratedeck import RateDeckBuilder
from dialplan.xml_answer import BridgeLeg, leg_for_route, render_bridge
from switchd.routing.books import HealthBook, SpendBook
from switchd.adapters.caps.base import CpsScope, Scope
from switchd.adapters.caps.local import LocalCaps
from switchd.config import load_config
from switchd.adapters.http.server import _parse_form_exact, _parse_form_fast, parse_form
from switchd.calls.policing import CapsGate
from switchd.routing.router import Router

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


# --- parse_form ---------------------------------------------------------------------------
def _reference_form(body: bytes) -> dict:
    """The original parser, written out: first occurrence wins, urllib's unquote."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = body.decode("latin-1")
    return _parse_form_exact(text)


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:            # noqa: BLE001 - compared, type and message
        return ("raise", type(exc), str(exc))


_piece = st.one_of(
    st.text(alphabet=st.characters(codec="ascii"), max_size=12),
    st.text(max_size=6),                                          # non-ASCII too
    st.sampled_from(["%", "%2", "%20", "%2B", "%25", "%zz", "%0A", "%5C", "%C3%A9", "%FF",
                     "%e2%82", "\\x41", "\\", "+", "=", "&", "\xff", "%26", "%3D"]),
)
_value = st.lists(_piece, max_size=5).map("".join)
_key = st.one_of(st.sampled_from(["Unique-ID", "Caller-Destination-Number", "variable_accountcode",
                                  "a", "a%20b", "", "k"]),
                 st.text(alphabet="abcXYZ_-%0123456789", max_size=8))
_field = st.one_of(st.tuples(_key, _value).map(lambda kv: f"{kv[0]}={kv[1]}"),
                   _value)             # fields without '=' and empty ones too


@settings(max_examples=3000, deadline=None)
@given(st.lists(_field, max_size=12).map("&".join),
       st.sampled_from(["utf-8", "latin-1"]))
def test_parse_form_fast_path_equals_exact_parser(text, encoding):
    try:
        body = text.encode(encoding)
    except UnicodeEncodeError:
        body = text.encode("utf-8")
    assert _outcome(parse_form, body) == _outcome(_reference_form, body)


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.text(alphabet="abcdefXYZ-_", min_size=1, max_size=10),
                       st.text(max_size=20), max_size=15),
       st.lists(st.text(alphabet="abcdefXYZ-_", min_size=1, max_size=10), max_size=3))
def test_parse_form_quoted_fields_and_repeats(fields, repeated):
    # Shaped like real lookups: quoted values (ASCII and not), optionally a repeated key
    pairs = [f"{k}={quote(v, safe='+:@')}" for k, v in fields.items()]
    pairs += [f"{k}=second" for k in repeated]
    body = "&".join(pairs).encode()
    got = parse_form(body)
    assert got == _reference_form(body)
    for k, v in fields.items():
        assert got[k] == v                 # the first occurrence wins


def test_parse_form_fast_path_actually_taken_and_declines_odd_shapes():
    assert _parse_form_fast("a=1&b=%2B44%2020") == {"a": "1", "b": "+44 20"}
    for odd in ["a=1&a=2", "a=1&&b=2", "a", "a%20b=1", "a=%C3%A9", "a=%zz", "a=%", "é=1"]:
        assert _parse_form_fast(odd) is None
        assert _outcome(parse_form, odd.encode()) == _outcome(_reference_form, odd.encode())


# --- normalise cache ----------------------------------------------------------------------
RAWS = ["+442079460000", "020 7946 0000", "0044 20 7946 0000", "011 44 20 7946 0000",
        "sip:+442079460000@carrier.example;user=phone", "<tel:+44-20-7946-0000>", "911",
        "112", "999", "611", "118118", "12", "", "abc", "+1 212 555 0100", "2125550100",
        "+800 1234 5678", "a\nb", "9" * 200, "+99999999", "00", "+", "+44 20 7946 00001"]
REGIONS = ["GB", "US", "DE", "gb", "", None, "XX"]


def _normalise_outcome(fn, raw, region, strict):
    try:
        return ("ok", fn(raw, region, strict=strict))
    except numbers.NumberError as exc:
        return ("raise", type(exc), str(exc), vars(exc))


def _uncached(raw, region, *, strict=True):
    return numbers._normalise(raw, region, strict)


@pytest.mark.parametrize("strict", [True, False])
def test_normalise_cache_same_result_and_same_exception(strict):
    for raw in RAWS:
        for region in REGIONS:
            want = _normalise_outcome(_uncached, raw, region, strict)
            for _ in range(2):                  # a miss, then a hit
                assert _normalise_outcome(numbers.normalise, raw, region, strict) == want


def test_normalise_cache_gives_fresh_exceptions_and_is_bounded():
    with pytest.raises(numbers.InvalidNumber) as first:
        numbers.normalise("abc", "GB")
    with pytest.raises(numbers.InvalidNumber) as second:
        numbers.normalise("abc", "GB")
    assert first.value is not second.value
    assert second.value.__traceback__ is not None
    info = numbers._cached.cache_info()
    assert info.maxsize == numbers.NORMALISE_CACHE_SIZE
    for i in range(numbers.NORMALISE_CACHE_SIZE + 50):
        numbers._cached(f"+1212555{i:04d}"[:14], "US", True)
    assert numbers._cached.cache_info().currsize <= numbers.NORMALISE_CACHE_SIZE


def test_normalise_non_str_inputs_bypass_the_cache():
    with pytest.raises(numbers.InvalidNumber):
        numbers.normalise(12345, "GB")
    with pytest.raises(numbers.InvalidNumber):
        numbers.normalise("1" * 500, "GB")


# --- XML render ---------------------------------------------------------------------------
def _reference_bridge(context, destination, call_vars, legs, max_s):
    """A straightforward rendering: every name and value checked on its own, no fast path."""
    assert legs and len(legs) <= xml_answer.MAX_LEGS
    if not xml_answer._CONTEXT.fullmatch(context):
        raise ValueError(context)
    if isinstance(max_s, bool) or not isinstance(max_s, int) or max_s <= 0:
        raise ValueError("max")
    call_vars = dict(call_vars)
    call_vars.setdefault("switchd_max_duration", max_s)

    def assign(variables, what):
        out = []
        for k, v in variables.items():
            if not isinstance(k, str) or not xml_answer._VAR_NAME.fullmatch(k):
                raise ValueError(k)
            out.append(f"{k}={xml_answer.check_value(xml_answer.format_value(v))}")
        return out

    actions = [("set", kv) for kv in assign(call_vars, "call")]
    actions += list(xml_answer._CONTROLS)
    actions.append(("set", f"execute_on_answer=sched_hangup +{max_s} ALLOTTED_TIMEOUT"))
    actions.append(xml_answer._fail_on_single_reject())
    dials = []
    for leg in legs:
        if not xml_answer._GATEWAY.fullmatch(leg.gateway) or not xml_answer._NUMBER.fullmatch(leg.number):
            raise ValueError(leg)
        block = assign(leg.vars, "leg")
        dials.append(("[" + ",".join(block) + "]" if block else "") +
                     f"sofia/gateway/{leg.gateway}/{leg.number}")
    actions += [("bridge", "|".join(dials)), ("hangup", "${originate_disposition}")]
    esc = lambda t: (t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # noqa: E731
                     .replace('"', "&quot;").replace("'", "&apos;"))
    expr = xml_answer._expression(destination)
    body = "".join(f'          <action application="{a}" data="{esc(d)}"/>\n' for a, d in actions)
    return (xml_answer._HEADER + '<document type="freeswitch/xml">\n'
            '  <section name="dialplan" description="switchd">\n'
            f'    <context name="{esc(context)}">\n      <extension name="switchd">\n'
            f'        <condition field="destination_number" expression="{esc(expr)}">\n'
            + body + xml_answer._DOC_CLOSE)


@dataclass(frozen=True)
class R:
    rate_per_min: object
    connect_fee: object = Decimal("0")
    initial_increment: object = 60
    subsequent_increment: object = 60
    prefix: object = "44"


@dataclass(frozen=True)
class Route:
    carrier: object
    gateway: object
    rate: object


_safe_text = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]),
                     min_size=1, max_size=12)
_any_text = st.one_of(_safe_text, st.sampled_from(["a,b", "x|y", "${x}", "a\nb", "é", "<>", "'",
                                                   "\u202e", "A" * 300, "gw.1", "-bad", ""]))
_decimal = st.one_of(st.decimals(min_value=Decimal("0"), max_value=Decimal("9"), places=4),
                     st.sampled_from([Decimal("0.010"), Decimal("0.01"), Decimal("1E-7"),
                                      Decimal("NaN"), 0.01, True, 3, "0.5"]))


@st.composite
def _routes(draw):
    out = []
    for i in range(draw(st.integers(1, 4))):
        cname = draw(st.one_of(_safe_text, _any_text))
        gw = Gateway(name=draw(st.one_of(_safe_text, _any_text)), carrier=cname,
                     leg_timeout=draw(st.one_of(st.integers(1, 90), st.sampled_from([True, "30"]))),
                     media_timeout=draw(st.one_of(st.integers(0, 120),
                                                  st.sampled_from([True, "60", 1.5]))))
        rate = R(draw(_decimal), draw(_decimal), draw(st.sampled_from([1, 6, 60, True])),
                 draw(st.sampled_from([1, 6, 60])), draw(st.one_of(_safe_text, _any_text)))
        out.append(Route(Carrier(name=cname), gw, rate))
    return out


def _render_outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except (ValueError, TypeError) as exc:
        return ("raise", type(exc), str(exc))


@settings(max_examples=1500, deadline=None)
@given(_routes(), st.sampled_from(["+442079460000", "442079460000", "44a", "+", "1" * 40]),
       st.sampled_from(["default", "pub lic", "a&b"]), _any_text)
def test_render_routes_equals_render_bridge_and_reference(routes, number, context, tenant):
    call_vars = {"switchd_tenant": tenant, "switchd_route_id": "r-1",
                 "switchd_max_duration": "600", "switchd_direction": "outbound"}
    for _ in range(2):                  # fragments cached on the first pass, reused on the second
        want = _render_outcome(render_bridge, context, number, call_vars,
                               [leg_for_route(r, number) for r in routes], 600)
        got = _render_outcome(xml_answer.render_routes, context, number, call_vars, routes,
                              number, 600)
        assert got == want
        ref = _render_outcome(_reference_bridge, context, number, call_vars,
                              [leg_for_route(r, number) for r in routes], 600)
        assert (got[0] == "ok") == (ref[0] == "ok")
        if got[0] == "ok":
            assert got == ref
            root = ET.fromstring(got[1].encode())
            bridge = [a.get("data") for a in root.iter("action") if a.get("application") == "bridge"]
            assert bridge[0].count("sofia/gateway/") == len(routes)


def test_render_routes_decimal_text_is_per_object_not_per_value():
    carrier, gw = Carrier(name="c"), Gateway(name="gw", carrier="c")
    a = Route(carrier, gw, R(Decimal("0.010")))
    b = Route(carrier, gw, R(Decimal("0.01")))          # equal value, different text
    xa = xml_answer.render_routes("default", "1", {}, [a], "+441", 60)
    xb = xml_answer.render_routes("default", "1", {}, [b], "+441", 60)
    assert "switchd_rate=0.010," in xa and "switchd_rate=0.01," in xb


@pytest.mark.parametrize("hostile", ["a,b", "x|sofia/gateway/evil/1", "${system(id)}", "a\nb",
                                     "}{[]", "\u2028", "\x00", "A" * 300, "'\"<>&"])
def test_render_routes_still_refuses_hostile_values(hostile):
    gw = Gateway(name="gw", carrier="c")
    good = Route(Carrier(name="c"), gw, R(Decimal("0.01")))
    xml_answer.render_routes("default", "1", {}, [good], "+441", 60)     # warm the cache
    for route in (Route(Carrier(name=hostile), gw, R(Decimal("0.01"))),
                  Route(Carrier(name="c"), gw, R(Decimal("0.01"), prefix=hostile))):
        with pytest.raises(ValueError):
            xml_answer.render_routes("default", "1", {}, [good, route], "+441", 60)
    with pytest.raises(ValueError):
        xml_answer.render_routes("default", "1", {"switchd_tenant": hostile}, [good], "+441", 60)
    with pytest.raises(ValueError):
        xml_answer.render_routes("default", "1", {}, [good], "+441" + hostile, 60)


def test_render_routes_bool_never_borrows_the_entry_of_one():
    carrier = Carrier(name="c")
    rate = R(Decimal("0.01"), initial_increment=1)
    one = Route(carrier, Gateway(name="gw", carrier="c", leg_timeout=1), rate)
    xml_answer.render_routes("default", "1", {}, [one], "+441", 60)
    flag = Route(carrier, Gateway(name="gw", carrier="c", leg_timeout=True), rate)
    with pytest.raises(TypeError):              # format_value refuses bools, cached or not
        xml_answer.render_routes("default", "1", {}, [flag], "+441", 60)
    inc = Route(carrier, one.gateway, R(rate.rate_per_min, initial_increment=True))
    assert (xml_answer.render_routes("default", "1", {}, [inc], "+441", 60)
            == render_bridge("default", "1", {}, [leg_for_route(inc, "+441")], 60))


def test_fragment_of_a_deck_rate_equals_the_per_leg_path():
    """A Rate matched in a deck carries its Tariff's texts (made at deck build); the dial
    string from them equals leg_for_route's, exponent included."""
    from dialplan.ratedeck import RateDeckBuilder
    carrier = Carrier(name="c")
    builder = RateDeckBuilder()
    builder.add("44", Decimal("0.010"), Decimal("0.0500"), 6, 6)
    builder.add("441", Decimal("1E+1"), Decimal("0"), 60, 60)
    deck = builder.build()
    for number, media_timeout in (("442079460000", 60), ("441234567", 0)):
        gw = Gateway(name="gw", carrier="c", leg_timeout=25, media_timeout=media_timeout)
        rate = deck.lookup(number, NOW)
        assert rate.tariff is not None
        route = Route(carrier, gw, rate)
        assert (xml_answer.render_routes("default", "1", {}, [route], "+" + number, 60)
                == render_bridge("default", "1", {}, [leg_for_route(route, "+" + number)], 60))


# --- rank ---------------------------------------------------------------------------------
_money = st.decimals(min_value=Decimal("0"), max_value=Decimal("2"), places=5)


@st.composite
def _candidates(draw):
    cands = []
    n = draw(st.integers(1, 6))
    for i in range(n):
        rate = R(draw(_money), draw(_money), draw(st.sampled_from([0, 1, 6, 30, 60])),
                 draw(st.sampled_from([1, 6, 30, 60])), "44")
        car = Carrier(name=f"c{i}", priority=draw(st.integers(0, 3)),
                      gateways=(Gateway(f"c{i}_gw", f"c{i}"),))
        cands.append(CarrierCandidate(car, rate, CarrierHealth(score=draw(st.integers(30, 100)))))
    return cands


@settings(max_examples=500, deadline=None)
@given(_candidates(), st.sampled_from(["cost", "priority"]))
def test_rank_order_equals_direct_one_minute_cost(cands, mode):
    tenant = Tenant(name="t", routing_mode=mode)

    def direct(c):
        cost = (one_minute_cost(c.rate), c.rate.rate_per_min)
        head = (c.carrier.priority,) + cost if mode == "priority" else cost + (c.carrier.priority,)
        return head + (-c.health.score, c.carrier.name)
    want = [c.carrier.name for c in sorted(cands, key=direct)][:lcr.MAX_ROUTES]
    for _ in range(2):                  # a miss, then a hit of the remembered outcome
        got = rank(cands, tenant, NOW)
        assert [r.carrier.name for r in got.routes] == want
        assert got == lcr._rank(cands, tenant, NOW, lcr.MAX_ROUTES, 60, False)


def test_rank_cached_outcome_follows_health_down_gateways_and_tenant():
    gws = (Gateway("a_gw", "a"),)
    a, b = Carrier(name="a", gateways=gws), Carrier(name="b", gateways=(Gateway("b_gw", "b"),))
    rate_a, rate_b = R(Decimal("0.01")), R(Decimal("0.02"))
    tenant = Tenant(name="t")
    up = CarrierHealth(score=100)
    first = rank([CarrierCandidate(a, rate_a, up), CarrierCandidate(b, rate_b, up)], tenant, NOW)
    assert [r.carrier.name for r in first.routes] == ["a", "b"]
    # a health change (a new CarrierHealth object)
    sick = CarrierHealth(score=10, consecutive_failures=10, disabled_at=NOW)
    got = rank([CarrierCandidate(a, rate_a, sick), CarrierCandidate(b, rate_b, up)], tenant, NOW)
    assert [r.carrier.name for r in got.routes] == ["b"]
    # the cool-down passes: half-open (time-dependent states are never cached)
    later = datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc)
    got = rank([CarrierCandidate(a, rate_a, sick), CarrierCandidate(b, rate_b, up)], tenant, later)
    assert [r.carrier.name for r in got.routes] == ["b", "a"]
    # a gateway goes down
    got = rank([CarrierCandidate(a, rate_a, up, down_gateways=frozenset({"a_gw"})),
                CarrierCandidate(b, rate_b, up)], tenant, NOW)
    assert [r.carrier.name for r in got.routes] == ["b"]
    # another tenant policy
    got = rank([CarrierCandidate(a, rate_a, up), CarrierCandidate(b, rate_b, up)],
               Tenant(name="t", allowed_carriers=("b",)), NOW)
    assert [r.carrier.name for r in got.routes] == ["b"]
    # and back: the original answer, with this call's rate objects and a fresh record
    again = rank([CarrierCandidate(a, rate_a, up), CarrierCandidate(b, rate_b, up)], tenant, NOW)
    assert again == first and again.considered[0] is not first.considered[0]
    other = R(Decimal("0.01"), prefix="4420")
    again = rank([CarrierCandidate(a, other, up), CarrierCandidate(b, rate_b, up)], tenant, NOW)
    assert again.routes[0].rate is other and again.considered[0]["prefix"] == "4420"


def test_rank_float_refused():
    car = Carrier(name="a", gateways=(Gateway("a_gw", "a"),))
    for _ in range(2):
        with pytest.raises(TypeError):
            rank([CarrierCandidate(car, R(0.01))], Tenant(name="t"), NOW)


# --- LocalCaps prepared acquire -----------------------------------------------------------
class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_localcaps_tuple_fast_path_equals_list_path():
    rng = random.Random(7)
    scope_sets = [
        (Scope("global", "all", None), Scope("tenant", "t", 3)),
        (Scope("global", "all", None), Scope("tenant", "t", 3), Scope("carrier", "c", 2)),
        (Scope("tenant", "t", 3), Scope("tenant", "t", 3)),             # a duplicate
        (Scope("carrier", "d", 0),),
    ]
    cps_sets = [(), (CpsScope("carrier", "c", Decimal("2")),), (CpsScope("tenant", "t", 0.5),)]
    ca, cb = Clock(), Clock()
    fast, slow = LocalCaps(ttl=5, clock=ca), LocalCaps(ttl=5, clock=cb)
    for step in range(3000):
        op = rng.random()
        uuid = f"call{rng.randrange(8)}"
        if op < 0.55:
            scopes, cps = rng.choice(scope_sets), rng.choice(cps_sets)
            assert fast.acquire(uuid, scopes, cps) == slow.acquire(uuid, list(scopes), list(cps))
        elif op < 0.85:
            assert fast.release(uuid) == slow.release(uuid)
        elif op < 0.95:
            ca.t += rng.choice([0.1, 0.5, 1.0, 3.0])
            cb.t = ca.t
        else:
            assert fast.refresh([uuid]) == slow.refresh([uuid])
        assert fast.calls() == slow.calls()
        for key in ("global:all", "tenant:t", "carrier:c", "carrier:d"):
            kind, name = key.split(":")
            assert fast.count(Scope(kind, name)) == slow.count(Scope(kind, name))
        assert fast.held(uuid) == slow.held(uuid)


def test_localcaps_tuple_path_dedupe_still_raises():
    caps = LocalCaps()
    with pytest.raises(ValueError):
        caps.acquire("x", (Scope("tenant", "t", 1), Scope("tenant", "t", 2)), ())


# --- the router: a change between two identical lookups changes the answer ---------------
def _router(world_box, decks_box, health):
    caps = CapsGate(LocalCaps(), load_config(environ={}))
    router = Router(world=lambda: world_box[0], decks=lambda: decks_box[0], health=health,
                    caps=caps, spend=SpendBook({}),
                    settings={"tenant_from": "accountcode", "tenant_variable": "switchd_tenant",
                              "max_routes": 5, "health_cooldown": 60, "emergency_gateway": ""})
    return router, caps


def _bridge(router, caps, n=[0]):
    n[0] += 1
    d = router.route({"Unique-ID": f"u{n[0]}", "Caller-Destination-Number": "+442079460000",
                      "variable_accountcode": "acme"})
    caps.release_now(d.call_uuid)
    assert d.result == "routed", d.reason
    # One carrier per bridge (failover asks again, docs/routing.md): the answer's bridge,
    # then the planned order from the routing log.
    bridge = re.search(r'application="bridge" data="([^"]*)"', d.xml).group(1)
    return bridge + " planned: " + " ".join(f"{c['gateway']}@{c['rate']}" for c in d.chosen)


def test_router_answer_follows_deck_swap_health_gateways_and_world():
    def world(**tenant):
        return World(tenants={"acme": Tenant(name="acme", accountcode="acme", default_region="GB",
                                             **tenant)},
                     carriers={"alpha": Carrier(name="alpha", gateways=(Gateway("gw_a", "alpha"),)),
                               "beta": Carrier(name="beta", gateways=(Gateway("gw_b", "beta"),))},
                     dids={})
    deck = lambda rate: RateDeckBuilder().add("44", Decimal(rate)).build()    # noqa: E731
    world_box = [world()]
    decks_box = [{"alpha": deck("0.01"), "beta": deck("0.02")}]
    health = HealthBook()
    router, caps = _router(world_box, decks_box, health)
    first = _bridge(router, caps)
    assert first == _bridge(router, caps)                          # cached, same answer
    assert first.index("gw_a") < first.index("gw_b")
    decks_box[0] = {"alpha": deck("0.03"), "beta": deck("0.02")}  # deck swap
    swapped = _bridge(router, caps)
    assert swapped.index("gw_b") < swapped.index("gw_a") and "gw_a@0.03" in swapped
    assert "sofia/gateway/gw_b/" in swapped and "sofia/gateway/gw_a/" not in swapped
    decks_box[0] = {"alpha": deck("0.01"), "beta": deck("0.02")}
    assert _bridge(router, caps) == first
    for _ in range(10):                                            # health: alpha disabled
        health.record_leg("alpha", "NORMAL_TEMPORARY_FAILURE", 503, False, datetime.now(timezone.utc))
    assert "gw_a" not in _bridge(router, caps)
    health = HealthBook()
    router, caps = _router(world_box, decks_box, health)
    assert _bridge(router, caps) == first
    health.gateway_event("gw_a", "state", "DOWN", None)            # gateway down
    down = _bridge(router, caps)
    assert "gw_a" not in down and "gw_b" in down
    health.gateway_event("gw_a", "state", "REGED", None)
    assert _bridge(router, caps) == first
    world_box[0] = world(allowed_carriers=("beta",))               # tenant policy (world reload)
    assert "gw_a" not in _bridge(router, caps)
    world_box[0] = world(max_rate_per_min=Decimal("0.015"))
    assert "gw_b" not in _bridge(router, caps)


def test_router_uuid4_is_a_canonical_random_version_4_uuid():
    import uuid

    from switchd.routing.router import _uuid4
    seen = set()
    for _ in range(2000):
        text = _uuid4()
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(text)
    assert len(seen) == 2000


def test_decide_duration_equals_its_rule():
    from dialplan import policy
    rng = random.Random(3)
    for _ in range(3000):
        rate = R(Decimal(rng.choice(["0", "0.01", "0.010", "0.5", "2"])),
                 Decimal(rng.choice(["0", "0.05", "1"])), rng.choice([0, 1, 6, 60]),
                 rng.choice([1, 6, 60]))
        remaining = Decimal(rng.choice(["-1", "0", "0.02", "0.3", "1.00", "25"]))
        args = (rng.choice([None, 0, 30]), rng.choice([0, 60, 3600]), remaining, rate)
        assert policy.decide_duration(*args) == policy._decide_duration(*args)
    with pytest.raises(TypeError):                 # floats still refused, cached path or not
        policy.decide_duration(None, 60, Decimal(1), R(0.01))
