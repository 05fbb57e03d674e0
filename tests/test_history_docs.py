"""docs/history.md carries the tables generated from the code (series, event types, event fields), so it cannot
drift (its command lines are checked with every page's, in test_docs_commands.py)."""

from __future__ import annotations

import os
import re

import pytest

import support
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
