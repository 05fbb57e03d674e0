"""Configuration: the YAML file, validated once, with every key at a default.

Each section is a dataclass whose field defaults are the documented defaults (config.example.yml shows the same).
Unknown keys, wrong types, numbers out of range and strings with control characters are reported all at once,
each naming its key, before anything starts. The file itself is read with bounded cost (`rctmon.safeyaml`).
Secrets (the InfluxDB token, passwords) may come from the file, a file of their own or an environment variable,
and are masked whenever the configuration is printed.

Several daemons may run on one host, one per inverter. Each stands for an *instance*, named after its file
(`/etc/rctmon/garage.yml` -> `garage`, see `rctmon.statedir`), and the defaults that would make two of them collide
are derived from it (`DERIVED`): the MQTT client id and the spool's place. Everything else that must differ (the
device, the metrics port) is the file's to say; `rctmon.preflight` refuses what still collides.

Whether the environment can run what the file asks for (modules, certificates, the spool directory) is a separate
question, answered by `rctmon.preflight`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import difflib
import math
import os
import stat
import unicodedata
import zoneinfo
from dataclasses import dataclass, field
from typing import Any, Callable
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit

import yaml

from rctmon import safeyaml, statedir
from rctmon.durations import format_duration, parse_duration

DEFAULT_CONFIG_PATH = "/etc/rctmon.yml"
MASK = "********"
MAX_SECRET_FILE_BYTES = 64 * 1024  # a token is a few hundred bytes; /dev/zero as a secret file must not hang us


class ConfigError(Exception):
    """The configuration is invalid or cannot be read; `problems` holds one line per problem, each naming its key.

    `source` (the file, when known) leads the message: one problem reads as one line, several as a list.
    """

    def __init__(self, problems: str | list[str], source: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}" if self.source else self.problems[0]
        return (f"{self.source or 'invalid configuration'}: {len(self.problems)} problems:\n  "
                + "\n  ".join(self.problems))


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

#: Field metadata of a key whose value is a duration (`36h`, `14d`, `90m`, `45s` or seconds), kept in seconds.
DURATION = {"duration": True}


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
    #: IANA zone of the inverter's wall clock (it sends local time as if it were UTC); empty: the host's zone.
    timezone: str = ""
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
    spool_path: str = ""  # empty: influxdb-spool.sqlite in the instance's state directory (rctmon.statedir)
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
    client_id: str = "rctmon"  # left at this: rctmon-<instance> for any instance but `rctmon` (see DERIVED)
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
class HistoryConfig:
    """Filling gaps in the record from the inverter's own logger."""

    backfill: bool = True
    first_start: float = field(default=86400.0, metadata=DURATION)  # how far back to fill when there is no record
    max_gap: float = field(default=604800.0, metadata=DURATION)  # never ask for more than this at once


@dataclass
class Config:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    influxdb: InfluxDBConfig = field(default_factory=InfluxDBConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    logging: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_LOGGING))
    #: Problems worth a warning that do not stop rctmon (not a configuration key).
    warnings: list[str] = field(default_factory=list, compare=False)
    #: Which of several daemons on this host this is: the configuration file's name (not a configuration key).
    instance: str = statedir.DEFAULT_INSTANCE


#: Fields of Config that are no configuration keys: never read from the file, never printed as part of it.
NOT_KEYS = frozenset({"warnings", "instance"})


#: (dotted key, environment variable, file key): where each secret may come from besides the YAML.
SECRETS: tuple[tuple[str, str, str], ...] = (
    ("influxdb.token", "RCTMON_INFLUXDB_TOKEN", "influxdb.token_file"),
    ("mqtt.password", "RCTMON_MQTT_PASSWORD", "mqtt.password_file"),
    ("prometheus.basic_auth_password", "RCTMON_PROMETHEUS_PASSWORD", "prometheus.basic_auth_password_file"),
)
_SECRET_KEYS = {key for key, _, _ in SECRETS}
_DEFAULT_SECRETS = {"your-token", ""}


