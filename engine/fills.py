"""What a hole's fill is between denoising rounds: where it stops, whether it grows, what is
returned. Works on token id lists only (host side of `engine.generate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.config import ModelArgs
from engine.types import SamplingConfig

if TYPE_CHECKING:
    from engine.generate import _Holes


def stop_at(fill: list[int], stop: set[int] | None, first_stop: set[int] | None) -> int | None:
    """Index of the first stop token in a fill (`first_stop` rules index 0 when given)."""
    if not stop:
        return None
    for i, t in enumerate(fill):
        if t in (first_stop if i == 0 and first_stop is not None else stop):
            return i
    return None


def grow(a: ModelArgs, holes: _Holes, cfg: SamplingConfig, max_new_tokens: int,
          stop: set[int] | None = None, first_stop: set[int] | None = None) -> bool:
    """Append masks to every full hole that has not ended (EOS/pad or a stop token); True if any grew."""
    grew = False
    for h, fill in enumerate(holes.fills):
        ended = (a.eos_id in fill or a.pad_id in fill
                 or stop_at(fill, stop, first_stop if h == 0 else None) is not None)
        room = max_new_tokens - len(fill)
        if ended or room <= 0 or cfg.grow_tokens <= 0:
            continue
        n = min(cfg.grow_tokens, room)
        fill.extend([a.mask_id] * n)
        holes.budget[h], holes.used[h] = cfg.steps or n, 0
        grew = True
    return grew


def strip(a: ModelArgs, fill: list[int], stop: set[int] | None = None,
           first_stop: set[int] | None = None) -> list[int]:
    """The fill up to its first EOS/pad (excluded) or stop token (kept), special tokens dropped."""
    end = stop_at(fill, stop, first_stop)
    out = []
    for t in fill if end is None else fill[:end + 1]:
        if t in (a.eos_id, a.pad_id):
            break
        if t not in (a.mask_id, a.bos_id, a.expand_id):
            out.append(t)
    return out
