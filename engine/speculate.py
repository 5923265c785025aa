"""Speculative decoding for the one-slot window (`SamplingConfig.draft`). Works on token ids and
the run's canvas and cache only.

A left-to-right decode with `block=1` commits one token per forward: the row just committed is
run against the cache and its logits give the next slot (shifted families: row p predicts slot
p+1). Here the forward also runs the next `draft` slots holding guessed tokens (drafts), each
row seeing the rows after it as they were before the step (`Transformer.step(prior=...)`): row
p+j then computes exactly what a forward of its own would have, *if* the drafts before it are
what the decode commits. The commit rule is applied row after row; while the committed token
equals the draft fed at its slot, the row after it is valid and the next commit reads it, so one
forward can commit several tokens. The rows that turn out wrong get their old keys/values back,
so the cache ends as the one-row decode (`lazy_rows`) leaves it, and so does the fill: exactly
in float32; with int8 matmuls a rounding flip from a different summation order can change a
near tie, like any change of batch shape.

Drafts come from the visible text (prompt lookup, Saxena 2023): code repeats itself, and what
followed the last few committed tokens elsewhere in the file is often what follows now. The
model's own predictions for slots two or more ahead of the frontier (conditioned on masks in
between) were tried as drafts too and almost never held (1.08 -> 1.05 forwards per token on 12
held-out fills, against 0.56 with lookup drafts). So did a learned drafter (EAGLE-style, Li et al.,
2024, arXiv:2401.15077: a 3.3M-parameter layer carrying the base's hidden state one token on,
trained on 1.6M tokens; commit 3269766, reverted): it agreed with the base's next token at 35% of
held-out positions but cannot copy the file's own names, where lookup drafts hold; on 100 held-out
lines it gave 0.922 forwards per token first, 0.694 only where the lookup finds nothing, against
0.699 without it. A forward over a few rows costs about what one row does on a CPU (the weights
are read once per forward either way), and the forward runs only as many rows as there are drafts. This is speculative decoding (Leviathan et al., 2023,
arXiv:2211.17192) with a drafter that needs no model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from engine.generate import _Run
    from engine.ngram import NgramDrafts


def applies(run: _Run) -> bool:
    """Whether the run can decode speculatively: a draft width, the fast sampler with a one-slot
    window, greedy, a shifted family, one hole, no periodic refresh."""
    cfg = run.cfg
    return (cfg.draft > 0 and not run.naive and cfg.block == 1 and cfg.temperature == 0
            and run.shift == 1 and cfg.refresh_every == 0 and len(run.holes.fills) == 1)


class Speculator:
    """The drafts and the last speculative forward of one `_Run` (one hole).

    Attributes:
        table: the model's trigram table (`engine.ngram`): drafts where the lookup finds none.
        drafts: canvas position -> the token drafted for that (masked) slot.
        fed: the rows of the last speculative forward, (position, token fed) in order; None
            when the hidden states come from a prefill or reuse step (nothing to check).
    """

    def __init__(self, run: _Run, width: int, table: NgramDrafts | None = None) -> None:
        self.run, self.width, self.table = run, width, table
        self.drafts: dict[int, int] = {}
        self.fed: list[tuple[int, int]] | None = None
        self.prior: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.rows: torch.Tensor | None = None

    def reset(self) -> None:
        """A new round (prefill, reuse or growth): the hidden states are not speculative."""
        self.drafts, self.fed, self.rows = {}, None, None

    def forward(self, slots: list[int]) -> None:
        """One forward of the frontier row (the last committed slot, or the prefix's last token)
        and the drafted slots after it (at most `width`, up to the first without a draft)."""
        run = self.run
        mask = run.a.mask_id
        first = slots.index(mask)
        pos = run.pos_host
        start = pos[first] - 1  # the row the next commit reads
        fed = [int(run.canvas[0, start])] if first == 0 else [slots[first - 1]]
        positions = [start]
        for p in pos[first:first + self.width]:  # the drafted run of slots after the frontier
            if p not in self.drafts:
                break
            positions.append(p)
            fed.append(self.drafts[p])
        self.fed = list(zip(positions, fed))
        rows = torch.tensor(positions, device=run.device)  # (Q,) ascending
        ids = torch.tensor([fed], device=run.device)  # (1, Q)
        self.prior = [(k[:, :, rows].clone(), v[:, :, rows].clone()) for k, v in run.cache]
        self.rows = rows
        run.hidden = run.model.step(ids, rows, run.cache, prior=self.prior)
        if run.base is not None:
            run.base.feed(positions, fed)
        run.hidden_is_full, run.row_of = False, run._row_map(rows)
        run.out.forward_passes += 1

    def _confirmed(self, slots: list[int]) -> bool:
        """Whether the row the next commit reads holds what the canvas holds now (every row
        before it in the forward did, or the commit before would not have read them)."""
        if self.fed is None:
            return False
        mask = self.run.a.mask_id
        if mask not in slots:
            return False
        first = slots.index(mask)
        if first == 0:
            return False
        want = (self.run.pos_host[first] - 1, slots[first - 1])
        return want in self.fed[1:]

    def follow(self, slots: list[int], left: int) -> tuple[list[int], int]:
        """After the commit that read the forward's first row: commit on through every row that
        turned out valid, then put back the keys/values of the rows that did not and draft the
        slots ahead. Returns the slots and masks left."""
        while left and self._confirmed(slots) and not self.run.short_of_masks(slots):
            slots, left = self.run.commit(slots, left)
        self._settle(slots)
        if left:
            self._draft(slots)
        return slots, left

    def _settle(self, slots: list[int]) -> None:
        """Old keys/values back for the rows of the last forward after its valid head."""
        if self.fed is None or self.rows is None:
            return
        now = dict(zip(self.run.pos_host, slots))
        valid = 0
        for p, t in self.fed:
            if now.get(p, t) != t:  # the frontier row (maybe a prefix token) is always valid
                break
            valid += 1
        if valid == len(self.fed):
            return
        bad = self.rows[valid:]
        for (k, v), (k_old, v_old) in zip(self.run.cache, self.prior):
            k[:, :, bad] = k_old[:, :, valid:]
            v[:, :, bad] = v_old[:, :, valid:]

    def _draft(self, slots: list[int]) -> None:
        """Drafts for the next `width` masked slots: what followed the last committed tokens
        where they occur in the visible text (`lookup`), else what the trigram table says."""
        run = self.run
        first = slots.index(run.a.mask_id)
        targets = run.pos_host[first:first + self.width]
        lo, hi = run.hole_span
        before = run.ids[:lo] + slots[:first]
        drafts = lookup(before, run.ids[hi:], len(targets))
        if not drafts and self.table is not None:
            drafts = self.table.draft(before, len(targets))
        self.drafts = dict(zip(targets, drafts))

def lookup(before: list[int], after: list[int], n: int, orders: tuple[int, ...] = (3, 2, 1)) -> list[int]:
    """Prompt-lookup drafts (Saxena, 2023): the tokens that followed the last `order` tokens of
    `before` at their nearest earlier occurrence in `before`, else at their first occurrence in
    `after` (the text after the hole), the longest order that occurs first; at most `n`.

    Args:
        before: the visible text up to the next slot (prefix and the committed fill), ids.
        after: the text after the hole, ids.
    Returns:
        up to `n` ids (empty when the tail occurs nowhere else).
    """
    for order in orders:
        if len(before) <= order:
            continue
        key = before[-order:]
        for i in range(len(before) - order - 1, -1, -1):  # nearest first, not the tail itself
            if before[i:i + order] == key:
                return before[i + order:i + order + n]
        for i in range(len(after) - order + 1):
            if after[i:i + order] == key:
                out = after[i + order:i + order + n]
                if out:
                    return out
    return []
