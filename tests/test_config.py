import datetime
import importlib
import os
import re
import zoneinfo

import pytest
import yaml

from rctmon import config as cfg
from rctmon import safeyaml
from rctmon.durations import format_duration, parse_duration


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
    # libyaml and PyYAML's own parser word the problem differently; both name the file, the line and the context
    assert str(err.value).startswith(f"{path}: line 2, column 1: not valid YAML: while parsing a flow sequence; ")


def test_value_ranges_are_checked():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"port": 70000}, "mqtt": {"qos": 3}}, environ={})
    assert "device.port: must be a TCP port" in str(err.value)
    assert "mqtt.qos: must be 0, 1 or 2" in str(err.value)


def test_tls_files_are_the_preflights_business_not_the_parsers(tmp_path):
    """Whether a file exists is a fact of the machine, checked by rctmon.preflight (tests/test_preflight.py)."""
    config = cfg.parse({"prometheus": {"tls_cert_file": str(tmp_path / "cert.pem"),
                                       "tls_key_file": str(tmp_path / "key.pem")}}, environ={})
    assert config.prometheus.tls_cert_file == str(tmp_path / "cert.pem")


def test_tls_cert_and_key_must_be_set_together():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"prometheus": {"tls_cert_file": "/x.pem"}}, environ={})
    assert str(err.value) == "prometheus.tls_key_file: tls_cert_file and tls_key_file must be set together"
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"mqtt": {"tls": {"key_file": "/k.pem"}}}, environ={})
    assert str(err.value).startswith("mqtt.tls.key_file: set without mqtt.tls.cert_file")


# --- issue 11: every number in range, named when not --------------------------------------------------------------

def nested(dotted: str, value: object) -> dict:
    """Return {'a': {'b': value}} for 'a.b'."""
    data: dict = {}
    node = data
    *path, last = dotted.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value
    return data


NUMBERS = {key: value for key, value in cfg.walk(cfg.Config())
           if isinstance(value, (int, float)) and not isinstance(value, bool)}
SECONDS = sorted(key for key, rule in cfg.RANGES.items() if "seconds" in rule.what)


def test_every_number_has_a_range_holding_its_default():
    assert set(NUMBERS) == set(cfg.RANGES), "a number without a range (or a range without a number)"
    assert [key for key, value in NUMBERS.items() if not cfg.RANGES[key].allows(value)] == []


def test_nan_interval_is_refused_naming_the_key():
    """Regression: `intervals.fast: .nan` passed and spun the collector at 99 % CPU."""
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(yaml.safe_load("device:\n  intervals:\n    fast: .nan\n"), environ={})
    assert str(err.value) == "device.intervals.fast: must be a finite number of seconds >= 0.01 and <= 604800, got nan"


@pytest.mark.parametrize("key", SECONDS)
@pytest.mark.parametrize("written, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), ("0", "0.0"),
                                            ("-1", "-1.0"), ("1.0e+400", "inf"), ("1" + "0" * 60, "1e+60")])
def test_times_must_be_finite_and_positive(key, written, shown):
    """Regression: zero, negative and infinite timeouts and intervals passed; the daemon never connected or wrote."""
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(nested(key, yaml.safe_load(written)), environ={})
    assert err.value.problems == [f"{key}: must be {cfg.RANGES[key].what}, got {shown}"]


def test_an_integer_beyond_every_float_is_a_range_error_not_an_overflow():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"connect_timeout": 10 ** 400, "port": 10 ** 30}}, environ={})
    assert err.value.problems == ["device.port: must be a TCP port (1-65535), got 1000000000000000000000000000000",
                                  "device.connect_timeout: must be a finite number of seconds >= 0.01 and <= 600, "
                                  "got inf"]


@pytest.mark.parametrize("key, value", [("mqtt.qos", -1), ("device.max_in_flight", 0), ("device.max_in_flight", 10**6),
                                        ("influxdb.batch_size", 0), ("influxdb.spool_max_points", 2**63),
                                        ("prometheus.bind_port", 0), ("mqtt.port", 65536)])
def test_integers_have_sane_bounds(key, value):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(nested(key, value), environ={})
    assert err.value.problems == [f"{key}: must be {cfg.RANGES[key].what}, got {value}"]


# --- strings ---------------------------------------------------------------------------------------------------------

STRINGS = sorted(key for key, value in cfg.walk(cfg.Config()) if isinstance(value, str))


