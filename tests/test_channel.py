import os

import pytest

from rctmon.channel import Channel, ChannelClosed
from support import wait_messages
from rctmon.messages import ReadingBatch


def test_messages_arrive_in_order_and_whole() -> None:
    a, b = Channel.pair()
    try:
        batches = [ReadingBatch(tuple((i, float(j), j) for j in range(i % 50)), seq=i) for i in range(200)]
        for batch in batches:
            assert a.send(batch)
        received = []
        while len(received) < len(batches):
            a.flush()
            received += wait_messages(b, 1.0)
        assert received == batches
    finally:
        a.close()
        b.close()


def test_send_never_blocks_when_the_peer_does_not_read() -> None:
    a, b = Channel.pair(max_pending=1 << 20)
    try:
        big = ReadingBatch(tuple((i, 1.0, i) for i in range(5000)))
        results = [a.send(big) for _ in range(200)]  # far more than socket buffer plus max_pending
        assert results[0] and not all(results), "the channel must refuse, not block, once full"
        assert a.pending_bytes <= (1 << 20) + 200_000
        count = 0
        while count < results.count(True):  # everything accepted arrives once the peer reads
            a.flush()
            count += len(wait_messages(b, 1.0))
        assert count == results.count(True)
    finally:
        a.close()
        b.close()


def test_peer_closing_is_reported_after_pending_messages() -> None:
    a, b = Channel.pair()
    a.send("last words")
    a.close()
    assert wait_messages(b, 1.0) == ["last words"]
    with pytest.raises(ChannelClosed):
        wait_messages(b, 1.0)
    b.close()


def test_sending_to_a_dead_peer_does_not_raise() -> None:
    a, b = Channel.pair()
    b.close()
    for _ in range(100):
        a.send(b"x" * 100_000)
    assert a.closed
    a.close()


def test_a_partial_message_waits_for_its_rest() -> None:
    a, b = Channel.pair()
    try:
        import pickle
        import struct
        data = pickle.dumps("whole")
        frame = struct.pack(">I", len(data)) + data
        os.write(a.fileno(), frame[:3])
        assert wait_messages(b, 0.1) == []
        os.write(a.fileno(), frame[3:])
        assert wait_messages(b, 1.0) == ["whole"]
    finally:
        a.close()
        b.close()
