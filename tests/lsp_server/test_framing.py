"""The resynchronizing framer: one bad message costs itself, never the stream."""

from __future__ import annotations

import json

from lsp_server.framing import Frame, Framer, FramingError, frame

A = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "a", "params": {"text": "é😀"}}).encode()
B = json.dumps({"jsonrpc": "2.0", "id": 2, "method": "b"}).encode()


def _bodies(items):
    return [i.body for i in items if isinstance(i, Frame)]


def _errors(items):
    return [i for i in items if isinstance(i, FramingError)]


def test_good_stream_in_any_chunking():
    data = frame(A) + b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n" + frame(B)
    for size in (1, 3, 7, len(data)):
        f = Framer()
        items = [x for i in range(0, len(data), size) for x in f.feed(data[i:i + size])]
        assert _bodies(items) == [A, B] and not _errors(items)


def test_length_a_few_bytes_short_or_long_resyncs():
    for delta in (-3, -1, 1, 3):
        f = Framer()
        bad = b"Content-Length: %d\r\n\r\n" % (len(A) + delta) + A
        items = f.feed(bad + frame(B))
        assert _bodies(items)[-1] == B
        assert A in _bodies(items)  # the cut falls at the next header: the message survives


def test_too_long_length_answers_when_the_client_goes_quiet():
    f = Framer()
    assert f.feed(b"Content-Length: %d\r\n\r\n" % (len(A) + 4) + A) == []
    assert _bodies(f.idle()) == [A]
    assert _bodies(f.feed(frame(B))) == [B]


def test_huge_length_is_refused_without_allocating_and_stream_continues():
    f = Framer(max_bytes=1 << 20)
    items = f.feed(b"Content-Length: 1000000000000\r\n\r\n{\"x\": 1}" + frame(B))
    assert "too large" in _errors(items)[0].message and _errors(items)[0].code == -32600
    assert _bodies(items) == [B]


def test_garbage_headers_and_missing_length():
    f = Framer()
    items = f.feed(b"garbage\r\nmore garbage\r\n\r\n" + b"Content-Type: x\r\n\r\n{}" + frame(B)
                   + b"Content-Length: abc\r\n\r\n" + frame(A))
    assert _bodies(items) == [B, A] and len(_errors(items)) >= 2


def test_garbage_without_header_is_bounded_then_recovers():
    f = Framer()
    for _ in range(100):
        assert _bodies(f.feed(b"x" * 10000)) == []
    assert len(f._buf) < 100
    assert _bodies(f.feed(frame(B))) == [B]


def test_header_text_inside_a_json_string_is_not_a_cut():
    body = json.dumps({"jsonrpc": "2.0", "method": "x", "params": {"t": "Content-Length: 5\r\n\r\n"}}).encode()
    f = Framer()
    data = frame(body)
    items = f.feed(data[:30]) + f.feed(data[30:]) + f.feed(frame(B))
    assert _bodies(items) == [body, B]
