"""Configuration: the YAML file, validated once, with every key at a default.

Each section is a dataclass whose field defaults are the documented defaults (config.example.yml shows the same).
Unknown keys and wrong types are reported all at once, each naming its key, before anything starts. Secrets (the
InfluxDB token, passwords) may come from the file, a file of their own or an environment variable, and are masked
whenever the configuration is printed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

DEFAULT_CONFIG_PATH = "/etc/rctmon.yml"
MASK = "********"


class ConfigError(Exception):
    """The configuration is invalid; the message lists every problem, one per line."""


DEFAULT_LOGGING: dict[str, Any] = {
    "version": 1,
    "formatters": {"simple": {"format": "%(asctime)s - %(name)s - %(levelname)s - %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "simple",
            "level": "INFO",
            "stream": "ext://sys.stdout",
        }
    },
    "root": {"level": "INFO", "handlers": ["console"]},
}


@dataclass
class Intervals:
    """Polling interval (seconds) of each catalog tier."""

    fast: float = 10.0
    medium: float = 60.0
    slow: float = 300.0
    static: float = 3600.0  # identity objects, and how often the inventory is checked again


@dataclass
class DeviceConfig:
    host: str = "127.0.0.1"
    port: int = 8899
    connect_timeout: float = 5.0  # seconds for the TCP connect
    request_timeout: float = 1.0  # the longest wait for an answer before re-asking; usually less (from measured RTT)
    max_in_flight: int = 16  # requests sent before their answers arrived; shrinks when the inverter drops some
    silence_timeout: float = 30.0  # seconds without any answer before the connection is considered dead
    intervals: Intervals = field(default_factory=Intervals)


@dataclass
class PrometheusConfig:
    enable: bool = True
    exposition: bool = False
    bind_port: int = 9831
    bind_address: str = "127.0.0.1"
    tls_cert_file: str = ""  # both set: serve HTTPS only
    tls_key_file: str = ""
    basic_auth_username: str = ""  # set: every request needs this user and the password
    basic_auth_password: str = ""
    basic_auth_password_file: str = ""


@dataclass
class InfluxDBConfig:
    enable: bool = False
    url: str = "http://localhost:8086"
    token: str = "your-token"  # InfluxDB 1.8: "username:password"
    token_file: str = ""  # read the token from this file instead; env RCTMON_INFLUXDB_TOKEN overrides both
    org: str = "rct"
    bucket: str = "rct-inverter"
    batch_size: int = 5000  # points per write request
    flush_interval: float = 1.0  # seconds between writes while points wait
    timeout: float = 10.0  # seconds for one write request
    spool_path: str = ""  # empty: $STATE_DIRECTORY/influxdb-spool.sqlite or ~/.local/state/rctmon/...
    spool_max_points: int = 2_000_000  # oldest points are dropped (and counted) beyond this


@dataclass
class MqttTlsConfig:
    enable: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = False  # skip certificate verification


@dataclass
class MqttConfig:
    enable: bool = False
    host: str = "localhost"
    port: int = 1883
    client_id: str = "rctmon"
    username: str = ""
    password: str = ""
    password_file: str = ""  # env RCTMON_MQTT_PASSWORD overrides both
    tls: MqttTlsConfig = field(default_factory=MqttTlsConfig)
    topic_prefix: str = ""  # empty: rctmon/<inverter name>
    retain: bool = True
    qos: int = 0
    discovery: bool = True
    discovery_prefix: str = "homeassistant"


@dataclass
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    influxdb: InfluxDBConfig = field(default_factory=InfluxDBConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    logging: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_LOGGING))
    #: Problems worth a warning that do not stop rctmon (not a configuration key).
    warnings: list[str] = field(default_factory=list, compare=False)


#: (dotted key, environment variable, file key): where each secret may come from besides the YAML.
SECRETS: tuple[tuple[str, str, str], ...] = (
    ("influxdb.token", "RCTMON_INFLUXDB_TOKEN", "influxdb.token_file"),
    ("mqtt.password", "RCTMON_MQTT_PASSWORD", "mqtt.password_file"),
    ("prometheus.basic_auth_password", "RCTMON_PROMETHEUS_PASSWORD", "prometheus.basic_auth_password_file"),
)
_SECRET_KEYS = {key for key, _, _ in SECRETS}
_DEFAULT_SECRETS = {"your-token", ""}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        type(value), type(value).__name__)


def _coerce(key: str, default: Any, value: Any, errors: list[str]) -> Any:
    """Return `value` if it has the type of `default` (ints pass as floats), else record an error."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, dict)
    if not ok:
        errors.append(f"{key}: expected {_type_name(default)}, got {value!r}")
        return default
    return value


def _load_section(cls: type, prefix: str, data: Any, errors: list[str]) -> Any:
    section = cls()
    if data is None:  # "sections may be empty"
        return section
    if not isinstance(data, dict):
        errors.append(f"{prefix}: expected a mapping of keys, got {data!r}")
        return section
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        dotted = f"{prefix}.{key}"
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            errors.append(f"{dotted}: unknown key" + (f" (did you mean {prefix}.{hint[0]}?)" if hint else ""))
            continue
        default = getattr(section, key)
        if dataclasses.is_dataclass(default):
            setattr(section, key, _load_section(type(default), dotted, value, errors))
        else:
            setattr(section, key, _coerce(dotted, default, value, errors))
    return section