# --- the allowed values ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Range:
    """The values a number may take; `what` says them in the error message (`must be <what>, got <value>`)."""

    low: float
    high: float
    what: str
    low_open: bool = False  # `low` itself is not allowed

    def allows(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return math.isfinite(value) and above and value <= self.high


def _seconds(low: float, high: float, low_open: bool = False) -> Range:
    return Range(low, high, f"a finite number of seconds {'>' if low_open else '>='} {low:g} and <= {high:g}",
                 low_open)


def _integer(low: int, high: int) -> Range:
    return Range(low, high, f"an integer from {low} to {high}")


def _duration(low: float, high: float, low_open: bool = False) -> Range:
    return Range(low, high, f"a duration {'>' if low_open else '>='} {format_duration(low)} and <= "
                            f"{format_duration(high)}", low_open)


_PORT = Range(1, 65535, "a TCP port (1-65535)")
_DAY = 86400.0
_WEEK = 7 * _DAY

#: The range of every number in the configuration. Upper bounds matter too: an interval of 1e300 seconds overflows
#: the event loop's timer, a spool bound beyond 2**63 overflows sqlite. A test proves no number is missing here.
RANGES: dict[str, Range] = {
    "device.port": _PORT,
    "device.connect_timeout": _seconds(0.01, 600),
    "device.request_timeout": _seconds(0.01, 600),
    "device.max_in_flight": _integer(1, 256),
    "device.silence_timeout": _seconds(0.1, _DAY),
    "device.intervals.fast": _seconds(0.01, _WEEK),
    "device.intervals.medium": _seconds(0.01, _WEEK),
    "device.intervals.slow": _seconds(0.01, _WEEK),
    "device.intervals.static": _seconds(0.01, _WEEK),
    "prometheus.bind_port": _PORT,
    "influxdb.batch_size": _integer(1, 1_000_000),
    "influxdb.flush_interval": _seconds(0.01, 3600),
    "influxdb.timeout": _seconds(0.1, 3600),
    "influxdb.spool_max_points": _integer(1000, 1_000_000_000),
    "mqtt.port": _PORT,
    "mqtt.qos": Range(0, 2, "0, 1 or 2"),
    "history.first_start": _duration(0, 366 * _DAY),
    "history.max_gap": _duration(0, 366 * _DAY, low_open=True),
}


def _not_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _http_url_problem(value: str) -> str | None:
    try:
        url = urlsplit(value)
        port_ok = url.port is None or url.port > 0  # .port raises ValueError beyond 65535
    except ValueError:
        port_ok = False
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok:
        return f"must be an http:// or https:// URL such as http://localhost:8086, got {_show(value)}"
    return None


def _topic_problem(value: str) -> str | None:
    if "+" in value or "#" in value:
        return f"must not contain the MQTT wildcards + or #, got {_show(value)}"
    return None


def _time_zone_problem(value: str) -> str | None:
    if not value:
        return None  # the host's zone
    try:
        zoneinfo.ZoneInfo(value)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # unknown; a directory like `Europe`; a bad path
        hint = difflib.get_close_matches(value, zoneinfo.available_timezones(), n=1)
        return (f"unknown time zone {_show(value)}; expected an IANA name such as Europe/Berlin"
                + (f" (did you mean {hint[0]}?)" if hint else ""))


#: Further rules for particular strings (every string is also checked for control characters).
STRING_RULES: dict[str, Callable[[str], str | None]] = {
    "device.host": _not_empty,
    "device.timezone": _time_zone_problem,
    "influxdb.url": _http_url_problem,
    "mqtt.host": _not_empty,
    "mqtt.topic_prefix": _topic_problem,
    "mqtt.discovery_prefix": lambda value: _not_empty(value) or _topic_problem(value),
}


# --- defaults derived from the instance -----------------------------------------------------------------------------

def _client_id(instance: str, environ: Mapping[str, str]) -> str:
    return "rctmon" if instance == statedir.DEFAULT_INSTANCE else f"rctmon-{instance}"


def _spool_path(instance: str, environ: Mapping[str, str]) -> str:
    """Return the instance's spool, or "" (the default place) where that is the same file."""
    try:
        path = statedir.state_file(instance, statedir.SPOOL_FILE, environ)
        unchanged = path == statedir.state_root(environ) / statedir.SPOOL_FILE
    except (RuntimeError, KeyError):  # no home directory to put it under: preflight says so
        return ""
    return "" if unchanged else str(path)


#: Keys whose built-in default would make two daemons on one host collide: a key left at that default gets one
#: derived from the instance instead (key -> derive(instance, environ)). A value the file sets otherwise is kept.
#: The instance `rctmon` (/etc/rctmon.yml) keeps the built-in defaults, so a single daemon is as it always was.
DERIVED: dict[str, Callable[[str, Mapping[str, str]], Any]] = {
    "mqtt.client_id": _client_id,
    "influxdb.spool_path": _spool_path,
}


def _derive_defaults(config: Config, environ: Mapping[str, str]) -> None:
    built_in = Config()
    for key, derive in DERIVED.items():
        if _get(config, key) == _get(built_in, key):
            _set(config, key, derive(config.instance, environ))


# --- reading the sections -------------------------------------------------------------------------------------------

def _show(value: Any) -> str:
    """Return a short repr for an error message: a 1 MB string must not become a 1 MB message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}.get(
        type(value), type(value).__name__)


def _coerce(key: str, default: Any, value: Any, errors: list[str]) -> Any:
    """Return `value` if it has the type of `default` (ints pass as floats), else record an error."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float: out of every range below
                value = math.inf
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, dict)
    if not ok:
        shown = "a value of another type" if key in _SECRET_KEYS else _show(value)
        errors.append(f"{key}: expected {_type_name(default)}, got {shown}")
        return default
    return value


