"""Reuse of keys/values across runs on the same text (keystrokes in one document, growth rounds
within a run). Works on token ids and caches only.

Typing at the cursor changes the end of the prefix and moves the hole; the text before the edit
keeps its tokens and positions, the suffix keeps its tokens at shifted positions. So a new canvas
is compared with the previous one: the common head (before the first hole) keeps its keys/values,
the common tail (after the last hole) keeps them re-rotated to the new positions
(`engine.kv_cache.splice`), and one step over the rows in between (the edited tokens and the
holes) fills the rest and yields the hidden states of the first denoising step.

Exactness, layer by layer (`ModelArgs.causal_layers`): in a causal layer the head's keys/values
depend only on the head itself, so they are exactly those a full prefill computes, and so are the
step's rows. The tail's keys/values in every layer, and the head's in a bidirectional layer, saw
the old text around the edit: the approximation Fast-dLLM's prefix/dual cache makes between
refreshes (Wu et al. 2025, arXiv:2505.22618). `ReusePolicy.max_age` bounds how many edits pile up
before a full prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.kv_cache import KVCache

if TYPE_CHECKING:
    from engine.expert import BaseState


@dataclass(frozen=True)
class ReusePolicy:
    """When a previous canvas's cache is reused instead of a full prefill.

    Attributes:
        enabled: False = always prefill (the baseline).
        max_changed: the most rows the bridging step may run; larger edits prefill.
        min_reused: reuse only when at least this share of the new canvas is reused.
        max_age: prefill after this many reuses in a row (None = never forced).
    """

    enabled: bool = True
    max_changed: int = 192
    min_reused: float = 0.5
    max_age: int | None = None


@dataclass
class Session:
    """What a session keeps between runs: the canvas as last prefilled or spliced (holes masked),
    where its holes were, the cache, the clipping anchor and how many reuses in a row it holds."""

    canvas: list[int] | None = None
    holes: tuple[int, int] = (0, 0)  # first hole's start, last hole's end (exclusive)
    cache: KVCache | None = None
    anchor: str | None = None
    pieces: frozenset[tuple[int, ...]] | None = None  # the context segments (ids) the window kept
    age: int = 0
    base: BaseState | None = None  # the base's keys/values for its reading (`engine.expert`)


@dataclass(frozen=True)
class Plan:
    """Rows [0, head) and [length - tail, length) come from the old cache; the rest are computed."""

    head: int
    tail: int
    length: int

    @property
    def reused(self) -> int:
        return self.head + self.tail


def common_head(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan(old: list[int], old_holes: tuple[int, int], new: list[int], new_holes: tuple[int, int],
         policy: ReusePolicy, age: int) -> Plan | None:
    """How much of `new` can take its keys/values from `old`'s cache; None = prefill.

    Args:
        old, new: canvases (ids); *_holes: (start of the first hole, end of the last hole).
        age: reuses in a row behind the old cache.
    """
    if not policy.enabled or (policy.max_age is not None and age >= policy.max_age):
        return None
    head = common_head(old[:old_holes[0]], new[:new_holes[0]])
    tail = common_head(old[old_holes[1]:][::-1], new[new_holes[1]:][::-1])
    if head == 0 or len(new) - head - tail > policy.max_changed or head + tail < policy.min_reused * len(new):
        return None
    return Plan(head=head, tail=tail, length=len(new))
