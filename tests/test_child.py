"""The loop every child shares (rctmon.child): messages, heartbeats, Stop, and background work that must not die.

Each test runs a small stand-in job with `run_child` in a thread, over a real `Channel` pair, with the test as the
supervisor on the other end.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from support import wait_messages
import rctmon.child
from rctmon.channel import Channel, ChannelClosed
from rctmon.child import ChildContext, ChildFailed, Job, Link, run_child
from rctmon.collector.process import ChannelSink
from rctmon.config import Config
from rctmon.messages import CollectorStats, Heartbeat, ReadingBatch, Started, Stats, Stop
from rctmon.registry import ChildSpec

pytestmark = pytest.mark.timeout(20)

#: What the stand-in jobs saw, by job class name (the jobs run in a thread of this process).
SEEN: dict[str, list[object]] = {}


class Recorder(Job):
    """Record every message; count them in its stats."""

    def receive(self, messages: Sequence[object]) -> None:
        SEEN.setdefault("Recorder", []).extend(messages)

    def stats(self) -> Stats:
        return {"received": len(SEEN.get("Recorder", []))}

    async def stop(self) -> None:
        SEEN.setdefault("stopped", []).append(True)


class DyingTask(Job):
    """Background work that fails after a moment."""

    async def start(self) -> Sequence[Awaitable[object]]:
        return (self._work(),)

    async def _work(self) -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("the work broke")


class EndingTask(Job):
    """Background work that simply returns."""

    async def start(self) -> Sequence[Awaitable[object]]:
        return (asyncio.sleep(0.1),)


class DyingThread(Job):
    """A thread that reports its end, as the InfluxDB drain thread does."""

    async def start(self) -> Sequence[Awaitable[object]]:
        def work() -> None:
            try:
                time.sleep(0.1)
            finally:
                self.context.fail("the worker thread has ended")

        threading.Thread(target=work, daemon=True).start()
        return ()


class StoppingThread(Job):
    """A thread that reports its end only once the child is ending (as on Stop): no failure."""

    def __init__(self, context: ChildContext) -> None:
        super().__init__(context)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)

    def _work(self) -> None:
        self.done.wait()
        self.context.fail("the worker thread has ended")

    async def start(self) -> Sequence[Awaitable[object]]:
        self.thread.start()
        return ()

    async def stop(self) -> None:
        self.done.set()
        self.thread.join(5)


class BrokenReceiver(Job):
    def receive(self, messages: Sequence[object]) -> None:
        raise ValueError("cannot handle this")


class NotWorking(Job):
    """A job that says it does not work: no heartbeat may go out."""

    async def check(self) -> bool:
        return False


class SwallowsOneCancel(Job):
    """Background work that swallows the first cancellation, as `asyncio.wait_for` does before Python 3.12 when
    what it waited for completed in the same loop pass (CPython gh-86296): the collector's connect did so."""

    async def start(self) -> Sequence[Awaitable[object]]:
        return (self._work(),)

    async def _work(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            SEEN.setdefault("swallowed", []).append(True)
        await asyncio.Event().wait()  # carries on, until cancelled again


class NeverStarts(Job):
    async def start(self) -> Sequence[Awaitable[object]]:
        await asyncio.Event().wait()
        return ()


def spec(job: type[Job]) -> ChildSpec:
    return ChildSpec("stand-in", f"test_child:{job.__name__}", enabled=lambda c: True, settings=lambda c: None)


@dataclass
class Running:
    """A job run by run_child in a thread; `channel` is the supervisor's end."""

    channel: Channel
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)
    received: list[object] = field(default_factory=list)

    def collect(self, timeout: float) -> list[object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.received += wait_messages(self.channel, 0.02)
            except ChannelClosed:
                break
        return self.received

    def wait_for(self, kind: type, count: int = 1, timeout: float = 5.0) -> list[object]:
        deadline = time.monotonic() + timeout
        while len([m for m in self.received if isinstance(m, kind)]) < count:
            assert time.monotonic() < deadline, f"no {count} {kind.__name__} within {timeout} s: {self.received}"
            self.received += wait_messages(self.channel, 0.02)
        return [m for m in self.received if isinstance(m, kind)]

    def ended(self, timeout: float = 5.0) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the child's loop did not end"
        return self.errors[0] if self.errors else None


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    monkeypatch.setattr(rctmon.child, "HEARTBEAT_INTERVAL", 0.05)
    SEEN.clear()
    running: list[Running] = []

    def start(job: type[Job]) -> Running:
        ours, theirs = Channel.pair()
        errors: list[BaseException] = []

        def main() -> None:
            try:
                run_child(spec(job), Config(), theirs)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                errors.append(exc)
            finally:
                theirs.close()

        thread = threading.Thread(target=main, daemon=True)
        thread.start()
        running.append(Running(ours, thread, errors))
        return running[-1]

    yield start
    for one in running:
        one.channel.send(Stop())
        one.channel.flush()
        one.thread.join(5)
        one.channel.close()


def test_messages_in_order_until_stop_then_a_last_heartbeat_and_a_clean_end(run) -> None:
    child = run(Recorder)
    child.wait_for(Started)
    first, second, late = ReadingBatch((), 1), ReadingBatch((), 2), ReadingBatch((), 3)
    child.channel.send(first)
    child.channel.send(second)
    child.channel.send(Stop())
    child.channel.send(late)
    assert child.ended() is None
    child.collect(0.2)
    assert SEEN["Recorder"] == [first, second] and SEEN["stopped"] == [True]
    beats = [m for m in child.received if isinstance(m, Heartbeat)]
    assert beats[-1].stats == {"received": 2} and beats[-1].process == "stand-in"


def test_heartbeats_carry_the_jobs_stats_and_the_process_figures(run) -> None:
    child = run(Recorder)
    beats = child.wait_for(Heartbeat, 3)
    assert all(isinstance(b, Heartbeat) and b.rss_bytes > 0 and b.stats == {"received": 0} for b in beats)


def test_a_job_that_does_not_work_sends_no_heartbeat(run) -> None:
    child = run(NotWorking)
    child.wait_for(Started)
    assert not [m for m in child.collect(0.5) if isinstance(m, Heartbeat)]  # ten intervals


def test_the_supervisor_going_away_ends_the_child_cleanly(run) -> None:
    child = run(Recorder)
    child.wait_for(Started)
    child.channel.close()
    assert child.ended() is None


@pytest.mark.parametrize("how", ["stop", "supervisor gone"])
def test_work_that_swallows_a_cancellation_is_cancelled_again(run, how: str) -> None:
    child = run(SwallowsOneCancel)
    child.wait_for(Started)
    if how == "stop":
        child.channel.send(Stop())
    else:
        child.channel.close()
    assert child.ended() is None
    assert SEEN["swallowed"] == [True]


def test_stop_while_starting_ends_the_child_without_started(run) -> None:
    child = run(NeverStarts)
    child.channel.send(Stop())
    assert child.ended() is None
    assert not [m for m in child.collect(0.1) if isinstance(m, Started)]


@pytest.mark.parametrize("job, reason", [
    (DyingTask, "the work broke"),
    (EndingTask, "its background work ended"),
    (DyingThread, "the worker thread has ended"),
])
def test_background_work_that_ends_fails_the_child(run, job: type[Job], reason: str) -> None:
    child = run(job)
    error = child.ended()
    assert isinstance(error, ChildFailed) and reason in str(error)


def test_a_thread_that_ends_while_the_child_stops_does_not_fail_it(run) -> None:
    child = run(StoppingThread)
    child.wait_for(Started)
    child.channel.send(Stop())
    assert child.ended() is None


def test_a_message_the_job_cannot_handle_fails_the_child(run) -> None:
    child = run(BrokenReceiver)
    child.wait_for(Started)
    child.channel.send(ReadingBatch((), 1))
    error = child.ended()
    assert isinstance(error, ChildFailed) and "handling a message failed" in str(error)


def test_the_collector_counts_readings_a_full_channel_refuses() -> None:
    async def scenario() -> CollectorStats:
        loop = asyncio.get_running_loop()
        ours, theirs = Channel.pair(max_pending=1000)  # the supervisor's end is never read
        context = ChildContext("collector", Config(), loop, None)
        context.link = Link(theirs, loop, lambda messages: None, lambda: None)
        stats = CollectorStats()
        sink = ChannelSink(context, stats)
        batch = tuple((1, 1.0, n) for n in range(10))
        for _ in range(20000):  # far more than the socket buffer and the 1000 bytes of channel
            sink.readings(batch)
        context.link.close()
        ours.close()
        theirs.close()
        return stats

    stats = asyncio.run(scenario())
    assert stats.readings_dropped["channel_full"] > 0
    assert stats.readings_dropped["channel_full"] % 10 == 0  # whole batches
