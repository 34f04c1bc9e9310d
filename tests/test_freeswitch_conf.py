"""The FreeSWITCH side we ship (freeswitch-conf/) and the compose stack (docker/):
a safe static fallback for every context switchd answers for, the modules it needs, and a
compose file whose services start in any order. `docker compose config` validates the
file where Docker's compose plugin exists."""
from __future__ import annotations

import inspect
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from dialplan import xml_answer

ROOT = Path(__file__).parents[1]
CONF = ROOT / "freeswitch-conf"
COMPOSE = ROOT / "docker" / "compose.yaml"
SAFE_APPS = {"set", "log", "respond", "hangup"}


def served_contexts() -> set[str]:
    """Contexts whose lookups reach switchd: `public` (calls from carriers and SIP peers),
    the context switchd's DID answers transfer extensions into, and any context a shipped
    SIP profile sends calls to."""
    contexts = {"public"}
    contexts.add(inspect.signature(xml_answer.render_local).parameters["extension_context"].default)
    for path in CONF.rglob("*.xml"):
        for param in ET.parse(path).getroot().iter("param"):
            if param.get("name") == "context":
                contexts.add(param.get("value"))
    return contexts


def fallbacks() -> dict[str, ET.Element]:
    found = {}
    for path in sorted((CONF / "dialplan").glob("*.xml")):
        for context in ET.parse(path).getroot().iter("context"):
            assert context.get("name") not in found, f"{path.name}: context defined twice"
            found[context.get("name")] = context
    return found


def test_every_shipped_file_is_well_formed_xml():
    files = list(CONF.rglob("*.xml"))
    assert len(files) >= 6
    for path in files:
        ET.parse(path)


def test_every_context_switchd_serves_has_a_static_fallback():
    assert {"public", "default"} <= served_contexts()
    missing = served_contexts() - set(fallbacks())
    assert not missing, f"no static fallback for context(s) {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(served_contexts()))
def test_each_fallback_refuses_every_call_and_routes_nothing(name):
    context = fallbacks()[name]
    actions = [(a.get("application"), a.get("data", "")) for a in context.iter("action")]
    assert actions and {app for app, _ in actions} <= SAFE_APPS, actions
    # One catch-all extension that answers a 5xx and hangs up.
    catch_all = [c for c in context.iter("condition")
                 if c.get("field") == "destination_number" and c.get("expression") == "^.*$"]
    assert len(catch_all) == 1
    apps = [(a.get("application"), a.get("data", "")) for a in catch_all[0].iter("action")]
    assert ("respond", "503 Service Unavailable") in apps
    assert apps[-1][0] == "hangup"


def test_modules_conf_loads_what_switchd_needs_and_xml_curl_first():
    modules = [m.get("module") for m in
               ET.parse(CONF / "autoload_configs" / "modules.conf.xml").getroot().iter("load")]
    needed = ["mod_xml_curl", "mod_event_socket", "mod_commands", "mod_dptools",
              "mod_dialplan_xml", "mod_sofia", "mod_json_cdr"]
    assert set(needed) <= set(modules), set(needed) - set(modules)
    assert modules.index("mod_xml_curl") < modules.index("mod_sofia")   # before any call
    assert len(modules) == len(set(modules))


def test_xml_curl_binding_has_a_timeout_and_serves_the_dialplan():
    binding = ET.parse(CONF / "autoload_configs" / "xml_curl.conf.xml").getroot().find(".//binding")
    params = {p.get("name"): p for p in binding.iter("param")}
    assert params["gateway-url"].get("bindings") == "dialplan"
    assert params["gateway-url"].get("value").endswith("/fs/dialplan")
    assert 0 < float(params["timeout"].get("value")) <= 5


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_start_in_any_order():
    services = _compose()["services"]
    assert {"postgres", "redis", "freeswitch", "switchd", "prometheus"} <= set(services)
    for name, service in services.items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure"), name
    for name in ("postgres", "redis", "freeswitch", "switchd"):
        assert services[name]["healthcheck"]["test"], name
    needs = services["switchd"]["depends_on"]
    assert needs["postgres"]["condition"] == "service_healthy"
    assert needs["redis"]["condition"] == "service_healthy"
    # switchd must start without FreeSWITCH: it reconnects to the event socket forever.
    assert needs["freeswitch"]["condition"] == "service_started"
    assert "depends_on" not in services["freeswitch"]


def test_compose_mounts_exist_and_freeswitch_gets_modules_and_every_fallback():
    services = _compose()["services"]
    mounted = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), f"{name}: {source}"
                mounted[(name, target)] = (COMPOSE.parent / source).resolve()
    fs = {target: path for (name, target), path in mounted.items() if name == "freeswitch"}
    assert fs["/etc/freeswitch/autoload_configs/modules.conf.xml"] == \
        CONF / "autoload_configs" / "modules.conf.xml"
    shipped = {path.resolve() for path in (CONF / "dialplan").glob("*.xml")}
    assert shipped <= set(fs.values()), shipped - set(fs.values())
    prom = {target for (name, target) in mounted if name == "prometheus"}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= prom


def _compose_available() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           timeout=30)
    if probe.returncode != 0:
        return f"`docker compose` is unavailable: {(probe.stderr or probe.stdout).strip().splitlines()[0]}"
    return None


def test_docker_compose_config_validates():
    reason = _compose_available()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
