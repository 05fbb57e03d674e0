"""Issue 11, hand-written HTTP parsing: requests the old parser got wrong, each refused now with a 4xx and closed.

Found by attacking the old endpoint: `Content-Length: \\xb2` or 5,000 digits got no answer and a 16-line ERROR
traceback per request; `GET http://[zz]/` a 500 and a traceback per request (2,000 pipelined ones wrote 32,000 log
lines in 1.2 s); with two Content-Length headers the first won and a request hidden in the body was answered
(request smuggling behind a proxy); bare CR and NUL in header values and a missing Host were accepted.
"""

from __future__ import annotations

import pytest

from endpoint_harness import endpoint_child, exchange, start_child, statuses

__all__ = ["endpoint_child"]  # the fixture, imported so that pytest finds it here

pytestmark = pytest.mark.timeout(60)

HIDDEN = b"GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n"

#: (name, request, status): each is answered with that status alone, and the connection is closed.
REFUSED = [
    ("content_length_superscript_two", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n", 400),
    ("content_length_5000_digits", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000
     + b"\r\n\r\n", 400),
    ("content_length_negative", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("content_length_absurd", b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n", 413),
    ("absolute_form_bad_ipv6", b"GET http://[zz]/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("two_content_lengths_first_zero", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: "
     + str(len(HIDDEN)).encode() + b"\r\n\r\n" + HIDDEN, 400),
    ("two_content_lengths_first_long", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(HIDDEN)).encode()
     + b"\r\nContent-Length: 0\r\n\r\n" + HIDDEN, 400),
    ("content_length_and_chunked", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
     b"\r\n\r\n0\r\n\r\n" + HIDDEN, 400),
    ("bare_cr_in_value", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    ("nul_in_value", b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    ("missing_host", b"GET /metrics HTTP/1.1\r\n\r\n", 400),
    ("two_hosts", b"GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("host_with_space", b"GET /metrics HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("space_before_colon", b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n", 400),
    ("garbage", b"GARBAGE\r\n\r\n", 400),
    ("http_2", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("post", b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab", 501),
    ("gzip_transfer_coding", b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    ("huge_header", b"GET / HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    ("many_headers", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
]


@pytest.fixture(scope="module")
def shared_child(tmp_path_factory):
    """One child for the table of refused requests: starting one per case would cost more than the cases."""
    child = start_child(str(tmp_path_factory.mktemp("endpoint") / "prometheus.log"))
    try:
        child.wait_started()
        yield child
    finally:
        child.stop()


@pytest.mark.parametrize("request_, status", [pytest.param(r, s, id=name) for name, r, s in REFUSED])
def test_issue11_a_malformed_request_is_refused_alone_and_closed(shared_child, request_, status):
    answer = exchange(shared_child.port, request_)
    assert statuses(answer) == [status], answer[:300]
    assert b"Connection: close" in answer or b"connection: close" in answer
    assert b"rctmon_" not in answer
    assert not any("Traceback" in line for line in shared_child.log_lines())


def test_issue11_a_refusal_after_a_good_request_ends_the_keep_alive_connection(shared_child):
    answer = exchange(shared_child.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n" + HIDDEN)
    assert statuses(answer) == [200, 400]


def test_issue11_two_thousand_bad_requests_write_a_line_or_two_and_no_traceback(endpoint_child):
    child = endpoint_child()
    before = len(child.log_lines())
    answer = exchange(child.port, b"GET http://[zz]/ HTTP/1.1\r\nHost: x\r\n\r\n" * 2000)
    assert statuses(answer)[:1] == [400] and len(statuses(answer)) <= 1
    for request_ in (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n",
                     b"GET /metrics HTTP/1.1\r\n\r\n", b"GET http://[zz]/ HTTP/1.1\r\nHost: x\r\n\r\n"):
        for _ in range(30):  # the same client on fresh connections
            assert statuses(exchange(child.port, request_)) == [400]
    assert child.get()[0] == 200, "the endpoint goes on"
    written = child.log_lines()[before:]
    assert len(written) <= 3, written[:10]
    assert not any("Traceback" in line for line in written)