@pytest.mark.parametrize("key", STRINGS)
@pytest.mark.parametrize("char", ["\0", "\n", "\x1b", "\x7f", "\x85"])
def test_control_characters_are_refused_in_every_string_naming_the_key(key, char):
    """Regression: NUL in device.host passed check-config and crash-looped the collector."""
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(nested(key, f"s3cr{char}t"), environ={})
    assert err.value.problems[0] == f"{key}: must not contain control characters (U+{ord(char):04X} at character 5)"
    assert "s3cr" not in str(err.value)  # the value may be a secret: never echoed


def test_a_secret_of_the_wrong_type_is_not_echoed():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"influxdb": {"token": 123456789}}, environ={})
    assert str(err.value) == "influxdb.token: expected a string, got a value of another type"


@pytest.mark.parametrize("key, value, problem", [
    ("device.host", " ", "must not be empty"),
    ("mqtt.host", "", "must not be empty"),
    ("influxdb.url", "localhost:8086", "must be an http:// or https:// URL such as http://localhost:8086, "
                                       "got 'localhost:8086'"),
    ("influxdb.url", "http://influx:99999", "must be an http:// or https:// URL such as http://localhost:8086, "
                                            "got 'http://influx:99999'"),
    ("influxdb.url", "ftp://influx", "must be an http:// or https:// URL such as http://localhost:8086, "
                                     "got 'ftp://influx'"),
    ("mqtt.topic_prefix", "home/+/pv", "must not contain the MQTT wildcards + or #, got 'home/+/pv'"),
    ("mqtt.discovery_prefix", "", "must not be empty"),
])
def test_strings_that_cannot_work_are_refused(key, value, problem):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse(nested(key, value), environ={})
    assert err.value.problems == [f"{key}: {problem}"]


def test_a_long_unknown_key_is_shortened_in_the_message():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"x" * 100_000: 1}}, environ={})
    assert len(str(err.value)) < 200 and str(err.value).startswith("device.xxx")


# --- device.timezone ------------------------------------------------------------------------------------------------

def test_timezone_defaults_to_the_host_and_takes_iana_names():
    assert cfg.Config().device.timezone == ""
    config = cfg.parse({"device": {"timezone": "Europe/Berlin"}}, environ={})
    zone = cfg.device_timezone(config.device)
    assert zone.utcoffset(datetime.datetime(2026, 1, 15)) == datetime.timedelta(hours=1)
    assert zone.utcoffset(datetime.datetime(2026, 7, 15)) == datetime.timedelta(hours=2)


def test_a_timezone_typo_is_refused_naming_the_key_with_a_suggestion():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"timezone": "Europe/Berlni"}}, environ={})
    assert str(err.value) == ("device.timezone: unknown time zone 'Europe/Berlni'; expected an IANA name such as "
                              "Europe/Berlin (did you mean Europe/Berlin?)")


@pytest.mark.parametrize("name", ["Europe", "../../etc/passwd", "/etc/localtime", "Europe/Berlin/", "Mars/Olympus"])
def test_what_is_no_zone_is_refused_naming_the_key(name):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"device": {"timezone": name}}, environ={})
    assert str(err.value).startswith(f"device.timezone: unknown time zone {name!r}; expected an IANA name such as "
                                     f"Europe/Berlin")


def _zone_file(name: str) -> str:
    for base in zoneinfo.TZPATH:
        if os.path.isfile(os.path.join(base, name)):
            return os.path.join(base, name)
    import tzdata  # the package zoneinfo falls back to

    return os.path.join(os.path.dirname(tzdata.__file__), "zoneinfo", name)


def test_host_timezone_keeps_dst_rules(tmp_path):
    summer, winter = datetime.datetime(2026, 7, 1), datetime.datetime(2026, 1, 1)
    assert cfg.host_timezone({"TZ": "America/New_York"}).utcoffset(summer) == datetime.timedelta(hours=-4)
    assert cfg.host_timezone({"TZ": ":" + _zone_file("Europe/Berlin")}).utcoffset(summer) == datetime.timedelta(hours=2)
    link = tmp_path / "localtime"
    link.symlink_to(_zone_file("Europe/Berlin"))
    zone = cfg.host_timezone({}, localtime=str(link))
    assert str(zone) == "Europe/Berlin" and zone.utcoffset(winter) == datetime.timedelta(hours=1)
    copy = tmp_path / "copied"
    copy.write_bytes(open(_zone_file("Australia/Sydney"), "rb").read())
    assert cfg.host_timezone({}, localtime=str(copy)).utcoffset(winter) == datetime.timedelta(hours=11)
    assert cfg.host_timezone({}, localtime=str(tmp_path / "none")) is datetime.timezone.utc


