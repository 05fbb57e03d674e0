"""Find out what the inverter is and what is attached to it, before polling anything that depends on it.

The inverter's name is asked first: an inverter that answers it is there and talking. Only then are the identity and
presence objects asked (serial, versions, generators, battery modules, Power Switch), and `Inventory.from_values`
turns the answers into the record that decides which catalog series are polled.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from rctclient.registry import REGISTRY

from rctmon.collector.scheduler import Poller
from rctmon.inventory import ALL_OBJECTS, IDENTITY_OBJECTS, NAME_OBJECT, PRESENCE_OBJECTS, Inventory

log = logging.getLogger("rctmon.collector.discovery")

NAME_ID: int = REGISTRY.get_by_name(NAME_OBJECT).object_id
DETAIL_IDS: tuple[int, ...] = tuple(REGISTRY.get_by_name(n).object_id for n in IDENTITY_OBJECTS + PRESENCE_OBJECTS)
NAMES_BY_ID: Mapping[int, str] = {REGISTRY.get_by_name(n).object_id: n for n in ALL_OBJECTS}
INVENTORY_IDS: tuple[int, ...] = (NAME_ID,) + DETAIL_IDS


class NoAnswer(Exception):
    """The inverter did not answer its name."""


def inventory_from_ids(values: Mapping[int, object]) -> Inventory:
    """Build the inventory from answers keyed by object id."""
    return Inventory.from_values({NAMES_BY_ID[i]: v for i, v in values.items() if i in NAMES_BY_ID})


#: Rounds in which the identity and presence objects that have not answered are asked again; a wrong inventory
#: (a module missing because its answer was lost) would silence that module's series until the next check.
DETAIL_ROUNDS = 3


async def discover(poller: Poller, name_rounds: int | None = None) -> Inventory:
    """Read the name until it answers (at most `name_rounds` rounds; None: until cancelled), then the rest.

    Each round asks with the poller's timeout and retries. Without a bound, the caller's silence watchdog ends a
    connection on which the inverter never answers.
    """
    values: dict[int, object] = {}
    rounds = 0
    while NAME_ID not in values:
        if name_rounds is not None and rounds >= name_rounds:
            raise NoAnswer(f"no answer to {NAME_OBJECT}")
        rounds += 1
        values.update(await poller.read([NAME_ID]))
    for _ in range(DETAIL_ROUNDS):
        missing = [i for i in DETAIL_IDS if i not in values]
        if not missing:
            break
        values.update(await poller.read(missing))
    inventory = inventory_from_ids(values)
    if not inventory.complete:
        silent = [NAMES_BY_ID[i] for i in INVENTORY_IDS if i not in values]
        log.warning("inventory incomplete, no answer for: %s", ", ".join(silent))
    return inventory
