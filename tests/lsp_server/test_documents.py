"""Incremental document sync with non-ASCII text in every position encoding."""

from __future__ import annotations

import asyncio
import threading

from lsprotocol import types

from lsp_server.convert import UTF8, UTF16, UTF32
from lsp_server.documents import DocumentStore

EMOJI = "\U0001F600"


def _change(sl, sc, el, ec, text):
    return types.TextDocumentContentChangePartial(
        range=types.Range(start=types.Position(line=sl, character=sc), end=types.Position(line=el, character=ec)),
        text=text)


def test_incremental_utf16_after_surrogate_pair():
    store = DocumentStore()
    store.open("file:///a.py", "python", 1, f"s = '{EMOJI}'\nx = 1\n")
    # ' after the emoji is at UTF-16 column 7 (the emoji is 2 units)
    store.change("file:///a.py", 2, [_change(0, 7, 0, 7, "!")], UTF16)
    assert store.get("file:///a.py").text == f"s = '{EMOJI}!'\nx = 1\n"
    assert store.get("file:///a.py").version == 2


def test_incremental_utf8_and_utf32():
    store = DocumentStore()
    store.open("u", "python", 1, "é = 1\n")
    store.change("u", 2, [_change(0, 2, 0, 2, "x")], UTF8)  # after the 2-byte é
    assert store.get("u").text == "éx = 1\n"
    store.change("u", 3, [_change(0, 1, 0, 2, "")], UTF32)
    assert store.get("u").text == "é = 1\n"


def test_several_changes_apply_in_order_and_full_change():
    store = DocumentStore()
    store.open("u", "python", 1, "abc\n")
    store.change("u", 2, [_change(0, 3, 0, 3, "d"), _change(0, 0, 0, 1, "")], UTF16)
    assert store.get("u").text == "bcd\n"
    store.change("u", 3, [types.TextDocumentContentChangeWholeDocument(text="new")], UTF16)
    assert store.get("u").text == "new"


def test_out_of_range_changes_clamp_and_unknown_uris_are_ignored():
    store = DocumentStore()
    store.open("u", "python", 1, "ab\ncd")
    store.change("u", 2, [_change(7, 0, 9, 9, "!")], UTF16)
    assert store.get("u").text == "ab\ncd!"
    assert store.change("nope", 1, [_change(0, 0, 0, 0, "x")], UTF16) is False
    store.close("u")
    assert store.get("u") is None


def test_changes_off_the_loop_apply_in_order_and_readers_wait():
    """A change queued on the documents thread, then a small change, a close and a reopen
    arriving while it applies: all apply in arrival order, and `settled` waits for them."""
    text = "x = 1\n" * 5000
    big = [_change(2 * i, 0, 2 * i, 0, "#") for i in range(200)][::-1]  # bottom-up, as VS Code sends
    started, release = threading.Event(), threading.Event()

    def read():
        started.set()
        release.wait(10)  # hold the queue: later mutations must wait behind this one
        return 2, big

    async def main():
        store = DocumentStore()
        store.open("u", "python", 1, text)
        store.change_off_loop("u", read, UTF16)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        assert store.busy("u")
        assert store.change("u", 3, [_change(0, 0, 0, 0, "A")], UTF16)  # queued behind the big one
        assert store.get("u").version == 1  # nothing applied yet
        release.set()
        await store.settled("u")
        assert not store.busy("u")
        doc = store.get("u")
        expected = "".join(("A#" if i == 0 else "#" if i % 2 == 0 and i < 400 else "") + "x = 1\n"
                           for i in range(5000))
        assert doc.version == 3 and doc.text == expected, "not the changes in arrival order"
        store.change_off_loop("u", lambda: (4, [_change(0, 0, 0, 0, "B")]), UTF16)
        store.close("u")
        store.open("u", "python", 7, "new")
        await store.settled("u")
        assert store.get("u").version == 7 and store.get("u").text == "new"
        store.change_off_loop("gone", lambda: (1, [_change(0, 0, 0, 0, "x")]), UTF16)
        store.change_off_loop("u", lambda: None, UTF16)  # malformed params: nothing changes
        await store.settled("gone")
        await store.settled("u")
        assert store.get("gone") is None and store.get("u").text == "new"
        store.shutdown()

    asyncio.run(main())
