import os

import pytest
import yaml

from rctmon import config as cfg


def test_empty_file_gives_every_default(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("device:\nprometheus:\ninfluxdb:\nlogging:\n")
    config = cfg.load(str(path))
    assert config.device.host == "127.0.0.1"
    assert config.device.port == 8899
    assert config.prometheus.enable is True and config.prometheus.exposition is False
    assert config.prometheus.bind_port == 9831 and config.prometheus.bind_address == "127.0.0.1"
    assert config.influxdb.enable is False and config.influxdb.bucket == "rct-inverter"
    assert config.logging["root"]["level"] == "INFO"


def test_example_config_is_the_defaults():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, "config.example.yml")) as f:
        data = yaml.safe_load(f)
    assert cfg.parse(data, environ={}) == cfg.Config()
    assert cfg.masked(cfg.parse(data, environ={})).keys() == cfg.masked(cfg.Config()).keys()


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"hots": "x"}}, environ={})
    assert "device.hots: unknown key (did you mean device.host?)" in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"port": "8899"}, "prometheus": {"enable": "yes"}, "influxd": {}}, environ={})
    text = str(err.value)
    assert "device.port: expected an integer, got '8899'" in text
    assert "prometheus.enable: expected a boolean, got 'yes'" in text
    assert "influxd: unknown section (did you mean influxdb?)" in text


def test_nested_section_keys_are_checked():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"intervals": {"fats": 5}}}, environ={})
    assert "device.intervals.fats: unknown key (did you mean device.intervals.fast?)" in str(err.value)


def test_integers_are_accepted_where_numbers_are_expected():
    config = cfg.parse({"device": {"request_timeout": 2}}, environ={})
    assert config.device.request_timeout == 2.0 and isinstance(config.device.request_timeout, float)


def test_token_from_environment_and_file_and_masked(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    config = cfg.parse({"influxdb": {"token_file": str(token_file)}}, environ={})
    assert config.influxdb.token == "from-file"
    config = cfg.parse({"influxdb": {"token": "in-yaml"}}, environ={"RCTMON_INFLUXDB_TOKEN": "from-env"})
    assert config.influxdb.token == "from-env"
    dumped = cfg.dump(config)
    assert "from-env" not in dumped and cfg.MASK in dumped


def test_unreadable_token_file_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"influxdb": {"token_file": str(tmp_path / "missing")}}, environ={})
    assert "influxdb.token_file: cannot read" in str(err.value)


def test_world_readable_file_with_token_warns(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("influxdb:\n  token: s3cret\n")
    os.chmod(path, 0o644)
    assert any("readable by every user" in w for w in cfg.load(str(path)).warnings)
    os.chmod(path, 0o640)
    assert cfg.load(str(path)).warnings == []


def test_invalid_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("device: [unclosed\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(str(path))
    assert "is not valid YAML" in str(err.value)


def test_value_ranges_are_checked():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"port": 70000}, "mqtt": {"qos": 3}}, environ={})
    assert "device.port: must be a TCP port" in str(err.value)
    assert "mqtt.qos: must be 0, 1 or 2" in str(err.value)


def test_tls_files_must_exist(tmp_path):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"prometheus": {"tls_cert_file": str(tmp_path / "cert.pem"),
                                  "tls_key_file": str(tmp_path / "key.pem")}}, environ={})
    assert f"prometheus.tls_cert_file: no readable file at {tmp_path / 'cert.pem'}" in str(err.value)
