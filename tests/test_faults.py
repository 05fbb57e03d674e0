"""The fault words decoded to names (rctmon/faults.py): rctclient's table, the `fault` label, docs/metrics.md."""

from __future__ import annotations

import json
import os
import re

from hypothesis import given
from hypothesis import strategies as st

import support
from rctmon import faults
from rctmon.exporters import mqtt_events

DOC = os.path.join(support.REPO, "docs", "metrics.md")


def test_the_table_is_rctclients_bits_0_to_126_with_stable_label_names() -> None:
    assert [f.bit for f in faults.FAULTS] == list(range(127))  # rctclient documents no bit 127
    names = [f.name for f in faults.FAULTS]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", name) and not name.startswith("bit_") for name in names)
    assert faults.FAULTS[0].description == "TRAP occured"  # rctclient's words, kept as they are
    assert (faults.FAULTS[13].name, faults.FAULTS[13].word, faults.FAULTS[13].mask) == ("grid_undervoltage_l1", 0,
                                                                                       1 << 13)
    assert (faults.FAULTS[106].name, faults.FAULTS[106].word) == ("battery_empty", 3)


def test_docs_metrics_carries_the_table_the_code_uses() -> None:
    with open(DOC, encoding="utf-8") as doc:
        text = doc.read()
    table = text.split("<!-- faults:begin -->\n", 1)[1].split("<!-- faults:end -->", 1)[0]
    assert table == faults.faults_markdown()


def test_words_name_every_bit_set_and_an_undocumented_one_by_number() -> None:
    words = faults.words_for(["trap", "grid_undervoltage_l1", "island_detected", "bit_127"])
    assert words == (1 | 1 << 13, 0, 0, 1 << 30 | 1 << 31)
    active = faults.active(dict(enumerate(words)))
    assert [f.name for f in active] == ["trap", "grid_undervoltage_l1", "island_detected", "bit_127"]
    assert faults.active({0: 0, 1: 0, 2: 0, 3: 0}) == []


def test_a_value_that_is_no_32_bit_word_says_nothing() -> None:
    for garbage in (None, "1", 1.5, True, 1 << 32, -(1 << 31) - 1):
        assert list(faults.states(0, garbage)) == []
    assert faults.word_value(-1) == 0xFFFFFFFF  # a signed reading of the same bits
    assert list(faults.states(4, 1)) == []  # there is no fifth word


def test_an_unknown_name_is_refused() -> None:
    try:
        faults.words_for(["no_such_fault"])
    except ValueError as exc:
        assert "no_such_fault" in str(exc)
    else:
        raise AssertionError("an unknown fault name was accepted")


@given(st.lists(st.integers(min_value=0, max_value=(1 << 32) - 1), min_size=4, max_size=4))
def test_the_active_faults_are_exactly_the_bits_set(words: list[int]) -> None:
    active = faults.active(dict(enumerate(words)))
    assert sorted(f.bit for f in active) == [b for b in range(128) if words[b // 32] >> (b % 32) & 1]
    assert faults.words_for(f.name for f in active) == tuple(words)


def test_the_home_assistant_payload_lists_the_active_faults_by_name() -> None:
    payload = json.loads(mqtt_events.faults_payload(dict(enumerate(faults.words_for(["battery_empty"])))))
    assert payload["problem"] == "ON" and payload["faults"] == ["battery_empty"]
    assert payload["descriptions"] == ["Battery is empty, not enough energy for standby"]
    assert json.loads(mqtt_events.faults_payload({0: 0, 1: 0, 2: 0, 3: 0}))["problem"] == "OFF"


def test_the_simulator_refuses_a_fault_it_cannot_name_and_sets_the_bits_it_can() -> None:
    from rctmon.simulator import SimulatorOptions

    problems = SimulatorOptions(inverter_faults=("grid_undervoltage_l1", "nope")).problems()
    assert [p for p in problems if p.startswith("--inverter-fault") and "'nope'" in p]
    assert SimulatorOptions(inverter_faults=("grid_undervoltage_l1", "bit_127")).problems() == []
