"""Read-only, still by construction: the one WRITE the link can send, proven over every registry id; the poller's
second class of request (logger queries) matched by (object id, timestamp), behind live requests."""

from __future__ import annotations

import asyncio
import enum
import struct
import time
from typing import Any

import pytest
from rctclient.frame import ReceiveFrame, make_frame
from rctclient.registry import REGISTRY
from rctclient.types import Command, DataType

from rctmon.collector.connection import EARLIEST_QUERY, QUERY_AHEAD, QUERYABLE, ReadOnlyLink
from rctmon.collector.framer import RESPONSE_TYPES
from rctmon.collector.scheduler import Poller, Window
from rctmon.messages import CollectorStats

pytestmark = pytest.mark.timeout(60)

REGISTRY_IDS = sorted(RESPONSE_TYPES)
LOGGER = REGISTRY.get_by_name("logger.minutes_eac_log_ts").object_id
EVENTS = REGISTRY.get_by_name("logger.error_log_time_stamp").object_id
SOC = REGISTRY.get_by_name("battery.soc").object_id
NOW = int(time.time())


AHEAD = object()


class Color(enum.IntEnum):
    RED = 1_700_000_000


def frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split what the link wrote into (command, object id, payload) with rctclient's own parser."""
    out = []
    while data:
        frame = ReceiveFrame()
        used = frame.consume(data)
        assert frame.complete(), data.hex()
        out.append((frame.command, frame.id, bytes(frame.data)))
        data = data[used:]
    return out


def test_a_query_can_go_to_exactly_the_time_series_and_the_event_table() -> None:
    """Over every object id rctclient knows: a query is sent iff the answer type is TIMESERIES or EVENT_TABLE."""
    allowed = {oid for oid in REGISTRY_IDS if RESPONSE_TYPES[oid] in (DataType.TIMESERIES, DataType.EVENT_TABLE)}
    assert allowed == set(QUERYABLE) and len(allowed) >= 40
    for object_id in REGISTRY_IDS:
        written: list[bytes] = []
        link = ReadOnlyLink(written.append, CollectorStats())
        if object_id in allowed:
            assert link.query([(object_id, NOW)]) == 1
            assert frames(b"".join(written)) == [(Command.WRITE, object_id, struct.pack(">i", NOW))]
        else:
            with pytest.raises(ValueError):
                link.query([(object_id, NOW)])
            assert written == []
        # READ stays possible for every object, and never carries a payload
        link.read([object_id])
        assert frames(b"".join(written))[-1] == (Command.READ, object_id, b"")


def test_unknown_ids_are_refused_too() -> None:
    link = ReadOnlyLink(lambda data: pytest.fail("nothing may be written"), CollectorStats())
    unknown = next(i for i in range(1, 10_000) if i not in RESPONSE_TYPES)
    for object_id in (unknown, -1, 2 ** 40):
        with pytest.raises((TypeError, ValueError)):
            link.query([(object_id, NOW)])


@pytest.mark.parametrize("timestamp", [
    EARLIEST_QUERY - 1,  # before 2000
    0, -1,
    AHEAD,  # more than a day ahead (of when the test runs)
    2 ** 31,  # does not fit the registry's INT32
    True, False,  # bools are ints, but no timestamps
    float(NOW), NOW + 0.5,  # floats, even whole ones
    Color.RED,  # an IntEnum member compares equal to a sane timestamp
    str(NOW), b"\x00\x00\x00\x00", None,
    make_frame(Command.WRITE, SOC, struct.pack(">f", 0.5)),  # raw bytes of another WRITE
])
def test_anything_but_a_sane_int_timestamp_is_refused(timestamp: Any) -> None:
    if timestamp is AHEAD:
        timestamp = int(time.time()) + QUERY_AHEAD + 120
    written: list[bytes] = []
    link = ReadOnlyLink(written.append, CollectorStats())
    with pytest.raises((TypeError, ValueError)):
        link.query([(LOGGER, timestamp)])
    with pytest.raises((TypeError, ValueError)):
        link.query([(LOGGER, NOW), (EVENTS, timestamp)])  # one bad query spoils the burst: nothing is written
    with pytest.raises((TypeError, ValueError)):
        ReadOnlyLink.check_query(LOGGER, timestamp)
    assert written == []


@pytest.mark.parametrize("object_id", [True, float(LOGGER), Command.WRITE, str(LOGGER)])
def test_an_object_id_of_another_type_is_refused(object_id: Any) -> None:
    written: list[bytes] = []
    link = ReadOnlyLink(written.append, CollectorStats())
    with pytest.raises((TypeError, ValueError)):
        link.query([(object_id, NOW)])
    assert written == []


