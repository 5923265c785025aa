"""What a hole's fill is between denoising rounds: where it stops, whether it grows, what is
returned (`GenOutput`, the result of `engine.generate.generate`). Works on token id lists only
(host side of `engine.generate`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from engine.config import ModelArgs
from engine.kv_cache import KVCache
from engine.types import SamplingConfig

FirstStops = Sequence["set[int] | None"]  # per leading slot of a fill, its own stop tokens (None: the usual)


@dataclass
class GenOutput:
    fills: list[list[int]]  # per hole, cut at the first EOS/pad
    forward_passes: int = 0
    tokens_per_step: list[int] = field(default_factory=list)
    cancelled: bool = False
    prefill_ms: float = 0.0
    steps_ms: float = 0.0
    reused_tokens: int = 0  # canvas rows of the first forward whose keys/values were reused
    # for a check after the run (`engine.rerank`): the run's cache, and the base reading's
    # keys/values where they cover the prefix (None otherwise)
    cache: KVCache | None = None
    base_cache: KVCache | None = None
    # with `cfg.rerank` and the base mixed in: the base's own greedy choice at each slot of the
    # fill, from slot 0 through the last slot it read (`engine.rerank` starts from them instead of
    # reading the fill again); None when the base read no slot
    base_best: list[int] | None = None
    base_lp: list[float] | None = None  # the base's log-probability of the fill's token at those slots
    base_fed: list[int] | None = None  # the tokens the caches' rows from the hole's start were last fed
    # per hole: the mean log-probability of the tokens the decode committed there (its end
    # included) under the distribution it chose each from; None where it committed nothing
    scores: list[float | None] = field(default_factory=list)


class FillScores:
    """Per hole: the log-probabilities of the tokens committed in it (its end included), each
    under the distribution it was chosen from, summed on the device as the decode commits (no read
    back until `read`), and how many."""

    def __init__(self, n_holes: int, device: torch.device | str) -> None:
        self.sum = torch.zeros(n_holes, device=device)
        self.count = torch.zeros(n_holes, device=device)

    def add(self, logits: torch.Tensor, tokens: torch.Tensor, chosen: torch.Tensor, hole: torch.Tensor) -> None:
        """logits (M, V) as the rules left them; tokens (M,) proposed; chosen (M,) bool committed;
        hole (M,) each row's hole."""
        logits = logits.float()
        lp = logits.gather(1, tokens[:, None]).squeeze(1) - torch.logsumexp(logits, -1)  # (M,)
        self.sum.index_add_(0, hole, torch.where(chosen, lp, torch.zeros_like(lp)))
        self.count.index_add_(0, hole, chosen.float())

    def read(self) -> list[float | None]:
        """Per hole, the mean log-probability of its committed tokens (None: nothing committed)."""
        sums, counts = torch.stack([self.sum, self.count]).tolist()  # one read, after the run
        return [None if n == 0 else s / n for s, n in zip(sums, counts)]


@dataclass
class Holes:
    """Per-hole state across growth rounds."""

    fills: list[list[int]]  # committed ids, mask id where not yet committed
    budget: list[int]  # steps allowed for the current block of each hole
    used: list[int]  # steps spent on the current block


def canvas(a: ModelArgs, segments: list[list[int]], fills: list[list[int]]) -> tuple[list[int], list[int]]:
    """Lay out the canvas `[lead] prefix [hole 0] middle ... [hole N] suffix [eos]`; return ids
    and the start position of each hole."""
    ids = [a.lead_id, *segments[0]]
    starts = []
    for h, fill in enumerate(fills):
        starts.append(len(ids))
        ids += fill
        ids += segments[h + 1]
    ids.append(a.eos_id)
    return ids, starts


def stop_at(fill: list[int], stop: set[int] | None, first_stop: FirstStops | None) -> int | None:
    """Index of the first stop token in a fill (`first_stop[i]` rules index i when given: token
    healing's constrained slots)."""
    if not stop:
        return None
    first_stop = first_stop or ()
    for i, t in enumerate(fill):
        own = first_stop[i] if i < len(first_stop) else None
        if t in (own if own is not None else stop):
            return i
    return None


def ended(a: ModelArgs, fill: list[int], stop: set[int] | None, first_stop: FirstStops | None) -> bool:
    """Whether a fill has ended: EOS/pad, or a stop token (`first_stop` rules its leading slots)."""
    return a.eos_id in fill or a.pad_id in fill or stop_at(fill, stop, first_stop) is not None


def grow(a: ModelArgs, holes: Holes, cfg: SamplingConfig, max_new_tokens: int,
          stop: set[int] | None = None, first_stop: FirstStops | None = None) -> bool:
    """Append masks to every hole that has not ended (EOS/pad or a stop token): `grow_tokens` to a
    full one, or with `cfg.lookahead` as many as bring it back to `lookahead` masks. True if any grew."""
    grew = False
    for h, fill in enumerate(holes.fills):
        done = ended(a, fill, stop, first_stop if h == 0 else None)
        room = max_new_tokens - len(fill)
        masks = fill.count(a.mask_id)
        want = cfg.lookahead - masks if cfg.lookahead else cfg.grow_tokens
        if done or room <= 0 or want <= 0:
            continue
        n = min(want, room)
        fill.extend([a.mask_id] * n)
        holes.budget[h], holes.used[h] = cfg.steps or (n + masks), 0
        grew = True
    return grew


def strip(a: ModelArgs, fill: list[int], stop: set[int] | None = None,
           first_stop: FirstStops | None = None) -> list[int]:
    """The fill up to its first EOS/pad (excluded) or stop token (kept), special tokens dropped."""
    end = stop_at(fill, stop, first_stop)
    out = []
    for t in fill if end is None else fill[:end + 1]:
        if t in (a.eos_id, a.pad_id):
            break
        if t not in (a.mask_id, a.bos_id, a.expand_id):
            out.append(t)
    return out


def short_of_masks(a: ModelArgs, slots: list[int], hole_of: list[int], n_holes: int, lookahead: int,
                   max_new_tokens: int, stop: set[int] | None = None, first_stop: FirstStops | None = None) -> bool:
    """`lookahead`: some hole has not ended (the same rule as `grow`'s), has room to grow, and
    fewer than `lookahead // 2` masks are left in it (so the decode should stop for a growth
    round, which then tops that hole up)."""
    for h in range(n_holes):
        fill = [t for t, hh in zip(slots, hole_of) if hh == h]
        if ended(a, fill, stop, first_stop if h == 0 else None) or len(fill) >= max_new_tokens:
            continue
        if fill.count(a.mask_id) < lookahead // 2:
            return True
    return False