# --- history and durations ------------------------------------------------------------------------------------------

def test_history_defaults_and_durations():
    assert (cfg.Config().history.backfill, cfg.Config().history.first_start, cfg.Config().history.max_gap) == (
        True, 86400.0, 604800.0)
    config = cfg.parse(yaml.safe_load("history:\n  backfill: false\n  first_start: 36h\n  max_gap: 14d\n"),
                       environ={})
    assert (config.history.backfill, config.history.first_start, config.history.max_gap) == (False, 129600.0,
                                                                                             1209600.0)
    assert cfg.parse({"history": {"first_start": 90}}, environ={}).history.first_start == 90.0


@pytest.mark.parametrize("value, problem", [
    ("soon", "expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, got 'soon'"),
    ("-5h", "expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, got '-5h'"),
    ("5x", "expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, got '5x'"),
    (True, "expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, got True"),
    ([1], "expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, got [1]"),
    (float("nan"), "expected a finite duration >= 0, got nan"),
    (-1, "expected a finite duration >= 0, got -1"),
    ("400d", "must be a duration >= 0s and <= 366d, got 400d"),
])
def test_duration_nonsense_is_refused_naming_the_key(value, problem):
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"history": {"first_start": value}}, environ={})
    assert err.value.problems == [f"history.first_start: {problem}"]


def test_max_gap_must_be_positive():
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"history": {"max_gap": "0s"}}, environ={})
    assert err.value.problems == ["history.max_gap: must be a duration > 0s and <= 366d, got 0s"]


