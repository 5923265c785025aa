"""The chunked line index: every edit gives the index a fresh build of the new text would."""

from __future__ import annotations

import random

import pytest

from lsp_server import lineindex
from lsp_server.convert import UTF8, UTF16, UTF32, LineIndex

PIECES = ["a", "bc", "\x0c", "\u2028", "\n", "\r\n", "\r", "é", "\U0001F600", "    ", "def f():\n", ""]


def _same(got: LineIndex, text: str) -> None:
    fresh = LineIndex(text)
    assert got.text == text and len(got) == len(text)
    assert got.starts == fresh.starts and got.line_count == len(fresh.starts)
    for enc in (UTF8, UTF16, UTF32):
        for off in range(0, len(text) + 1, max(1, len(text) // 40)):
            line, col = got.position(off, enc)
            assert (line, col) == fresh.position(off, enc)
            assert got.offset(line, col, enc) == fresh.offset(line, col, enc)
    for line in range(got.line_count + 1):
        assert got.offset(line, 3) == fresh.offset(line, 3)


@pytest.mark.parametrize("seed", range(6))
def test_random_edits_match_a_fresh_index(monkeypatch, seed):
    monkeypatch.setattr(lineindex, "CHUNK", 8)
    monkeypatch.setattr(lineindex, "_MAX", 32)
    rng = random.Random(seed)
    pieces = PIECES if seed % 2 else [p for p in PIECES if p not in ("\x0c", "\u2028")]  # both starts paths
    text = "".join(rng.choice(pieces) for _ in range(200))
    index = LineIndex(text)
    _same(index, text)
    for _ in range(120):
        a = rng.randint(0, len(text))
        b = min(len(text), a + rng.choice([0, 0, 1, 2, 5, 40]))
        new = "".join(rng.choice(pieces) for _ in range(rng.choice([0, 1, 3, 30])))
        old = index
        index = index.edited(a, b, new)
        old_text, text = text, text[:a] + new + text[b:]
        assert old.text == old_text  # the old index is a snapshot
        assert all(c.text.endswith("\n") for c in index._chunks[:-1])
    _same(index, text)


def test_edits_share_untouched_chunks():
    text = "x = 1\n" * 20000
    index = LineIndex(text)
    edited = index.edited(10, 10, "y")
    shared = sum(a is b for a, b in zip(index._chunks, edited._chunks))
    assert shared >= len(index._chunks) - 2
    assert edited.text == text[:10] + "y" + text[10:]


@pytest.mark.parametrize("order", ["bottom_up", "top_down", "random"])
def test_editor_batch_matches_edits_one_at_a_time(monkeypatch, order):
    """A batch over one `Editor` (positions read against the text the earlier edits left)
    gives what a fresh index per edit gives, whatever the order of the edits."""
    monkeypatch.setattr(lineindex, "CHUNK", 16)
    monkeypatch.setattr(lineindex, "_MAX", 64)
    rng = random.Random(order)
    text = "".join(rng.choice(PIECES) for _ in range(600))
    one_by_one, editor = LineIndex(text), lineindex.Editor(LineIndex(text))
    lines = list(range(0, LineIndex(text).line_count, 3))
    lines = {"bottom_up": lines[::-1], "top_down": lines, "random": rng.sample(lines, len(lines))}[order]
    for line in lines:
        col, new = rng.choice([0, 1, 2]), rng.choice(["#", "", "x\n", "\r\nyy", "é"])
        a = one_by_one.offset(line, col)
        b = min(len(one_by_one), a + rng.choice([0, 0, 1, 4]))
        assert editor.offset(line, col) == a and len(editor) == len(one_by_one)
        one_by_one = one_by_one.edited(a, b, new)
        editor.edit(a, b, new)
        assert editor.line_count == one_by_one.line_count
    _same(editor.index(), one_by_one.text)


def test_editor_can_empty_and_refill_a_text():
    editor = lineindex.Editor(LineIndex("a\nb\n"))
    editor.edit(0, 4, "")
    assert editor.index().text == "" and editor.line_count == 1
    editor.edit(0, 0, "x\r\ny")
    _same(editor.index(), "x\r\ny")
