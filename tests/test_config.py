"""Config: defaults < TOML < env, validation naming the key, masking, docs in sync."""
from pathlib import Path

import pytest

from switchd.config import SETTINGS, ConfigError, load_config, mask_secret


def test_defaults_match_the_interface_contract():
    config = load_config(environ={})
    assert config["esl.host"] == "127.0.0.1" and config["esl.port"] == 8021
    assert config["esl.password"] == "ClueCon"
    assert config["http.host"] == "127.0.0.1" and config["http.port"] == 8088
    assert config["database.url"] is None and config["redis.url"] is None
    assert any("ClueCon" in note for note in config.warnings())


def test_file_then_environment_precedence(tmp_path):
    path = tmp_path / "switchd.toml"
    path.write_text('[esl]\nport = 9000\nhost = "10.0.0.5"\n[http]\nport = 9090\n')
    config = load_config(path, environ={"SWITCHD_ESL_PORT": "9100"})
    assert config["esl.port"] == 9100 and config.sources["esl.port"] == "SWITCHD_ESL_PORT"
    assert config["esl.host"] == "10.0.0.5" and config.sources["esl.host"] == str(path)
    assert config["http.port"] == 9090


def test_switchd_config_variable_names_the_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('data_dir = "/srv/x"\n')
    assert load_config(environ={"SWITCHD_CONFIG": str(path)})["data_dir"] == "/srv/x"


@pytest.mark.parametrize("environ, fragment", [
    ({"SWITCHD_ESL_PORT": "eighty"}, "SWITCHD_ESL_PORT: esl.port"),
    ({"SWITCHD_HTTP_PORT": "70000"}, "http.port"),
    ({"SWITCHD_REDIS_ON_FAILURE": "maybe"}, "redis.on_failure"),
    ({"SWITCHD_DATABASE_URL": "mysql://x"}, "database.url"),
    ({"SWITCHD_ESL_PASWORD": "typo"}, "SWITCHD_ESL_PASWORD: unknown setting"),
    ({"SWITCHD_ESL_HEARTBEAT_TIMEOUT": "10"}, "heartbeat_timeout"),
    ({"SWITCHD_ROUTING_MAX_ROUTES": "9"}, "routing.max_routes"),
    ({"SWITCHD_HTTP_READ_TIMEOUT": "0"}, "http.read_timeout"),
    ({"SWITCHD_HTTP_IDLE_TIMEOUT": "soon"}, "SWITCHD_HTTP_IDLE_TIMEOUT: http.idle_timeout"),
    ({"SWITCHD_HTTP_MAX_CONNECTIONS": "0"}, "http.max_connections"),
])
def test_bad_environment_values_name_the_key(environ, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        load_config(environ=environ)


def test_bad_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[esl]\nprot = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(path) in str(info.value) and "esl.prot" in str(info.value)
    path.write_text("[esl\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_config(path, environ={})
    path.write_text('[esl]\nport = "x"\n')
    with pytest.raises(ConfigError, match="esl.port"):
        load_config(path, environ={})


def test_secrets_are_masked():
    config = load_config(environ={"SWITCHD_DATABASE_URL": "postgresql://u:hunter2@db/x",
                                  "SWITCHD_ESL_PASSWORD": "s3cret"})
    masked = config.masked()
    assert "hunter2" not in str(masked) and "s3cret" not in str(masked)
    assert masked["database.url"] == "postgresql://u:***@db/x"
    assert mask_secret("redis://cache:6379/0") == "redis://cache:6379/0"


def test_every_setting_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.env}`" in doc, setting.env


def exposed_metric_names() -> set[str]:
    """Every family the registry can expose: declared metrics, the scrape-time LiveState
    families (described even when empty) and the process/platform/GC collectors."""
    from switchd import metrics
    names = {family.name for family in metrics.REGISTRY.collect()}
    names |= {family.name for family in metrics.LIVE.describe()}
    return names


def test_every_metric_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text()
    names = exposed_metric_names()
    assert {"switchd_build", "switchd_carrier_up", "process_cpu_seconds", "python_info"} <= names
    for name in names:
        assert f"`{name}" in doc, name
