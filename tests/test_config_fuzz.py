"""Generated configurations: a ConfigError naming a key or the file, or a config every time of which is sane.

Whatever a careless admin (or a hostile file) holds, loading it ends in exactly one of two ways: a ConfigError whose
every problem names a key or the file (never another exception, never a traceback), or a configuration that passes
validation with every interval and timeout finite and positive, every number inside its range and no control
character in any string.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rctmon import config as cfg

KEYS = {key: default for key, default in cfg.walk(cfg.Config()) if key != "warnings"}
SECTIONS = sorted({key.split(".")[0] for key in KEYS})
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])

odd_strings = st.sampled_from(["", " ", "36h", "1d", "-5s", "nan", ".inf", "Europe/Berlin", "Europe/Berlni",
                               "Mars/Olympus", "../../etc/passwd", "/dev/zero", "/", "http://x:99999", "a/+/#",
                               "\0", "a\nb", "\x1b[31m", "\u202e", "ü", "\ufeff", "x" * 300, "yes", "~", "0x1F",
                               "1e400", "2001-13-45", "1:2:3"])
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2 ** 70, max_value=2 ** 70), st.integers(min_value=-5, max_value=70000),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=-1, max_value=1e6),
    st.text(max_size=20), odd_strings,
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
DURATIONS = {key for key in KEYS if key.startswith("history.") and isinstance(KEYS[key], float)}


def typed(key: str) -> st.SearchStrategy[Any]:
    """Return values of the key's own type, mostly plausible, sometimes at or beyond the edges of its range."""
    default = KEYS[key]
    if key in DURATIONS:
        return st.one_of(st.from_regex(r"\A[0-9]{1,4}(\.[0-9])?[smhdw]?\Z"), st.floats(), odd_strings)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, float):
        return st.one_of(st.floats(min_value=0.001, max_value=1e6), st.floats(), st.integers(-10, 10 ** 7))
    if isinstance(default, int):
        return st.one_of(st.integers(0, 70000), st.integers(-2 ** 64, 2 ** 64))
    if isinstance(default, str):
        return st.one_of(st.just(default), st.text(max_size=20), odd_strings)
    return st.one_of(st.none(), st.just(default), values)


unknown_keys = st.one_of(st.text(max_size=8), st.integers(), st.sampled_from(["hots", "fats", "intervals", "tls"]))


def put(data: dict[Any, Any], path: list[Any], value: Any) -> None:
    """Set data[path[0]][path[1]]... = value where the levels above are mappings (or absent)."""
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return
        node = child
    node[path[-1]] = value


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """Draw parsed YAML: known keys with values of every type, unknown keys at every level, odd sections."""
    data: dict[Any, Any] = {}
    for key in draw(st.lists(st.sampled_from(sorted(KEYS)), max_size=8, unique=True)):
        put(data, key.split("."), draw(typed(key) if draw(st.integers(0, 9)) else values))
    for _ in range(draw(st.integers(0, 3)) if draw(st.booleans()) else 0):
        prefix = draw(st.sampled_from([[]] + [[s] for s in SECTIONS] + [["device", "intervals"], ["mqtt", "tls"]]))
        put(data, prefix + [draw(unknown_keys)], draw(values))
    if draw(st.integers(0, 9)) == 0:
        data[draw(st.sampled_from(SECTIONS))] = draw(values)  # a section that is no mapping
    return draw(st.one_of(st.just(data), values)) if draw(st.integers(0, 9)) == 0 else data


@st.composite
def yaml_texts(draw: st.DrawFn) -> bytes:
    """Draw file contents: dumped documents, aliases, deep nesting, YAML-ish noise and random bytes."""
    kind = draw(st.sampled_from(["dumped", "alias", "nesting", "noise", "bytes"]))
    if kind == "dumped":
        return yaml.safe_dump(draw(documents()), allow_unicode=draw(st.booleans())).encode()
    if kind == "alias":
        key = draw(st.sampled_from(sorted(KEYS)))
        value = draw(st.sampled_from(["[1, 2]", "{a: 1}", "x", "5"]))
        return f"a: &anchor {value}\n{key.split('.')[0]}: *anchor\n".encode()
    if kind == "nesting":
        depth = draw(st.integers(0, 2000))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        return ("device: " + opener * depth + "1" + closer * depth + "\n").encode()
    if kind == "noise":
        return draw(st.text(alphabet="{}[]&*:-!|>'\"#\n \t.,?%@`0123456789abcdehilnostuvx\\\0ü", max_size=200)).encode()
    return draw(st.binary(max_size=200))


def names_a_key_or_the_file(problem: str, data: Any, path: str = "") -> bool:
    """Return whether a problem line starts with the file, a configuration key, or a key the input holds."""
    if path and problem.startswith(path):
        return True
    named = set(KEYS) | set(SECTIONS)
    if isinstance(data, dict):
        named |= set(dotted_keys(data))
    return problem.startswith("the configuration must be a mapping") or any(
        problem.startswith(f"{key}:") for key in named)


def dotted_keys(data: dict[Any, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in data.items():
        name = prefix + (key if isinstance(key, str) else repr(key))
        keys.append(name)
        if isinstance(value, dict):
            keys.extend(dotted_keys(value, name + "."))
    return keys


def assert_sane(config: cfg.Config) -> None:
    for key, value in cfg.walk(config):
        if key in cfg.RANGES:
            assert cfg.RANGES[key].allows(value), (key, value)
            if "seconds" in cfg.RANGES[key].what:
                assert math.isfinite(value) and value > 0, (key, value)
        elif isinstance(value, str):
            assert not any(unicodedata.category(c) == "Cc" for c in value), (key, value)


@pytest.mark.timeout(60)
@FUZZ
@given(data=documents())
def test_parsed_documents_are_refused_naming_a_key_or_sane(data):
    try:
        config = cfg.parse(data, environ={})
    except cfg.ConfigError as exc:
        assert exc.problems and all(names_a_key_or_the_file(p, data) for p in exc.problems), exc.problems
        return
    assert_sane(config)


@pytest.mark.timeout(60)
@FUZZ
@given(content=yaml_texts())
def test_files_are_refused_naming_a_key_or_the_file_or_sane(tmp_path, content):
    path = tmp_path / "rctmon.yml"
    path.write_bytes(content)
    try:
        config = cfg.load(str(path), environ={})
    except cfg.ConfigError as exc:
        assert str(path) in str(exc), str(exc)
        assert all(names_a_key_or_the_file(p, None, str(path)) or names_a_key_or_the_file(p, _parsed(content))
                   for p in exc.problems), exc.problems
        return
    assert_sane(config)


def _parsed(content: bytes) -> Any:
    try:
        return yaml.safe_load(content)
    except Exception:  # noqa: BLE001 - only for naming the keys of documents PyYAML itself can read
        return None