def test_the_edges_of_the_timestamp_range_are_allowed() -> None:
    written: list[bytes] = []
    link = ReadOnlyLink(written.append, CollectorStats())
    assert link.query([(EVENTS, EARLIEST_QUERY), (LOGGER, int(time.time()) + QUERY_AHEAD - 60)]) == 2
    assert [f[0] for f in frames(b"".join(written))] == [Command.WRITE, Command.WRITE]


# --- the poller: logger queries behind live requests, matched by (object id, timestamp) ---------------------------


class FakeLink:
    """Records what the poller sends, in order: ("read", id) and ("query", (id, ts))."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def read(self, object_ids: list[int]) -> int:
        self.sent += [("read", i) for i in object_ids]
        return len(object_ids)

    def query(self, queries: list[tuple[int, int]]) -> int:
        self.sent += [("query", q) for q in queries]
        return len(queries)

    check_query = staticmethod(ReadOnlyLink.check_query)


def answer(timestamp: int, *entries: tuple[int, float]) -> bytes:
    return struct.pack(">I", timestamp) + b"".join(struct.pack(">If", s, v) for s, v in entries)


def test_queries_wait_for_live_requests_and_fill_the_window_after_them() -> None:
    async def scenario() -> None:
        link = FakeLink()
        poller = Poller(link, Window(4), CollectorStats(), 1.0)  # type: ignore[arg-type]
        ids = [i for i in REGISTRY_IDS if i not in QUERYABLE][:6]
        poller.ask(ids[:2])
        tasks = [asyncio.ensure_future(poller.query(LOGGER, NOW - k)) for k in range(3)]
        await asyncio.sleep(0)
        poller.ask(ids[2:])  # live requests queued after the queries still go first
        assert link.sent == [("read", ids[0]), ("read", ids[1]), ("query", (LOGGER, NOW)),
                             ("query", (LOGGER, NOW - 1))]
        loop = asyncio.get_running_loop()
        poller.resolve(ids[0], 1.0, loop.time())
        assert link.sent[-1] == ("read", ids[2])  # the freed slot goes to a live request, not the third query
        for k in range(2):  # answers match by their first element, whatever order they come in
            assert poller.resolve_query(LOGGER, answer(NOW - 1 + k, (NOW - 300, 1.5)), loop.time())
        assert not poller.resolve_query(LOGGER, answer(NOW - 99), loop.time())  # nobody asked that
        assert not poller.resolve_query(EVENTS, answer(NOW), loop.time())  # another object
        assert not poller.resolve_query(LOGGER, b"\x00\x01", loop.time())  # too short to name a timestamp
        assert (await tasks[0]) == answer(NOW, (NOW - 300, 1.5))
        assert (await tasks[1]) == answer(NOW - 1, (NOW - 300, 1.5))
        for object_id in ids[1:]:
            poller.resolve(object_id, 1.0, loop.time())
        assert ("query", (LOGGER, NOW - 2)) in link.sent  # once no live request waits
        poller.resolve_query(LOGGER, answer(NOW - 2), loop.time())
        assert (await tasks[2]) == answer(NOW - 2)
        assert poller.idle and poller.queries_waiting == 0
        poller.close()

    asyncio.run(scenario())


def test_a_query_nobody_answers_is_asked_again_then_given_up_with_none() -> None:
    async def scenario() -> None:
        link = FakeLink()
        poller = Poller(link, Window(4), CollectorStats(), 0.05, max_attempts=2)  # type: ignore[arg-type]
        result = await asyncio.wait_for(poller.query(EVENTS, NOW), 5)
        assert result is None
        assert link.sent.count(("query", (EVENTS, NOW))) == 2
        poller.close()

    asyncio.run(scenario())


def test_closing_the_poller_hands_none_to_every_waiting_query_and_refuses_bad_ones_at_once() -> None:
    async def scenario() -> None:
        link = FakeLink()
        poller = Poller(link, Window(2), CollectorStats(), 1.0)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await poller.query(SOC, NOW)  # no logger object: refused before anything is queued
        with pytest.raises(TypeError):
            await poller.query(LOGGER, float(NOW))  # type: ignore[arg-type]
        waiting = [asyncio.ensure_future(poller.query(LOGGER, NOW - k)) for k in range(5)]
        await asyncio.sleep(0)
        poller.close()
        assert await asyncio.gather(*waiting) == [None] * 5
        assert await poller.query(LOGGER, NOW) is None

    asyncio.run(scenario())
