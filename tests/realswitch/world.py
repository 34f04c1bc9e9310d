"""The world the real-switch suite provisions: tenants, three carriers that own the
harness's gateways, and small rate decks that make a different carrier cheapest per
destination (so a call's carrier proves the LCR choice).

| destination | alpha (gw_a) | bravo (gw_b) | charlie (gw_c) | cheapest |
|---|---|---|---|---|
| 44 UK     | 0.0100, 1/1 | 0.0200 + 0.0050 fee, 6/6 | 0.0300, 60/60 | alpha |
| 33 France | 0.0300, 1/1 | 0.0100 + 0.0050 fee, 6/6 | 0.0200, 60/60 | bravo |
| 49 Germany| 0.0300, 1/1 | 0.0200 + 0.0050 fee, 6/6 | 0.0100, 60/60 | charlie |
| 1 US      | 0.0050, 1/1 | 0.0060, no fee, 6/6       | 0.0070, 60/60 | alpha, then bravo, charlie |

Tenants: `acme` (calls up to an hour) and `brief` (max_call_seconds = 3, for max-duration
cuts). The caller names its tenant in an `X-Tenant` header: the daemon runs with
`routing.tenant_from = variable`, `routing.tenant_variable = sip_h_X-Tenant` (an
unauthenticated sipp caller has no accountcode).
"""
from __future__ import annotations

from pathlib import Path

GATEWAY_OF = {"alpha": "gw_a", "bravo": "gw_b", "charlie": "gw_c"}
CARRIER_OF = {gw: carrier for carrier, gw in GATEWAY_OF.items()}
LEG_TIMEOUT_S = 5

WORLD_TOML = f"""\
[[tenants]]
name = "acme"
accountcode = "acme"
default_region = "GB"
max_call_seconds = 3600

[[tenants]]
name = "brief"
accountcode = "brief"
default_region = "GB"
max_call_seconds = 3

[[carriers]]
name = "alpha"
priority = 10
default_initial_increment = 1
default_subsequent_increment = 1
  [[carriers.gateways]]
  name = "gw_a"
  profile = "callers"
  leg_timeout = {LEG_TIMEOUT_S}

[[carriers]]
name = "bravo"
priority = 20
default_initial_increment = 6
default_subsequent_increment = 6
  [[carriers.gateways]]
  name = "gw_b"
  profile = "callers"
  leg_timeout = {LEG_TIMEOUT_S}

[[carriers]]
name = "charlie"
priority = 30
default_initial_increment = 60
default_subsequent_increment = 60
  [[carriers.gateways]]
  name = "gw_c"
  profile = "callers"
  leg_timeout = {LEG_TIMEOUT_S}
"""

# carrier -> [(prefix, rate_per_min, connect_fee, initial, subsequent)]
DECKS = {
    "alpha": [("44", "0.0100", "0", 1, 1), ("33", "0.0300", "0", 1, 1),
              ("49", "0.0300", "0", 1, 1), ("1", "0.0050", "0", 1, 1)],
    "bravo": [("44", "0.0200", "0.0050", 6, 6), ("33", "0.0100", "0.0050", 6, 6),
              ("49", "0.0200", "0.0050", 6, 6), ("1", "0.0060", "0", 6, 6)],
    "charlie": [("44", "0.0300", "0", 60, 60), ("33", "0.0200", "0", 60, 60),
                ("49", "0.0100", "0", 60, 60), ("1", "0.0070", "0", 60, 60)],
}

# (dialled, cheapest carrier, its prefix)
DESTINATIONS = [
    ("+442079460123", "alpha", "44"),
    ("+33142685300", "bravo", "33"),
    ("+493012345678", "charlie", "49"),
]
US_NUMBER = "+12125550123"       # every carrier covers it: alpha, bravo, charlie in that order


def rate_of(carrier: str, prefix: str) -> tuple[str, str, int, int]:
    for p, rate, fee, initial, subsequent in DECKS[carrier]:
        if p == prefix:
            return rate, fee, initial, subsequent
    raise KeyError((carrier, prefix))


def write(directory: Path, world_toml: str = WORLD_TOML) -> tuple[Path, dict[str, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    world = directory / "world.toml"
    world.write_text(world_toml)
    decks = {}
    for carrier, rows in DECKS.items():
        path = directory / f"{carrier}.csv"
        lines = ["prefix,rate_per_min,connect_fee,initial_increment,subsequent_increment"]
        lines += [",".join(map(str, row)) for row in rows]
        path.write_text("\n".join(lines) + "\n")
        decks[carrier] = path
    return world, decks
