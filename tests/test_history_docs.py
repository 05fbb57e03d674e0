"""docs/history.md carries the tables generated from the code (series, event types, event fields), so it cannot
drift; and its command lines parse against the CLI."""

from __future__ import annotations

import os
import re
import shlex

import pytest

import support
from rctmon.cli import build_parser
from rctmon.history.reference import TABLES
from rctmon.history.series import LOGGER_SERIES, NOT_IMPORTED
from rctclient.registry import REGISTRY
from rctclient.types import DataType

pytestmark = pytest.mark.timeout(30)

DOC = os.path.join(support.REPO, "docs", "history.md")


def page() -> str:
    with open(DOC, encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("name", sorted(TABLES))
def test_each_generated_table_is_on_the_page_as_the_code_makes_it(name: str) -> None:
    match = re.search(rf"<!-- {name}:begin -->\n(.*?)<!-- {name}:end -->", page(), re.S)
    assert match, f"docs/history.md has no {name} markers"
    assert match.group(1) == TABLES[name](), f"regenerate with: python -m rctmon.history.reference ({name})"


def test_every_logger_object_in_the_registry_is_imported_or_said_why_not() -> None:
    logger_objects = {i.name for i in REGISTRY.all() if i.name.startswith("logger.")}
    covered = {row.object_name for row in LOGGER_SERIES} | set(NOT_IMPORTED) | {"logger.error_log_time_stamp"}
    assert logger_objects == covered
    series = {i.name for i in REGISTRY.all() if i.response_data_type is DataType.TIMESERIES}
    assert series - {row.object_name for row in LOGGER_SERIES} == {"logger.year_log_ts"}


def test_the_command_lines_on_the_page_parse() -> None:
    parser = build_parser()
    lines = [line.split("#")[0].strip() for line in page().splitlines() if line.startswith("rctmon -c")]
    assert len(lines) >= 5
    for line in lines:
        if "[" in line:  # the synopsis
            continue
        args = shlex.split(line)[1:]
        parsed = parser.parse_args(args)
        assert parsed.command == "history", line
