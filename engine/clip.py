"""Clip a request's context to a token budget, once, in tokens of the loaded model, by rank.

Works on token ids and character offsets of the prefix; knows nothing about documents or syntax
(`lsp_server.context` decides what the segments are and ranks them). The cursor window (the end
of the prefix, the start of the suffix) always comes first; ranked segments (enclosing scope
headers, imports, sibling signatures, other files) fill what the window leaves, lowest rank
first; whatever is still left widens the window.

Stability matters as much as selection: the engine reuses keys/values across keystrokes only
when the canvas keeps its start. The suffix gets a fixed share, so typing in the prefix never
moves it, and the window start sticks to an anchor (the text the previous window started with)
for as long as the window still fits; when it no longer does, the window restarts with slack so
that this happens rarely.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_QUANTUM = 128  # budget the prefix leaves goes to the suffix in steps of this, so its end rarely moves


@dataclass(frozen=True)
class Piece:
    """A tokenized ranked segment.

    Attributes:
        ids: its tokens; rank: lower is kept first; kind: what it is (reported back).
        start, end: its character span in the prefix, or None for text from elsewhere (other
            files), which goes before everything else in the order given.
    """

    ids: tuple[int, ...]
    rank: int
    kind: str
    start: int | None = None
    end: int | None = None


@dataclass(frozen=True)
class Clipped:
    """What goes on the canvas: prefix = pieces + window, suffix = its first tokens.

    Attributes:
        prefix, suffix: token ids.
        window: tokens of the prefix's own end kept (the rest of `prefix` are pieces).
        window_start: character offset in the prefix where the window starts.
        kinds: the kinds of the pieces kept, in canvas order; kept_ids: their tokens.
    """

    prefix: list[int]
    suffix: list[int]
    window: int
    window_start: int
    kinds: tuple[str, ...]
    kept_ids: tuple[tuple[int, ...], ...] = ()


def split_budget(n_prefix: int, n_suffix: int, budget: int, prefix_share: float = 0.75) -> tuple[int, int]:
    """Tokens to keep of prefix and suffix: the suffix gets at most `1 - prefix_share` of the
    budget (a fixed share, so typing in the prefix never moves the suffix's end), the prefix the
    rest; whatever one side does not need goes to the other."""
    budget = max(0, budget)
    s = min(n_suffix, budget - int(budget * prefix_share))
    p = min(n_prefix, budget - s)
    s = min(n_suffix, budget - p)
    return p, s


def _first_token_at(starts: Sequence[int], offset: int) -> int:
    """Index of the first token starting at or after `offset` (len(starts) if none)."""
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if starts[mid] < offset:
            lo = mid + 1
        else:
            hi = mid
    return lo


def anchored_start(prefix: str, starts: Sequence[int], budget: int, anchor: str | None) -> int | None:
    """The token where `anchor` (the previous window's first text) starts the window, if it is
    found at a token start and the window from there fits `budget`; else None."""
    if not anchor:
        return None
    at = prefix.rfind(anchor)
    if at < 0:
        return None
    i = _first_token_at(starts, at)
    return i if i < len(starts) and starts[i] == at and len(starts) - i <= budget else None


def window_start(prefix: str, starts: Sequence[int], budget: int, anchor: str | None = None,
                 slack: float = 0.25) -> int:
    """The index of the first prefix token the window keeps, at most `budget` tokens from the end.

    Args:
        prefix: the prefix text; starts: (N,) character offset of each of its tokens.
        budget: the most tokens the window may take.
        anchor: the text the previous window started with: kept as the start while it fits.
        slack: a restarted window takes `(1 - slack) * budget` tokens, at a line start when one
            is near, so that it fits for a while as the user types.
    """
    n = len(starts)
    if n <= budget:
        return 0
    if budget <= 0:
        return n
    i = anchored_start(prefix, starts, budget, anchor)
    if i is not None:
        return i
    i = n - max(1, int(budget * (1 - slack)))
    line = prefix.find("\n", starts[i])
    j = _first_token_at(starts, line + 1) if line >= 0 else n
    return j if j < n and n - j >= budget // 2 else i


def clip(prefix: str, prefix_ids: Sequence[int], starts: Sequence[int], suffix_ids: Sequence[int],
         pieces: Sequence[Piece], budget: int, anchor: str | None = None,
         prefix_share: float = 0.75, slack: float = 0.25,
         previous: frozenset[tuple[int, ...]] | None = None) -> Clipped:
    """Choose what of the context fits `budget` tokens.

    The suffix gets its share (`split_budget`); the prefix side gets the rest. The window is
    guaranteed half of the prefix side; pieces are taken by (rank, order) when they fit whole and
    lie before that half-window without overlapping each other; the window then takes what the
    pieces leave (pieces it covers are dropped: their text is in it). Budget the prefix does not
    use goes to the suffix in steps of `_QUANTUM` tokens.

    Args:
        prefix: prefix text; prefix_ids, starts: its tokens and their character offsets.
        suffix_ids: suffix tokens (the window keeps their start).
        pieces: ranked segments; budget: tokens for everything; anchor, slack: see `window_start`
            (slack 0 for a one-off request: no keystroke follows that could reuse its canvas).
        previous: the pieces (ids) the previous window of this text kept: while the window keeps
            its anchor, exactly those that are still present are kept again and no others, so
            the canvas's start stays put (a piece joining would move everything after it).
            A restarted window selects afresh.
    Returns:
        the `Clipped` canvas context.
    """
    extra = sum(len(p.ids) for p in pieces)
    n = len(prefix_ids)
    budget = max(0, budget)
    s_share = min(len(suffix_ids), budget - int(budget * prefix_share))  # fixed: typing never moves it
    p_side = min(n + extra, budget - s_share)
    chosen: list[Piece] = []
    sticky = None
    if previous is not None and anchor:
        again = [q for q in sorted(pieces, key=lambda q: q.rank) if q.ids in previous]
        w = anchored_start(prefix, starts, p_side - sum(len(q.ids) for q in again), anchor)
        sticky = None if w is None else again
    if sticky is not None:
        chosen = sticky
    elif pieces:
        floor = min(n, p_side // 2)
        floor_char = starts[n - floor] if floor < n else 0
        used = floor
        for piece in sorted(pieces, key=lambda q: q.rank):  # stable: ties keep the order given
            if used + len(piece.ids) > p_side:
                continue
            if piece.start is not None and (piece.end > floor_char or any(
                    c.start is not None and piece.start < c.end and c.start < piece.end for c in chosen)):
                continue
            chosen.append(piece)
            used += len(piece.ids)
    w = window_start(prefix, starts, p_side - sum(len(c.ids) for c in chosen), anchor, slack)
    w_char = starts[w] if w < n else len(prefix)
    chosen = [c for c in chosen if c.start is None or c.end <= w_char]  # the window covers the others
    left = budget - (n - w) - sum(len(c.ids) for c in chosen) - s_share
    s = min(len(suffix_ids), s_share + max(0, left) // _QUANTUM * _QUANTUM)
    far = [c for c in pieces if c in chosen and c.start is None]
    near = sorted((c for c in chosen if c.start is not None), key=lambda c: c.start)
    out: list[int] = [t for c in far + near for t in c.ids]
    return Clipped(prefix=out + list(prefix_ids[w:]), suffix=list(suffix_ids[:s]), window=n - w,
                   window_start=w_char, kinds=tuple(c.kind for c in far + near),
                   kept_ids=tuple(c.ids for c in far + near))
