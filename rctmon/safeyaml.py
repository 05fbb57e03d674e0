"""Read a YAML file that a careless or hostile hand may have written, at a cost bounded before it is built.

PyYAML's safe loader is safe from code execution, not from cost: an alias bomb (nine aliases of nine aliases of
...) expands into billions of nodes for whoever walks it, ten thousand nested brackets exhaust the stack of its
recursive composer, a 5,000-digit integer or a sexagesimal number of 100,000 parts costs quadratic time, a million
list items take seconds to build, and a date like 2001-13-45 ends in a ValueError instead of a YAMLError. A
configuration needs none of these, so this loader refuses them, each with one line naming the file and the line.

How: a first pass over the parser's events (an iterative state machine, in C with libyaml) refuses anchors and
aliases, nesting beyond MAX_DEPTH and more than MAX_EVENTS events; only then are nodes composed and constructed.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1 << 20  # 1 MB: rctmon's largest real configuration is a few kB
MAX_DEPTH = 32  # nested collections; the deepest real one (a logging section) has about six
MAX_EVENTS = 10_000  # parser events (about two per key); a full configuration has a few hundred
MAX_NUMBER_LENGTH = 64  # characters of one integer or float scalar

#: libyaml's parser when PyYAML was built with it (Debian's and the wheels are): ten times faster.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlRefused(ValueError):
    """The file cannot be read as rctmon's configuration; the message is one line naming the file."""


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that rctmon refuses to read (an alias, deep nesting, a number of absurd length)."""


class _BoundedLoader(_BaseLoader):  # type: ignore[misc]
    """A safe loader whose constructors refuse absurd numbers and turn their ValueErrors into YAMLErrors."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # a date like 2001-13-45: the constructors raise ValueError
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this value: {exc}",
                                                    node.start_mark) from exc


def _bounded_number(kind: str, construct: Any) -> Any:
    def constructor(loader: _BoundedLoader, node: Any) -> Any:
        """Refuse a number too long to be meant before int() or float() spends time on it."""
        if len(node.value) > MAX_NUMBER_LENGTH:
            raise _Refused(None, None, f"{kind} longer than {MAX_NUMBER_LENGTH} characters", node.start_mark)
        return construct(loader, node)
    return constructor


_BoundedLoader.add_constructor("tag:yaml.org,2002:int",
                               _bounded_number("an integer", yaml.SafeLoader.construct_yaml_int))
_BoundedLoader.add_constructor("tag:yaml.org,2002:float",
                               _bounded_number("a number", yaml.SafeLoader.construct_yaml_float))


def _check_events(text: str) -> None:
    """Refuse anchors, aliases, deep nesting and too many events, before anything is composed."""
    parser = _BaseLoader(text)
    depth = events = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            mark: Any = event.start_mark  # libyaml's own Mark class: same fields
            events += 1
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _Refused(None, None, "anchors and aliases (&name, *name) are not allowed in rctmon's "
                               "configuration; write each value out", mark)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if events > MAX_EVENTS:
                raise _Refused(None, None, f"more than {MAX_EVENTS} values; this is not a configuration file", mark)
    finally:
        parser.dispose()


def read(path: str, max_bytes: int = MAX_BYTES) -> Any:
    """Return the parsed content of the YAML file at `path` (None when it holds no document).

    Raise OSError when it cannot be read, YamlRefused for anything else, with the file (and line) named.
    """
    with open(path, "rb") as f:  # not a size from stat: /dev/stdin and pipes have none
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise YamlRefused(f"{path}: larger than {max_bytes // 1024} kB; this is not a configuration file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise YamlRefused(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                          f"save the file as UTF-8") from None
    return loads(text, path)


def loads(text: str, name: str = "<string>") -> Any:
    """Return the parsed content of YAML `text`; raise YamlRefused naming `name` and the line on any problem."""
    loader = None
    try:
        _check_events(text)
        loader = _BoundedLoader(text)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        raise YamlRefused(f"{name}: {_describe(exc)}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlRefused(f"{name}: line {line}: character #x{exc.character:04x} is not allowed in a YAML file; "
                          f"remove it") from None
    except yaml.YAMLError as exc:
        raise YamlRefused(f"{name}: not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _describe(exc: yaml.MarkedYAMLError) -> str:
    """Return a MarkedYAMLError as one line: where, then what (PyYAML's own text spans several lines)."""
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = "; ".join(part for part in (exc.context, exc.problem) if part)
    if not isinstance(exc, _Refused):
        text = "not valid YAML" + (f": {text}" if text else "")
    return where + text
