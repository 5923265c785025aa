"""Clipping once, in the model's tokens, by rank: the outline survives a long prefix, the window
keeps its start across keystrokes, the suffix's end does not move while typing."""

from __future__ import annotations

import pytest

from engine import ContextSegment, Engine, InfillRequest
from engine.clip import Piece, clip, window_start


def _chars(text: str) -> tuple[list[int], list[int]]:
    """One token per character: ids = code points, starts = offsets."""
    return [ord(c) for c in text], list(range(len(text)))


def test_ranked_pieces_fill_what_the_window_leaves_lowest_rank_first():
    prefix = "".join(f"line {i:03d}\n" for i in range(100))  # 900 chars
    ids, starts = _chars(prefix)
    head = prefix.index("line 002")
    pieces = [Piece(ids=tuple(range(30)), rank=5, kind="outline", start=head, end=head + 9),
              Piece(ids=tuple(range(20)), rank=1, kind="scope", start=0, end=9),
              Piece(ids=tuple(range(80)), rank=2, kind="too_big", start=20, end=29),
              Piece(ids=tuple(range(10)), rank=9, kind="other_file")]
    out = clip(prefix, ids, starts, suffix_ids=list(range(50)), pieces=pieces, budget=200)
    assert out.kinds == ("other_file", "scope", "outline")  # canvas order: other files, then document order
    assert len(out.prefix) + len(out.suffix) <= 200
    assert out.prefix[-out.window:] == ids[-out.window:] and out.window >= (200 - 50 - 60) // 2  # slack: >= half
    assert len(out.suffix) == 50


def test_pieces_inside_the_window_are_not_repeated():
    prefix = "x" * 50
    ids, starts = _chars(prefix)
    out = clip(prefix, ids, starts, [], [Piece(ids=(1, 2), rank=0, kind="scope", start=40, end=45)], budget=100)
    assert out.kinds == () and out.prefix == ids


def test_window_start_sticks_to_its_anchor_while_it_fits():
    prefix = "".join(f"row{i}\n" for i in range(200))
    ids, starts = _chars(prefix)
    w = window_start(prefix, starts, 300)
    assert prefix[starts[w - 1]] == "\n"  # a restarted window starts at a line
    anchor = prefix[starts[w]:starts[w] + 24]
    typed = prefix + "abcdefghij"  # ten keystrokes later
    ids2, starts2 = _chars(typed)
    assert starts2[window_start(typed, starts2, 300, anchor)] == starts[w]
    longer = typed + "y" * 400  # no longer fits: restarts with slack
    ids3, starts3 = _chars(longer)
    assert len(ids3) - window_start(longer, starts3, 300, anchor) <= 300


def test_suffix_end_does_not_move_while_typing():
    suffix = list(range(500))
    a = clip("p" * 900, *_chars("p" * 900), suffix, [], budget=400)
    b = clip("p" * 903, *_chars("p" * 903), suffix, [], budget=400)
    assert a.suffix == b.suffix == suffix[:100]


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cpu")


def test_outline_survives_a_long_prefix(engine):
    """The outline of the far text reaches the canvas when the prefix alone is longer than the
    model allows: the engine clips once, by rank (before, the server put the outline at the start
    of the prefix and the engine kept the prefix's end)."""
    header = "class Inventory:\n"
    prefix = header + "".join(f"    x{i} = {i}\n" for i in range(1500)) + "    def total(self):\n        return "
    seg = ContextSegment(text=header, rank=0, kind="scope", at=0)
    with_outline = engine.infill(InfillRequest(prefix=prefix, suffix="\n", hole_tokens=4, max_new_tokens=4,
                                               context=(seg,), max_context_tokens=256))
    assert with_outline.kept == ("scope",)
    p, s = with_outline.context_tokens
    assert p + s <= 256
    plain = engine.infill(InfillRequest(prefix=prefix, suffix="\n", hole_tokens=4, max_new_tokens=4,
                                        max_context_tokens=256))
    assert plain.kept == ()


def test_one_off_requests_use_the_whole_budget_and_zero_budget_keeps_nothing():
    prefix = "".join(f"row{i}\n" for i in range(200))
    ids, starts = _chars(prefix)
    assert len(ids) - window_start(prefix, starts, 300, slack=0.0) > 0.9 * 300
    assert window_start(prefix, starts, 0) == len(ids)
    out = clip(prefix, ids, starts, list(range(10)), [], budget=0)
    assert out.prefix == [] and out.suffix == []


def test_suffix_end_does_not_move_while_typing_near_the_start_of_a_file():
    """A short prefix leaves budget to the suffix in steps of 128 tokens, not one token per keystroke."""
    suffix = list(range(2000))
    sizes = {len(clip("p" * n, *_chars("p" * n), suffix, [], budget=498).suffix) for n in range(30, 60)}
    assert len(sizes) == 1


def test_kept_pieces_stay_the_same_while_the_window_keeps_its_anchor():
    """A piece that appears (or ranks higher) while the user types does not join the canvas until
    the window restarts: joining would move every token after it, and reuse with them."""
    prefix = "".join(f"line {i:03d}\n" for i in range(100))
    ids, starts = _chars(prefix)
    old = Piece(ids=tuple(range(30)), rank=5, kind="outline", start=0, end=9)
    first = clip(prefix, ids, starts, [], [old], budget=200, slack=0.25)
    anchor = prefix[first.window_start:first.window_start + 24]
    typed = prefix + "abc"
    ids2, starts2 = _chars(typed)
    new = Piece(ids=tuple(range(10)), rank=1, kind="scope", start=20, end=29)
    again = clip(typed, ids2, starts2, [], [old, new], budget=200, anchor=anchor, previous=frozenset(first.kept_ids))
    assert again.kinds == ("outline",) and again.window_start == first.window_start
    assert again.prefix[:30] == first.prefix[:30]
    fresh = clip(typed, ids2, starts2, [], [old, new], budget=200, anchor=anchor)
    assert "scope" in fresh.kinds
    far = typed + "x" * 300  # the anchored window no longer fits: select afresh
    ids3, starts3 = _chars(far)
    restarted = clip(far, ids3, starts3, [], [old, new], budget=200, anchor=anchor, previous=frozenset(first.kept_ids))
    assert "scope" in restarted.kinds
