"""The CLI teaches: every command has --help, bad config exits 3 with the key named."""
import subprocess
import sys

import pytest

from switchd.cli import build_parser, main

COMMANDS = [["run"], ["demo"], ["migrate"], ["provision"], ["rates"], ["rates", "import"], ["originate"],
            ["calls"], ["report"], ["check-config"], ["db"], ["db", "status"], ["db", "stop"],
            ["cdr"], ["cdr", "import"]]


@pytest.mark.parametrize("words", COMMANDS)
def test_every_command_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(words + ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: switchd" in out and len(out.splitlines()) >= 4


def test_top_level_help_names_environment_and_commands(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for word in ("SWITCHD_DATABASE_URL", "demo", "rates", "check-config", "exit status"):
        assert word in out


def test_configuration_error_exits_3_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("SWITCHD_ESL_PORT", "not-a-port")
    assert main(["check-config"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "esl.port" in err[0]


def test_check_config_masks_the_password(monkeypatch, capsys):
    monkeypatch.setenv("SWITCHD_ESL_PASSWORD", "verysecret")
    assert main(["check-config"]) == 0
    out = capsys.readouterr().out
    assert "verysecret" not in out and "esl.password" in out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "switchd.cli", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "switchd demo" in result.stdout
