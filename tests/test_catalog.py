import re

from rctclient.registry import REGISTRY

from rctmon import catalog
from rctmon.inventory import Inventory

FULL = Inventory(name="x", generators=("a", "b"), battery_modules=3, power_switch=True, complete=True)
BARE = Inventory(name="x", generators=("a",), battery_modules=0, power_switch=False, complete=True)
PROM_NAME = re.compile(r"^rctmon_[a-z][a-z0-9_]*$")
BASE_UNITS = ("_watts", "_volts", "_amperes", "_hertz", "_celsius", "_joules", "_ratio", "_coulombs")


def test_every_series_resolves_in_the_registry_and_none_collide():
    ids = [s.object_id for s in catalog.SERIES]
    assert len(ids) == len(set(ids))
    for s in catalog.SERIES:
        assert REGISTRY.get_by_name(s.object_name).object_id == s.object_id


def test_metric_names_follow_prometheus_conventions():
    for name, rows in catalog.metric_families().items():
        assert PROM_NAME.match(name), name
        kinds = {r.kind for r in rows}
        assert len(kinds) == 1, f"{name} mixes kinds {kinds}"
        kind = kinds.pop()
        assert name.endswith("_total") == (kind is catalog.Kind.COUNTER), name
        assert name.endswith("_info") == (kind is catalog.Kind.INFO), name
        assert len({r.help for r in rows}) == 1, f"{name} has differing HELP texts"
        if "energy" in name:
            assert "_joules" in name, name


def test_series_of_one_family_have_the_same_label_names_and_distinct_values():
    by_metric = {}
    for s in catalog.SERIES:
        if s.row.kind is catalog.Kind.INFO:
            continue
        by_metric.setdefault(s.metric, []).append(s.labels)
    for name, label_sets in by_metric.items():
        assert len({tuple(k for k, _ in labels) for labels in label_sets}) == 1, name
        assert len(set(label_sets)) == len(label_sets), name


def test_influx_fields_are_unique_per_measurement_and_tags():
    seen = set()
    for s in catalog.SERIES:
        key = (s.row.measurement, s.labels, s.row.field)
        assert key not in seen, key
        seen.add(key)


def test_inventory_enables_rows_per_generator_module_and_switch():
    full = catalog.enabled_series(FULL)
    bare = catalog.enabled_series(BARE)
    modules = {dict(s.labels)["module"] for s in full if s.row.axis is catalog.MODULE}
    assert modules == {"0", "1", "2"}
    assert {dict(s.labels)["generator"] for s in full if s.row.axis is catalog.GENERATOR} == {"a", "b"}
    assert {dict(s.labels)["generator"] for s in bare if s.row.axis is catalog.GENERATOR} == {"a"}
    assert not any(s.row.needs in (catalog.Needs.BATTERY, catalog.Needs.POWER_SWITCH) for s in bare)
    assert any(s.metric == "rctmon_power_switch_grid_voltage_volts" for s in full)


def test_required_metric_names_exist():
    families = catalog.metric_families()
    assert "rctmon_generator_power_watts" in families
    assert "rctmon_battery_state_of_charge_ratio" in families


def test_conversion_to_base_units_and_feed_in_sign():
    feed = catalog.SERIES_BY_NAME["energy.e_grid_feed_total"]
    assert feed.convert(-2769942.25) == 2769942.25 * 3600  # recorded from a real inverter: feed-in is negative
    day = catalog.SERIES_BY_NAME["energy.e_ac_day"]
    assert day.convert(-202.0) == -202.0 * 3600  # a real day counter may be negative; kept as it is
    assert catalog.SERIES_BY_NAME["android_description"].convert("PS 6.0 BA3L") == "PS 6.0 BA3L"
