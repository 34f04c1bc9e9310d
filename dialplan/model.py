"""Business data as the routing logic sees it: frozen, loaded from PostgreSQL by switchd.

Nothing here knows where the data came from; tests build these by hand.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from decimal import Decimal

from dialplan.retry import DEFAULT_POLICY, RetryPolicy


@dataclass(frozen=True)
class Gateway:
    name: str                 # the sofia gateway name: sofia/gateway/<name>/<number>
    carrier: str
    position: int = 0         # order inside the carrier
    leg_timeout: int = 30     # seconds before the next gateway is tried
    media_timeout: int = 60   # seconds of no RTP from the carrier before FreeSWITCH ends
                              # its leg (MEDIA_TIMEOUT); 0: never
    enabled: bool = True
    profile: str | None = None    # the sofia profile the gateway is declared in


@dataclass(frozen=True)
class Carrier:
    name: str
    gateways: tuple[Gateway, ...] = ()
    enabled: bool = True
    priority: int = 100       # lower is preferred (priority mode, and cost ties)
    max_channels: int | None = None
    cps_limit: Decimal | None = None
    default_initial_increment: int = 60
    default_subsequent_increment: int = 60
    billing_rounding: str = "billsec"   # rating.BILLSEC, or rating.CEIL_MS by agreement


@dataclass(frozen=True)
class Tenant:
    name: str
    accountcode: str | None = None
    domain: str | None = None
    default_region: str = "US"
    max_call_seconds: int = 3600
    max_concurrent: int | None = None
    cps_limit: Decimal | None = None
    monthly_budget: Decimal | None = None
    allowed_countries: tuple[str, ...] = ()     # ISO regions; empty = any
    allowed_prefixes: tuple[str, ...] = ()      # E.164 digit prefixes; empty = any
    blocked_prefixes: tuple[str, ...] = ()
    max_rate_per_min: Decimal | None = None
    allowed_carriers: tuple[str, ...] = ()      # empty = all
    routing_mode: str = "cost"                  # 'cost' | 'priority'
    enabled: bool = True
    retry: RetryPolicy = DEFAULT_POLICY         # originate retries (dialplan/retry.py)


@dataclass(frozen=True)
class Did:
    number: str               # E.164 with leading +
    tenant: str
    destination_type: str     # 'extension' | 'sip_uri' | 'number'
    destination: str
    profile: str | None = None    # sip_uri only: the sofia profile to send it through


@dataclass(frozen=True)
class Campaign:
    name: str
    tenant: str
    max_concurrent: int | None = None
    cps_limit: Decimal | None = None


@dataclass(frozen=True)
class World:
    """Everything but the rate decks, indexed for the lookups routing makes."""
    tenants: dict[str, Tenant] = field(default_factory=dict)
    carriers: dict[str, Carrier] = field(default_factory=dict)
    dids: dict[str, Did] = field(default_factory=dict)
    campaigns: dict[str, Campaign] = field(default_factory=dict)

    def tenant_by_accountcode(self, code: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if t.accountcode == code), None)

    @functools.cached_property
    def accountcode_index(self) -> dict[str, Tenant]:
        """{accountcode: tenant} (the first tenant with the code, as tenant_by_accountcode
        finds it), built once per World: a reload builds a new World, so this is computed
        when the world changes rather than as a scan per lookup."""
        index: dict[str, Tenant] = {}
        for t in self.tenants.values():
            if t.accountcode is not None:
                index.setdefault(t.accountcode, t)
        return index

    def tenant_by_domain(self, domain: str) -> Tenant | None:
        return next((t for t in self.tenants.values() if t.domain == domain), None)