@pytest.mark.parametrize("text, seconds", [("36h", 129600.0), ("14d", 1209600.0), ("90m", 5400.0), ("45s", 45.0),
                                           ("2w", 1209600.0), ("1.5h", 5400.0), (" 10 ", 10.0), (3600, 3600.0),
                                           (0.5, 0.5), ("0", 0.0)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1e3", "1,5h", "1 2h", "1hh", "-1", "nan", "inf", "1" * 41, None, b"1h"])
def test_parse_duration_refuses_nonsense(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (86400.0, 604800.0, 5400.0, 45.0, 0.5, 0.0)] == ["1d", "7d", "90m", "45s",
                                                                                        "0.5s", "0s"]


# --- the file: bounded, UTF-8, no aliases, shallow ------------------------------------------------------------------

@pytest.fixture(params=["libyaml", "python"])
def yaml_parser(request, monkeypatch):
    """Run a test with PyYAML's C parser and again with its pure-Python one (machines without libyaml)."""
    if request.param == "python":
        monkeypatch.delattr(yaml, "CSafeLoader")
    importlib.reload(safeyaml)
    assert safeyaml._BaseLoader.__name__ == ("CSafeLoader" if request.param == "libyaml" else "SafeLoader")
    yield request.param
    monkeypatch.undo()
    importlib.reload(safeyaml)


ALIAS_BOMB = "".join(f"{n}: &{n} [" + ", ".join([f"*{p}" if p else "lol"] * 9) + "]\n"
                     for p, n in zip([""] + list("abcdefgh"), "abcdefghi")) + "device: *i\n"


def write(tmp_path, content: str | bytes) -> str:
    path = tmp_path / "rctmon.yml"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return str(path)


@pytest.mark.timeout(10)
def test_alias_bomb_is_refused_at_once(tmp_path, yaml_parser):
    """Regression: a YAML alias bomb made check-config and the daemon (also on SIGHUP) grow by 35 MB/s."""
    path = write(tmp_path, ALIAS_BOMB)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert str(err.value) == (f"{path}: line 1, column 4: anchors and aliases (&name, *name) are not allowed in "
                              f"rctmon's configuration; write each value out")


def test_an_anchor_without_alias_is_refused_too(tmp_path, yaml_parser):
    with pytest.raises(cfg.ConfigError, match="line 2, column 9: anchors and aliases"):
        cfg.load(write(tmp_path, "device:\n  host: &h 192.0.2.1\n"))


@pytest.mark.timeout(10)
def test_a_file_over_one_megabyte_is_refused(tmp_path):
    path = write(tmp_path, "# padding\n" * 200_000)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert str(err.value) == f"{path}: larger than 1024 kB; this is not a configuration file"


def test_non_utf8_is_refused_naming_the_file_and_line(tmp_path):
    """Regression: a Latin-1 file ended in a UnicodeDecodeError traceback."""
    path = write(tmp_path, "device:\n  host: m\xfcller.local\n".encode("latin-1"))
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert str(err.value) == f"{path}: line 2: not UTF-8 text (byte 0xfc); save the file as UTF-8"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("shape", ["flow", "block"])
def test_absurd_nesting_is_refused_before_it_exhausts_the_stack(tmp_path, yaml_parser, shape):
    """Regression: 10,000 nested brackets ended in a RecursionError traceback."""
    if shape == "flow":
        text = "device: " + "[" * 10_000 + "]" * 10_000 + "\n"
    else:
        text = "".join(" " * depth + f"k{depth}:\n" for depth in range(400))
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(write(tmp_path, text))
    assert re.search(r"line \d+, column \d+: (nested more than 32 levels deep|"
                     r"not valid YAML: while increasing flow level; exceeded maximum nesting depth)$", str(err.value))


@pytest.mark.timeout(10)
def test_too_many_values_are_refused(tmp_path, yaml_parser):
    path = write(tmp_path, "logging: [" + ", ".join(["1"] * 20_000) + "]\n")
    with pytest.raises(cfg.ConfigError, match="more than 10000 values; this is not a configuration file"):
        cfg.load(path)


@pytest.mark.parametrize("text, problem", [
    ("device:\n  port: 1" + "0" * 5000 + "\n", "line 2, column 9: an integer longer than 64 characters"),
    ("device:\n  connect_timeout: 1." + "0" * 100 + "\n", "line 2, column 20: a number longer than 64 characters"),
    ("device:\n  host: 2001-13-45\n", "line 2, column 9: not valid YAML: cannot read this value: month must be in "
                                      "1..12"),
    ("device:\n  host: a\x01b\n", "line 2: character #x0001 is not allowed in a YAML file; remove it"),
    ("a: 1\n---\nb: 2\n", "line 2, column 1: not valid YAML: expected a single document in the stream; but found "
                          "another document"),
])
def test_values_the_constructors_choke_on_are_one_line(tmp_path, yaml_parser, text, problem):
    path = write(tmp_path, text)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert str(err.value) == f"{path}: {problem}"


def test_a_byte_order_mark_is_fine(tmp_path, yaml_parser):
    assert cfg.load(write(tmp_path, "\ufeffdevice:\n  host: 192.0.2.9\n")).device.host == "192.0.2.9"


@pytest.mark.parametrize("content", ["", "  \n\n", "# all commented out\n#device:\n", "---\n", "~\n"])
def test_an_empty_file_means_defaults_at_start_and_is_refused_on_reload(tmp_path, content):
    """A file being rewritten during SIGHUP reads as empty: keep the old configuration rather than every default."""
    path = write(tmp_path, content)
    assert cfg.load(path) == cfg.Config()
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, refuse_empty=True)
    assert str(err.value) == f"{path}: the file is empty (or holds only comments); keeping the configuration in use"
    assert cfg.load(write(tmp_path, "device:\n  host: 192.0.2.3\n"), refuse_empty=True).device.host == "192.0.2.3"


def test_parse_errors_name_the_file_with_one_problem_per_line(tmp_path):
    path = write(tmp_path, "device:\n  hots: x\n  port: 0\n")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path)
    assert str(err.value) == (f"{path}: 2 problems:\n  device.hots: unknown key (did you mean device.host?)\n"
                              f"  device.port: must be a TCP port (1-65535), got 0")


# --- secret files ---------------------------------------------------------------------------------------------------

def test_secret_file_gives_its_first_line(tmp_path):
    token = tmp_path / "token"
    token.write_text("\n  the-token  \nsecond line\n")
    assert cfg.parse({"influxdb": {"token_file": str(token)}}, environ={}).influxdb.token == "the-token"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("make, problem", [
    (lambda d: "/dev/zero", "/dev/zero is larger than 64 kB; not a secret file"),
    (lambda d: (d / "t").write_bytes(b"\xff\xfe") and str(d / "t"), "{path} is not UTF-8 text"),
    (lambda d: str(d), "cannot read {path}: Is a directory"),
])
def test_odd_secret_files_are_refused_naming_the_key(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(cfg.ConfigError) as err:
        cfg.parse({"mqtt": {"password_file": path}}, environ={})
    assert err.value.problems == [f"mqtt.password_file: {problem.format(path=path)}"]
