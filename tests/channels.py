"""The test's end of a child's channel: wait for messages the way the supervisor's selector loop would."""

from __future__ import annotations

import select

from rctmon.channel import Channel


def wait_messages(channel: Channel, timeout: float | None) -> list[object]:
    """Flush what is queued, then wait up to `timeout` seconds for messages and return them (raise ChannelClosed
    once the other end has gone)."""
    channel.flush()
    writers = [channel] if channel.pending_bytes else []
    readable, writable, _ = select.select([channel], writers, [], timeout)
    if writable:
        channel.flush()
    return channel.receive() if readable else []
