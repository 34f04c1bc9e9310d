"""The documentation names only what exists: settings (switchd/config.py), metrics
(switchd/metrics.py and its collectors), CLI commands and their options (switchd/cli.py).
Operator pages point at nothing outside the repository and tell no development history."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from switchd.cli import build_parser
from switchd.config import SETTINGS
from test_config import exposed_metric_names

ROOT = Path(__file__).parents[1]
PAGES = sorted(ROOT.glob("docs/*.md")) + [ROOT / "README.md", ROOT / "freeswitch-conf" / "README.md"]
# Pages an operator reads to install, configure, run and watch switchd. internals.md (the
# contract between modules) and benchmarks.md (a record of measurements) are for developers.
OPERATOR_PAGES = [p for p in PAGES if p.name not in ("internals.md", "benchmarks.md")]
# Files shipped for operators to copy or run, whose comments they read.
OPERATOR_FILES = ([p for p in (ROOT / "freeswitch-conf").rglob("*") if p.is_file()]
                  + [p for p in (ROOT / "docker").rglob("*") if p.is_file()]
                  + [ROOT / "systemd" / "switchd.service", ROOT / "examples" / "provision.toml"])
METRIC_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_info")


def _code_text() -> str:
    return "\n".join(p.read_text() for d in ("switchd", "dialplan", "tests")
                     for p in (ROOT / d).rglob("*.py"))


def _spans(text: str) -> list[str]:
    """Backticked spans, fenced blocks included."""
    text = re.sub(r"```[^\n]*\n(.*?)```", lambda m: "`" + m.group(1).replace("`", "") + "`",
                  text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", text)


def _page_ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


@pytest.mark.parametrize("page", PAGES, ids=_page_ids(PAGES))
def test_metric_names_in_docs_exist(page):
    """A backticked `switchd_…` name is a metric switchd exposes, or a name the code uses
    literally (a channel variable such as switchd_tenant, a NOTIFY channel)."""
    exposed = exposed_metric_names()
    code = _code_text()
    wrong = set()
    for span in _spans(page.read_text()):
        for name in re.findall(r"\bswitchd_[a-z0-9_]*[a-z0-9]", span):
            bases = {name} | {name[: -len(s)] for s in METRIC_SUFFIXES if name.endswith(s)}
            if bases & exposed or re.search(rf"\b{name}\b", code):
                continue
            wrong.add(name)
    assert not wrong, f"{page.name}: no such metric or name in the code: {sorted(wrong)}"


@pytest.mark.parametrize("page", PAGES, ids=_page_ids(PAGES))
def test_environment_variables_in_docs_exist(page):
    """Every SWITCHD_… variable is a setting's, or one the code reads (SWITCHD_CONFIG,
    SWITCHD_SQL_DIR, the tests' SWITCHD_TEST_…)."""
    settings = {s.env for s in SETTINGS}
    code = _code_text()
    wrong = {name for name in re.findall(r"\bSWITCHD_[A-Z0-9_]*[A-Z0-9]", page.read_text())
             if name not in settings and f'"{name}"' not in code and f"'{name}'" not in code}
    assert not wrong, f"{page.name}: unknown variables {sorted(wrong)}"


