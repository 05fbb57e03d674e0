"""Durations as people write them (`36h`, `14d`, `90m`, `45s`, or a number of seconds), parsed into seconds.

One parser for the configuration (`history.first_start`) and the command line (`rctmon history --since 36h`).
"""

from __future__ import annotations

import math
import re

#: Seconds per unit suffix.
UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[smhdw]?)")
_MAX_TEXT = 40  # longer text is no duration anyone wrote; refusing it early keeps error messages short


def parse_duration(value: object) -> float:
    """Return `value` (`36h`, `14d`, `90m`, `45s`, `2w`, `3600`, 3600, 1.5) in seconds.

    Raise ValueError saying what is wrong: the message is meant to follow a key or an option name.
    Negative, infinite and NaN durations are refused here; the caller decides the range it accepts.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, got {_show(value)}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip()) if len(value) <= _MAX_TEXT else None
        if match is None:
            raise ValueError(f"expected a duration such as 36h, 14d, 90m, 45s or a number of seconds, "
                             f"got {_show(value)}")
        seconds = float(match["number"]) * UNITS[match["unit"] or "s"]
    else:
        try:
            seconds = float(value)
        except OverflowError:  # an integer beyond any float
            seconds = math.inf
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite duration >= 0, got {_show(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """Return `seconds` in the largest unit up to days that divides it evenly (`604800.0` -> `7d`)."""
    for unit, size in (("d", UNITS["d"]), ("h", UNITS["h"]), ("m", UNITS["m"]), ("s", UNITS["s"])):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
