"""The one loop every child process runs: the supervisor's messages in, heartbeats out, the child's job beside them.

A child (the collector, each exporter) is a `Job`, named by its registration (rctmon/registry.py) and run by
`run_child` in one asyncio loop:

- The supervisor's messages are handed to the job as they arrive (`Job.receive`), in order; Stop ends the child.
- Every HEARTBEAT_INTERVAL the job is asked whether it works (`Job.check`: the prometheus child asks its own
  endpoint). If it does, a `Heartbeat` with the process's memory and CPU and the job's figures (`Job.stats`) goes
  out; if not, none does, and the supervisor's silence limit restarts the child, exactly as if it had hung.
- Stop, or the supervisor going away (the channel closes), ends the child cleanly: its background work is
  cancelled, the job finishes what it holds (`Job.stop`), a last heartbeat carries its final figures, the channel
  is flushed, exit status 0.
- Background work that ends by itself is a failure, whatever it is: a task of the job's returns or raises, a thread
  reports its end (`ChildContext.fail`, safe from any thread), handling a message raises. The child then exits
  with status 1 (`ChildFailed`) and the supervisor starts a fresh one; a child that silently lost its serving
  thread or its writer would otherwise look alive for ever.

Threads (paho's network loop, the InfluxDB drain) talk to the loop only through `loop.call_soon_threadsafe`, which
wakes it through its own socket.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import socket
from typing import Any, Callable, cast
from collections.abc import Awaitable, Sequence

from rctmon.channel import Channel, ChannelClosed
from rctmon.config import Config
from rctmon.messages import Heartbeat, Started, Stats, Stop
from rctmon.proc import HEARTBEAT_INTERVAL, resource_usage
from rctmon.registry import ChildSpec

log = logging.getLogger("rctmon.child")

DRAIN_TIMEOUT = 0.5  # seconds the last messages get to reach the supervisor at exit
CANCEL_AGAIN = 0.05  # seconds after which a task that is still running is cancelled once more


class ChildFailed(Exception):
    """The child's background work ended by itself (already logged); the child exits with status 1."""


