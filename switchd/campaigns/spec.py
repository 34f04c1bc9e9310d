"""What a client sends for a campaign, checked field by field (one error names the field):
the campaign's settings, and its contacts as CSV or JSON."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from dialplan import campaigns as rules
from dialplan import numbers, validate

MAX_CONTACTS = 100_000        # per upload
SETTINGS = ("pace_cps", "max_concurrent", "caller_id", "timeout_s", "calling_hours",
            "calling_days", "default_timezone", "min_answer_rate", "answer_rate_window")
DEFAULTS = {"pace_cps": Decimal(1), "max_concurrent": 10, "timeout_s": 30,
            "default_timezone": "UTC", "answer_rate_window": 50}


class SpecError(ValueError):
    """A bad value; `field` names it (the API's `field`, the CLI's one line)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _decimal(field: str, value, low: Decimal, high: Decimal) -> Decimal:
    if isinstance(value, bool):
        raise SpecError(field, f"a number from {low} to {high}")
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise SpecError(field, f"{value!r} is not a number") from None
    if not number.is_finite() or not low <= number <= high:
        raise SpecError(field, f"{value} is not from {low} to {high}")
    return number


def _int(field: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise SpecError(field, f"an integer from {low} to {high}")
    if not low <= value <= high:
        raise SpecError(field, f"{value} is not from {low} to {high}")
    return value


def settings(body: dict, partial: bool = False) -> dict:
    """The campaign columns a body sets (all of SETTINGS with defaults unless `partial`)."""
    out = {} if partial else dict(DEFAULTS)
    if "pace_cps" in body:
        out["pace_cps"] = _decimal("pace_cps", body["pace_cps"], Decimal("0.01"), Decimal(1000))
    if "max_concurrent" in body:
        out["max_concurrent"] = _int("max_concurrent", body["max_concurrent"], 1, 100_000)
    if "timeout_s" in body:
        out["timeout_s"] = _int("timeout_s", body["timeout_s"], 1, 300)
    if "answer_rate_window" in body:
        out["answer_rate_window"] = _int("answer_rate_window", body["answer_rate_window"], 1, 10_000)
    if body.get("min_answer_rate") is not None:
        out["min_answer_rate"] = _decimal("min_answer_rate", body["min_answer_rate"],
                                          Decimal(0), Decimal(1))
    if body.get("caller_id") is not None:
        try:
            out["caller_id"] = validate.caller_id(body["caller_id"])
        except validate.Invalid as exc:
            raise SpecError("caller_id", str(exc)) from None
    for key, check in (("default_timezone", rules.check_zone),):
        if key in body:
            try:
                out[key] = check(body[key])
            except rules.CampaignRuleError as exc:
                raise SpecError(key, str(exc).partition(": ")[2]) from None
    if "calling_hours" in body or "calling_days" in body:
        try:
            hours = rules.parse_hours(body.get("calling_hours"), body.get("calling_days"))
        except rules.CampaignRuleError as exc:
            field, _, msg = str(exc).partition(": ")
            raise SpecError(field, msg) from None
        out["hours_start"], out["hours_end"], out["hours_days"] = (hours.start, hours.end,
                                                                   list(hours.days))
    return out


@dataclass(frozen=True)
class Contact:
    number: str          # E.164
    timezone: str        # zone key (rules.zones_for), or the one given
    data: dict


def contact(raw: dict, where: str, region: str, default_zone: str) -> Contact:
    """One contact from a JSON object or a CSV row: `number` (any form the number parser
    takes, national ones in the tenant's region), optional `timezone`, the rest kept as data."""
    if not isinstance(raw, dict):
        raise SpecError(where, "a contact is an object with a number")
    number = raw.get("number")
    if not isinstance(number, str) or not number.strip():
        raise SpecError(f"{where}.number", "required")
    try:
        e164 = numbers.normalise(number, region).e164
    except numbers.NumberError as exc:
        raise SpecError(f"{where}.number", f"{number!r}: {exc}") from None
    zone = raw.get("timezone") or None
    if zone is not None:
        try:
            zone = rules.check_zone(zone)
        except rules.CampaignRuleError as exc:
            raise SpecError(f"{where}.timezone", str(exc).partition(": ")[2]) from None
    data = {k: v for k, v in raw.items() if k not in ("number", "timezone") and k}
    return Contact(e164, zone or rules.zones_for(e164, default_zone), data)


def contacts_json(items, region: str, default_zone: str) -> list[Contact]:
    if not isinstance(items, list) or not items:
        raise SpecError("contacts", "a non-empty list of objects with a number")
    if len(items) > MAX_CONTACTS:
        raise SpecError("contacts", f"at most {MAX_CONTACTS} per upload")
    return [contact(item, f"contacts[{i}]", region, default_zone) for i, item in enumerate(items)]


def contacts_csv(text: str, region: str, default_zone: str) -> list[Contact]:
    """A header row naming `number` (required) and `timezone` (optional); other columns
    are kept with the contact. A bad row refuses the whole upload, naming its line."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in reader.fieldnames or []]
    if "number" not in header:
        raise SpecError("csv", "the header row must name a `number` column")
    reader.fieldnames = header
    out = []
    for row in reader:
        line = reader.line_num
        if len(out) >= MAX_CONTACTS:
            raise SpecError("csv", f"at most {MAX_CONTACTS} contacts per upload")
        if None in row:
            raise SpecError(f"line {line}", "more fields than the header has")
        out.append(contact({k: (v or "").strip() for k, v in row.items()}, f"line {line}",
                           region, default_zone))
    if not out:
        raise SpecError("csv", "no contacts after the header row")
    return out
