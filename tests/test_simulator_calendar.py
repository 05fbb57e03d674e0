"""The simulator's calendar: day, month and year energy counters reset at simulated boundaries, consistent with
their totals."""

from __future__ import annotations

import datetime

import pytest

from rctmon.simulator.plant import DAY_SECONDS, ENERGY_TOTALS, PERIODS, Plant, starting_counters

COUNTERS = tuple(ENERGY_TOTALS)


def assert_consistent(counters: dict[str, list[float]]) -> None:
    """|day| <= |month| <= |year| <= |total| for every counter, all of one sign."""
    for key, values in counters.items():
        day, month, year, total = (abs(v) for v in values)
        assert day <= month <= year <= total, (key, values)
        assert all(v <= 0.0 for v in values) if key == "grid_feed" else all(v >= 0.0 for v in values), key


@pytest.mark.parametrize("year", [2024, 2026])  # a leap year and another
def test_the_counters_at_the_start_are_consistent_on_every_day_of_a_year(year: int) -> None:
    date = datetime.date(year, 1, 1)
    while date.year == year:
        counters = starting_counters(date)
        assert_consistent(counters)
        for values in counters.values():
            assert values[1] == values[0] if date.day == 1 else abs(values[1]) > abs(values[0])
            assert values[2] == values[1] if date.month == 1 else abs(values[2]) > abs(values[1])
        date += datetime.timedelta(days=1)


def run_days(start: datetime.date, days: float) -> list[tuple[datetime.date, dict[str, list[float]]]]:
    """Run a plant from `start` for `days` simulated days; return (date, counters) after every real second."""
    now = [0.0]
    plant = Plant(2, 3, True, clock=lambda: now[0], external_generator=True, start_date=start)
    states = [(plant.date, {k: list(v) for k, v in plant.counters.items()})]
    for _ in range(int(days * DAY_SECONDS)):
        now[0] += 1.0
        plant.advance_to(now[0])
        states.append((plant.date, {k: list(v) for k, v in plant.counters.items()}))
    return states


@pytest.mark.parametrize("start,resets", [
    (datetime.date(2026, 6, 14), ("day",)),
    (datetime.date(2026, 1, 31), ("day", "month")),
    (datetime.date(2026, 12, 31), ("day", "month", "year")),
])
def test_counters_reset_where_their_period_begins_and_totals_run_on(start: datetime.date,
                                                                    resets: tuple[str, ...]) -> None:
    states = run_days(start, 1.5)
    boundary = next(i for i, (date, _) in enumerate(states) if date != start)
    assert states[boundary][0] == start + datetime.timedelta(days=1)
    for (_, before), (_, after) in zip(states, states[1:]):
        assert_consistent(after)
        for key in COUNTERS:  # lifetime totals never run backwards (feed-in is counted negative)
            assert abs(after[key][3]) >= abs(before[key][3]), key
    last, first = states[boundary - 1][1], states[boundary][1]
    for key in COUNTERS:
        for i, period in enumerate(PERIODS):
            if period in resets:  # back to (almost) nothing: only the first step of the new period counts
                assert abs(first[key][i]) <= abs(first[key][0]) + 1e-9 and abs(first[key][i]) < 100.0, (key, period)
            else:
                assert abs(first[key][i]) >= abs(last[key][i]), (key, period)
    # The day that began: its month (and year) value is exactly its day's so far when that period began with it.
    for _, counters in states[boundary:]:
        for values in counters.values():
            day, month, year, _ = values
            if "month" in resets:
                assert month == pytest.approx(day)
            if "year" in resets:
                assert year == pytest.approx(day)


def test_a_day_of_household_energy_lands_in_every_period_at_once() -> None:
    states = run_days(datetime.date(2026, 6, 14), 0.5)
    (_, first), (_, last) = states[0], states[-1]
    grown = [last["household"][i] - first["household"][i] for i in range(4)]
    assert grown[0] > 1000.0 and grown == pytest.approx([grown[0]] * 4)