def _load_section(cls: type, prefix: str, data: Any, errors: list[str]) -> Any:
    section = cls()
    if data is None:  # "sections may be empty"
        return section
    if not isinstance(data, dict):
        errors.append(f"{prefix}: expected a mapping of keys, got {_show(data)}")
        return section
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        dotted = f"{prefix}.{_short_key(key if isinstance(key, str) else _show(key))}"
        if key not in fields:
            hint = difflib.get_close_matches(str(key), fields, n=1)
            errors.append(f"{dotted}: unknown key" + (f" (did you mean {prefix}.{hint[0]}?)" if hint else ""))
            continue
        default = getattr(section, key)
        if dataclasses.is_dataclass(default):
            setattr(section, key, _load_section(type(default), dotted, value, errors))
        elif fields[key].metadata.get("duration"):
            try:
                setattr(section, key, parse_duration(value))
            except ValueError as exc:
                errors.append(f"{dotted}: {exc}")
        else:
            setattr(section, key, _coerce(dotted, default, value, errors))
    return section


def _short_key(name: str) -> str:
    """Return a key as written, shortened for an error message."""
    return name if len(name) <= 80 else name[:77] + "..."


def walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (dotted key, value) of every key below `obj`, nested sections expanded (NOT_KEYS left out)."""
    for f in dataclasses.fields(obj):
        if f.name in NOT_KEYS:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def _control_character_problem(value: str) -> str | None:
    """Name the first control character in `value` (never the value itself: it may be a secret)."""
    for position, char in enumerate(value):
        if unicodedata.category(char) == "Cc":
            return f"must not contain control characters (U+{ord(char):04X} at character {position + 1})"
    return None


def _check_values(config: Config, errors: list[str]) -> None:
    for key, value in walk(config):
        if key == "logging":
            continue
        if key in RANGES and not RANGES[key].allows(value):
            shown = format_duration(value) if math.isfinite(value) and key.startswith("history.") else _show(value)
            errors.append(f"{key}: must be {RANGES[key].what}, got {shown}")
        elif isinstance(value, str):
            problem = _control_character_problem(value) or (STRING_RULES[key](value) if key in STRING_RULES else None)
            if problem:
                errors.append(f"{key}: {problem}")
    pairs = (
        ("prometheus.tls_key_file", bool(config.prometheus.tls_cert_file) == bool(config.prometheus.tls_key_file),
         "tls_cert_file and tls_key_file must be set together"),
        ("mqtt.tls.key_file", bool(config.mqtt.tls.cert_file) or not config.mqtt.tls.key_file,
         "set without mqtt.tls.cert_file (the key belongs to a client certificate)"),
    )
    errors.extend(f"{key}: {why}" for key, ok, why in pairs if not ok)


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


def read_secret_file(path: str) -> str:
    """Return the first line of a secret file, whitespace stripped; raise OSError or ValueError saying why not."""
    with open(path, "rb") as f:
        raw = f.read(MAX_SECRET_FILE_BYTES + 1)
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_FILE_BYTES // 1024} kB; not a secret file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    lines = text.strip().splitlines()
    return lines[0].strip() if lines else ""


def _resolve_secrets(config: Config, environ: Mapping[str, str], errors: list[str]) -> None:
    for key, env, file_key in SECRETS:
        path = _get(config, file_key)
        if path and not _control_character_problem(path):  # a bad path is reported by _check_values
            try:
                _set(config, key, read_secret_file(path))
            except OSError as exc:
                errors.append(f"{file_key}: cannot read {path}: {exc.strerror or exc}")
            except ValueError as exc:
                errors.append(f"{file_key}: {exc}")
        if environ.get(env):
            _set(config, key, environ[env])


def parse(data: Any, environ: Mapping[str, str] | None = None, instance: str = statedir.DEFAULT_INSTANCE) -> Config:
    """Validate parsed YAML and return the effective configuration; raise ConfigError listing every problem.

    `instance` (see `rctmon.statedir.instance_name`) decides the derived defaults (`DERIVED`).
    """
    errors: list[str] = []
    env = os.environ if environ is None else environ
    config = Config(instance=instance)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {_type_name(data)}")
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name not in NOT_KEYS}
    for name, value in data.items():
        if name not in sections:
            hint = difflib.get_close_matches(str(name), sections, n=1)
            errors.append(f"{_short_key(str(name))}: unknown section" + (f" (did you mean {hint[0]}?)" if hint else ""))
        elif name == "logging":
            if value is not None and not isinstance(value, dict):
                errors.append(f"logging: expected a mapping for logging.config.dictConfig, got {_show(value)}")
            elif value:
                config.logging = value
        else:
            setattr(config, name, _load_section(type(getattr(config, name)), name, value, errors))
    _resolve_secrets(config, env, errors)
    _check_values(config, errors)
    if errors:
        raise ConfigError(errors)
    _derive_defaults(config, env)
    return config


def load(path: str, environ: Mapping[str, str] | None = None, refuse_empty: bool = False) -> Config:
    """Read, parse and validate a YAML file; raise ConfigError, naming the file, on any problem.

    At start an empty file means every default. On a reload pass `refuse_empty=True`: a file that is empty (or
    holds only whitespace and comments) is then refused, because it is most likely being rewritten right now and
    every default is not what the admin meant.
    """
    try:
        data = safeyaml.read(path)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    except safeyaml.YamlRefused as exc:
        raise ConfigError(str(exc)) from None
    if refuse_empty and data is None:
        raise ConfigError("the file is empty (or holds only comments); keeping the configuration in use",
                          source=path)
    try:
        config = parse(data, environ, instance=statedir.instance_name(path))
    except ConfigError as exc:
        raise ConfigError(exc.problems, source=path) from None
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


def device_timezone(device: DeviceConfig) -> datetime.tzinfo:
    """Return the zone of the inverter's wall clock: `device.timezone`, or the host's zone when it is empty."""
    return zoneinfo.ZoneInfo(device.timezone) if device.timezone else host_timezone()


def host_timezone(environ: Mapping[str, str] | None = None, localtime: str = "/etc/localtime") -> datetime.tzinfo:
    """Return the host's zone with its DST rules ($TZ, else /etc/localtime), UTC when neither names one.

    `datetime.now().astimezone()` would give a fixed offset: right today, an hour off across a DST change.
    """
    env = os.environ if environ is None else environ
    name = env.get("TZ", "").lstrip(":")
    try:
        if name:
            if os.path.isabs(name):
                with open(name, "rb") as f:
                    return zoneinfo.ZoneInfo.from_file(f, key=name)
            return zoneinfo.ZoneInfo(name)
        target = os.path.realpath(localtime)
        if "/zoneinfo/" in target:  # a link into the zone database: use the zone by its name
            try:
                return zoneinfo.ZoneInfo(target.split("/zoneinfo/", 1)[1])
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
                pass
        with open(localtime, "rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key="localtime")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return datetime.timezone.utc


def masked(config: Config) -> dict[str, Any]:
    """Return the configuration as plain data with every secret replaced by a mask."""
    data = dataclasses.asdict(config)
    for name in NOT_KEYS:
        data.pop(name, None)
    for key in _SECRET_KEYS:
        section, name = key.split(".")
        if data[section][name]:
            data[section][name] = MASK
    return data


def dump(config: Config) -> str:
    """Return the effective configuration as YAML, secrets masked."""
    return yaml.safe_dump(masked(config), sort_keys=False, default_flow_style=False)