def _check_values(config: Config, errors: list[str]) -> None:
    checks = (
        ("device.port", 1 <= config.device.port <= 65535, "must be a TCP port (1-65535)"),
        ("prometheus.bind_port", 1 <= config.prometheus.bind_port <= 65535, "must be a TCP port (1-65535)"),
        ("mqtt.port", 1 <= config.mqtt.port <= 65535, "must be a TCP port (1-65535)"),
        ("mqtt.qos", config.mqtt.qos in (0, 1, 2), "must be 0, 1 or 2"),
        ("device.max_in_flight", config.device.max_in_flight >= 1, "must be at least 1"),
        ("device.request_timeout", config.device.request_timeout > 0, "must be positive"),
        ("influxdb.batch_size", config.influxdb.batch_size >= 1, "must be at least 1"),
        ("influxdb.flush_interval", config.influxdb.flush_interval > 0, "must be positive"),
        ("influxdb.spool_max_points", config.influxdb.spool_max_points >= 1000, "must be at least 1000"),
        ("prometheus.tls_key_file", bool(config.prometheus.tls_cert_file) == bool(config.prometheus.tls_key_file),
         "tls_cert_file and tls_key_file must be set together"),
    )
    errors.extend(f"{key}: {why}" for key, ok, why in checks if not ok)
    files = (("prometheus.tls_cert_file", config.prometheus.tls_cert_file),
             ("prometheus.tls_key_file", config.prometheus.tls_key_file),
             ("mqtt.tls.ca_file", config.mqtt.tls.ca_file),
             ("mqtt.tls.cert_file", config.mqtt.tls.cert_file),
             ("mqtt.tls.key_file", config.mqtt.tls.key_file))
    errors.extend(f"{key}: no readable file at {path}" for key, path in files
                  if path and not os.access(path, os.R_OK))
    for name in ("fast", "medium", "slow", "static"):
        if getattr(config.device.intervals, name) <= 0:
            errors.append(f"device.intervals.{name}: must be positive")


def _get(config: Config, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set(config: Config, dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    obj: Any = config
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def _resolve_secrets(config: Config, environ: Mapping[str, str], errors: list[str]) -> None:
    for key, env, file_key in SECRETS:
        path = _get(config, file_key)
        if path:
            try:
                _set(config, key, Path(path).read_text(encoding="utf-8").strip())
            except OSError as exc:
                errors.append(f"{file_key}: cannot read {path}: {exc.strerror}")
        if environ.get(env):
            _set(config, key, environ[env])


def parse(data: Any, environ: Mapping[str, str] | None = None) -> Config:
    """Validate parsed YAML and return the effective configuration; raise ConfigError listing every problem."""
    errors: list[str] = []
    config = Config()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(data).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "warnings"}
    for name, value in data.items():
        if name not in sections:
            hint = difflib.get_close_matches(str(name), sections, n=1)
            errors.append(f"{name}: unknown section" + (f" (did you mean {hint[0]}?)" if hint else ""))
        elif name == "logging":
            if value is not None and not isinstance(value, dict):
                errors.append(f"logging: expected a mapping for logging.config.dictConfig, got {value!r}")
            elif value:
                config.logging = value
        else:
            setattr(config, name, _load_section(type(getattr(config, name)), name, value, errors))
    _resolve_secrets(config, os.environ if environ is None else environ, errors)
    _check_values(config, errors)
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return config


def load(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a YAML file; raise ConfigError with a clear message on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    config = parse(data, environ)
    config.warnings.extend(_permission_warnings(path, data))
    return config


def _permission_warnings(path: str, data: Any) -> list[str]:
    """Warn when a file that holds a secret can be read by users other than its owner and group."""
    holds_secret = any(
        isinstance(data, dict) and isinstance(data.get(key.split(".")[0]), dict)
        and data[key.split(".")[0]].get(key.split(".")[1]) not in (None, *_DEFAULT_SECRETS)
        for key in _SECRET_KEYS
    )
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return []
    if holds_secret and mode & stat.S_IROTH:
        return [f"{path} contains a secret and is readable by every user (mode {stat.S_IMODE(mode):o}); "
                f"run: chmod o-r {path}"]
    return []


def masked(config: Config) -> dict[str, Any]:
    """Return the configuration as plain data with every secret replaced by a mask."""
    data = dataclasses.asdict(config)
    data.pop("warnings", None)
    for key in _SECRET_KEYS:
        section, name = key.split(".")
        if data[section][name]:
            data[section][name] = MASK
    return data


def dump(config: Config) -> str:
    """Return the effective configuration as YAML, secrets masked."""
    return yaml.safe_dump(masked(config), sort_keys=False, default_flow_style=False)