class Link:
    """The child's end of its channel, driven by the loop: `send` never waits, the loop writes what is pending."""

    def __init__(self, channel: Channel, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[list[object]], None], closed: Callable[[], None]) -> None:
        self._channel = channel
        self._loop = loop
        self._deliver = deliver
        self._closed = closed
        self._writing = False
        self._drained = asyncio.Event()
        self._reading = True
        loop.add_reader(channel.fileno(), self._readable)

    def send(self, message: object) -> bool:
        """Queue a message for the supervisor; False when the channel refused it (full, or closed)."""
        sent = self._channel.send(message)
        self._watch_writes()
        return sent

    @property
    def closed(self) -> bool:
        return self._channel.closed

    def _readable(self) -> None:
        try:
            messages = self._channel.receive()
        except ChannelClosed:
            self._stop_reading()
            self._closed()
            return
        if messages:
            self._deliver(messages)

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._channel.fileno())
            self._reading = False

    def _watch_writes(self) -> None:
        if self._channel.pending_bytes and not self._channel.closed and not self._writing:
            self._drained.clear()
            self._loop.add_writer(self._channel.fileno(), self._writable)
            self._writing = True

    def _writable(self) -> None:
        self._channel.flush()
        if not self._channel.pending_bytes or self._channel.closed:
            self._loop.remove_writer(self._channel.fileno())
            self._writing = False
            self._drained.set()

    async def drain(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for what is queued to be written."""
        if self._writing:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("exiting with %d bytes the supervisor did not take", self._channel.pending_bytes)

    def close(self) -> None:
        self._stop_reading()
        if self._writing and not self._channel.closed:
            self._loop.remove_writer(self._channel.fileno())
        self._writing = False


class ChildContext:
    """What a job gets from the loop: its configuration, a way to send, a way to fail, its listening socket."""

    def __init__(self, name: str, config: Config, loop: asyncio.AbstractEventLoop,
                 listen_socket: socket.socket | None) -> None:
        self.name = name
        self.config = config
        self.loop = loop
        self.listen_socket = listen_socket
        self.link: Link | None = None
        self.ending = False  # Stop arrived, the supervisor went away, or the child failed
        self.failure: asyncio.Future[str] = loop.create_future()

    def send(self, message: object) -> bool:
        """Send a message to the supervisor without waiting; False when the channel refused it."""
        return self.link is not None and self.link.send(message)

    def fail(self, reason: str) -> None:
        """Report that background work has ended, from any thread: the child exits with status 1.

        Ignored once the child is ending anyway (a thread stopped on purpose reports its end too).
        """
        try:
            self.loop.call_soon_threadsafe(self._fail, reason)
        except RuntimeError:  # the loop is closed: the child has ended already
            pass

    def _fail(self, reason: str) -> None:
        if not self.ending and not self.failure.done():
            self.failure.set_result(reason)


class Job:
    """What a child process does; rctmon.child runs it. A job overrides what applies to it."""

    def __init__(self, context: ChildContext) -> None:
        """Set up what messages need: they may arrive before `start` has finished."""
        self.context = context

    async def start(self) -> Sequence[Awaitable[object]]:
        """Start working; return the background work that runs until the child stops. `Started` follows."""
        return ()

    def receive(self, messages: Sequence[object]) -> None:
        """Handle messages from the supervisor, in the order they came (never Stop)."""

    def stats(self) -> Stats:
        """Return the figures the next heartbeat carries, by stat key."""
        return {}

    async def check(self) -> bool:
        """Return whether the job works; without a heartbeat the supervisor restarts the child."""
        return True

    async def stop(self) -> None:
        """Finish what is in hand: Stop arrived, or the supervisor went away."""

    def close(self) -> None:
        """Release what the job holds; runs last, however the child ends."""


def load_job(spec: ChildSpec) -> Callable[[ChildContext], Job]:
    """Import the job a registration names ("module:attribute")."""
    module, _, attribute = spec.job.partition(":")
    return cast(Callable[[ChildContext], Job], getattr(importlib.import_module(module), attribute))


def run_child(spec: ChildSpec, config: Config, channel: Channel, listen_socket: socket.socket | None = None) -> None:
    """Run the child's job until Stop or until the supervisor goes away; raise ChildFailed when its work ended."""
    asyncio.run(_serve(spec, config, channel, listen_socket))


async def _serve(spec: ChildSpec, config: Config, channel: Channel, listen_socket: socket.socket | None) -> None:
    loop = asyncio.get_running_loop()
    context = ChildContext(spec.name, config, loop, listen_socket)
    stopped = asyncio.Event()  # Stop, or the channel closed
    job: Job | None = None

    def deliver(messages: list[object]) -> None:
        if stopped.is_set() or job is None:
            return
        stop_at = next((i for i, m in enumerate(messages) if isinstance(m, Stop)), None)
        try:
            job.receive(messages if stop_at is None else messages[:stop_at])
        except Exception:  # noqa: BLE001 - the child must end, with the reason in the log
            log.exception("%s: handling a message failed", spec.name)
            context.fail("handling a message failed")
        if stop_at is not None:
            stopped.set()

    def supervisor_gone() -> None:
        log.info("the supervisor has gone; stopping")
        stopped.set()

    context.link = link = Link(channel, loop, deliver, supervisor_gone)
    tasks: list[asyncio.Future[Any]] = []
    failure: str | None = None
    try:
        job = load_job(spec)(context)
        failure = await _run(spec, job, context, stopped, tasks)
        context.ending = True
        await _cancel(tasks)
        if failure is None:
            await job.stop()
            rss, cpu = resource_usage()
            link.send(Heartbeat(spec.name, os.getpid(), rss, cpu, job.stats()))
    finally:
        context.ending = True
        await _cancel(tasks)
        try:
            if job is not None:
                job.close()
        finally:
            if not link.closed:
                await link.drain(DRAIN_TIMEOUT)
            link.close()
    if failure is not None:
        raise ChildFailed(failure)


async def _run(spec: ChildSpec, job: Job, context: ChildContext, stopped: asyncio.Event,
               tasks: list[asyncio.Future[Any]]) -> str | None:
    """Start the job and run it until it stops (return None) or its background work ends (return why)."""
    stop = asyncio.ensure_future(stopped.wait())
    starting = asyncio.ensure_future(job.start())
    tasks += [stop, starting]
    waiting: list[asyncio.Future[Any]] = [starting, stop, context.failure]
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if starting.done():
        work = [asyncio.ensure_future(w) for w in starting.result()]  # start() raising: the child crashes
        tasks += work
        context.send(Started(spec.name))
        beats = asyncio.ensure_future(_heartbeats(spec.name, job, context))
        tasks.append(beats)
        waiting = [stop, beats, context.failure, *work]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        ended = next((task for task in done if task is not stop), None)
        if beats in done and beats.exception() is not None:
            raise cast(BaseException, beats.exception())  # a bug in the loop itself: crash with the traceback
        if ended is not None and not context.failure.done():
            error = None if ended.cancelled() else ended.exception()
            if error is not None:
                log.error("%s: background work failed", spec.name, exc_info=error)
            context.failure.set_result("its background work ended" + (f" ({error!r})" if error else ""))
    if not context.failure.done():
        return None  # Stop, or the supervisor went away
    reason = context.failure.result()
    log.error("%s: %s; exiting so that the supervisor starts a fresh one", spec.name, reason)
    return reason


async def _cancel(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the tasks and wait until every one has ended.

    A task can swallow a cancellation: before Python 3.12, `asyncio.wait_for` returns the result of what it waited
    for when that completed in the same loop pass as the cancel (CPython gh-86296), so a collector cancelled just as
    its connect succeeds carries on polling. A task still running after CANCEL_AGAIN is cancelled again; one that
    swallows every cancellation is left to the supervisor's kill after its grace period.
    """
    pending = [task for task in tasks if not task.done()]
    while pending:
        for task in pending:
            task.cancel()
        _, still = await asyncio.wait(pending, timeout=CANCEL_AGAIN)
        pending = list(still)
    await asyncio.gather(*tasks, return_exceptions=True)


async def _heartbeats(name: str, job: Job, context: ChildContext) -> None:
    """Send a heartbeat every HEARTBEAT_INTERVAL while the job works (the first one at once)."""
    loop = asyncio.get_running_loop()
    pid = os.getpid()
    due = loop.time()
    while True:
        if await job.check():
            rss, cpu = resource_usage()
            context.send(Heartbeat(name, pid, rss, cpu, job.stats()))
        due += HEARTBEAT_INTERVAL
        await asyncio.sleep(max(0.0, due - loop.time()))