@pytest.mark.parametrize("page", PAGES, ids=_page_ids(PAGES))
def test_settings_in_docs_exist(page):
    """A backticked `section.key` whose section is a config section is a setting."""
    dotted = {s.dotted for s in SETTINGS}
    sections = {s.section for s in SETTINGS if s.section}
    wrong = set()
    for span in _spans(page.read_text()):
        for section, key in re.findall(r"(?<![\w./-])([a-z_]+)\.([a-z_]+)\b(?![./(-])", span):
            if section in sections and f"{section}.{key}" not in dotted:
                wrong.add(f"{section}.{key}")
    assert not wrong, f"{page.name}: unknown settings {sorted(wrong)}"


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def check_command(words: list[str]) -> str | None:
    """None when `switchd WORDS…` names a real command and real options; else what is wrong."""
    parser = build_parser()
    allowed = _options(parser)
    words = [w for w in words if w]
    while words and words[0].startswith("-"):          # switchd --config FILE run
        flag = words.pop(0).split("=")[0]
        if flag not in allowed:
            return f"no option {flag}"
        if words and not words[0].startswith("-") and flag == "--config":
            words.pop(0)
    command = parser
    while words:
        choices = _subcommands(command)
        if not choices:
            break
        word = words[0]
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break                                        # COMMAND, ACTION, FILE: a placeholder
        if word not in choices:
            return f"no command {word!r}"
        command = choices[word]
        allowed |= _options(command)
        words.pop(0)
    for word in words:
        flag = word.strip("[]").split("=")[0]
        if flag.startswith("--") and flag not in allowed:
            return f"no option {flag}"
    return None


def test_the_command_checker_tells_real_from_made_up():
    assert check_command(["rates", "import", "FILE.csv", "--carrier", "NAME"]) is None
    assert check_command(["report", "[--by", "tenant|carrier|day]", "[--json]"]) is None
    assert check_command(["COMMAND", "--help"]) is None
    assert check_command(["reload"]) == "no command 'reload'"
    assert check_command(["rates", "purge"]) == "no command 'purge'"
    assert check_command(["demo", "--calls", "5", "--fast"]) == "no option --fast"


@pytest.mark.parametrize("page", PAGES, ids=_page_ids(PAGES))
def test_commands_in_docs_exist(page):
    wrong = []
    for span in _spans(page.read_text()):
        for line in span.splitlines():
            for match in re.finditer(r"(?:^|[\s;&|(])switchd((?:\s+[^\s;&|`)]+)*)", line):
                before = line[:match.start() + 1].split()
                if before and before[-1].startswith("-"):   # `sudo -u switchd …`: a user name
                    continue
                words = match.group(1).split()
                if words:
                    problem = check_command(words)
                    if problem:
                        wrong.append(f"`switchd {match.group(1).strip()}`: {problem}")
    assert not wrong, f"{page.name}: {wrong}"


OUTSIDE = re.compile(r"\.\./shared|DESIGN(\.md)?\s*§|DESIGN\.md|STYLE\.md")


@pytest.mark.parametrize("path", PAGES + OPERATOR_FILES, ids=_page_ids(PAGES + OPERATOR_FILES))
def test_no_reference_to_design_files_outside_the_repository(path):
    found = [line.strip() for line in path.read_text(errors="replace").splitlines()
             if OUTSIDE.search(line)]
    assert not found, found


HISTORY = re.compile(r"\bused to\b|\bwe found\b|\bearlier (published|figures|versions?)\b|"
                     r"^\s*-?\s*Earlier:|\bbefore the fast path\b|\bnot a setting yet\b|"
                     r"\bsession notes?\b|\bwe fixed\b|\b(this|it) was fixed\b",
                     re.I | re.M)


@pytest.mark.parametrize("page", OPERATOR_PAGES, ids=_page_ids(OPERATOR_PAGES))
def test_operator_pages_tell_no_development_history(page):
    found = [m.group(0) for m in HISTORY.finditer(page.read_text())]
    assert not found, f"{page.name}: {found}"


def test_cli_help_says_what_sighup_does():
    """SIGHUP reloads business data and rate decks from PostgreSQL (Daemon.reload), not the
    configuration file."""
    import inspect

    from switchd.daemon import Daemon
    reload_source = inspect.getsource(Daemon.reload)
    assert "load_config" not in reload_source
    run_help = _subcommands(build_parser())["run"].description
    sighup = " ".join(run_help.split("SIGHUP", 1)[1].split())
    assert "rate decks" in sighup and not re.match(r"\s*reloads (the )?config", sighup), sighup
    operations = (ROOT / "docs" / "operations.md").read_text()
    sighup = next(line for line in operations.splitlines() if line.startswith("| SIGHUP"))
    assert "rate decks" in sighup and "not re-read" in sighup
