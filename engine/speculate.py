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

A prefill checks drafts too (`SamplingConfig.draft_opening`, `Speculator.opening`): the first
masked slot and the `draft` slots after it are drafted before it, and it runs those rows with its
own at each layer (`engine.model.DraftRows`: the same matmuls, their own attention). Before, it
only gave the first slot's logits, and checking the slots after it took a forward of its own,
once per fill. In a fill that starts a line the first slot holds the line break that token
healing moved out of the prefix plus the new line's indentation, which the indentation of the
line above drafts (`line_start`: the first token of 70 of 100 held-out lines, the lookup 42).
100 held-out single lines (`dlsp eval --seed 36`, int8, context 1024, one run): 0.715 -> 0.622
forwards per generated token, exact match 0.13 both, 99 fills the same (one int8 rounding flip in
the base's reading, which now reads the drafted rows with the whole canvas). In wall time it is
even on this CPU: 40 more lines in one process, each filled both ways in turn (seed 40, int8, 2
threads): prefill +23 ms, steps -17 ms, +6 ms median and +3 ms mean per fill (0.609 -> 0.533
forwards per token); the draft rows' attention is ~8 small ops per layer, about what the check
they save costs. A step reusing a session's cache
(a keystroke) runs without them: there the same rows added ~20 ms to a ~45 ms step (p50 at typing
pauses 147-167 ms against 137-145 ms, `benchmarks/latency.py`, alternating runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.model import DraftRows

if TYPE_CHECKING:
    from engine.generate import _Run
    from engine.ngram import NgramDrafts


LONG_ORDERS = (3, 2)  # lookup matches that come before the trigram table's drafts


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
        first, start, token = self._frontier(slots)
        fed, positions = [token], [start]
        for p in run.pos_host[first:first + self.width]:  # the drafted run of slots after the frontier
            if p not in self.drafts:
                break
            positions.append(p)
            fed.append(self.drafts[p])
        self.fed = list(zip(positions, fed))
        rows = torch.tensor(positions, device=run.device)  # (Q,) ascending
        ids = torch.tensor([fed], device=run.device)  # (1, Q)
        prior = [(k[:, :, rows].clone(), v[:, :, rows].clone()) for k, v in run.cache]
        run.hidden = run.model.step(ids, rows, run.cache, prior=prior)
        self.rows, self.prior = rows[1:], [(k[:, :, 1:], v[:, :, 1:]) for k, v in prior]  # the drafts'
        if run.base is not None:
            run.base.feed(positions, fed)
        run.hidden_is_full, run.row_of = False, run._row_map(rows)
        run.out.forward_passes += 1

    def opening(self, slots: list[int]) -> DraftRows | None:
        """Drafts for the prefill that encodes the canvas: the first masked slot and the `width`
        after it, for the prefill to check as it goes (`engine.model.DraftRows`), so a right first
        draft saves the forward that would check the slots after it. None when there is no draft
        for the first slot.

        The first slot is drafted by the lookup, else, when it starts a new line (token healing
        moved a line break into it), by the indentation of the line above (`line_start`), else
        by the trigram table; a slot that token healing constrains takes only a draft it allows.
        The slots after it are drafted as `_draft` would once it is committed, so a right first
        draft makes this forward the check that would have followed it."""
        run = self.run
        mask = run.a.mask_id
        if not self.width or mask not in slots:
            return None
        first = slots.index(mask)
        targets = run.pos_host[first:first + 1 + self.width]
        lo, hi = run.hole_span
        before, after = run.ids[:lo] + slots[:first], run.ids[hi:]
        head = self._first_draft(before, after, first)
        if head is None:
            return None
        toks = [head, *self._guess(before + [head], after, len(targets) - 1)]
        return DraftRows(torch.tensor([toks], device=run.device), torch.tensor(targets[:len(toks)], device=run.device))

    def _first_draft(self, before: list[int], after: list[int], first: int) -> int | None:
        run = self.run
        constrained = run.first if run.first is not None and run.first_at == first else None
        candidates = lookup(before, after, 1, orders=LONG_ORDERS)
        if constrained is not None and "\n" in constrained.lead and run.texts and run.text_ids:
            candidates += line_start(before, constrained.lead, run.texts, run.text_ids)
        if self.table is not None:
            candidates += self.table.draft(before, 1)
        candidates += lookup(before, after, 1, orders=(1,))
        for t in candidates:
            if constrained is None or bool(constrained.allowed[t]):
                return t
        return None

    def adopt(self, drafts: DraftRows, slots: list[int]) -> None:
        """After the prefill checked `drafts` (from `opening`): the commit from its frontier row
        goes on through them as after a speculative forward."""
        _, start, token = self._frontier(slots)
        self.fed = [(start, token), *zip(drafts.index.tolist(), drafts.ids[0].tolist())]
        self.rows, self.prior = drafts.index, drafts.prior

    def _frontier(self, slots: list[int]) -> tuple[int, int, int]:
        """The first masked slot's index, the row the next commit reads (the one before it) and
        the token there (the last committed slot's, or the prefix's last)."""
        run = self.run
        first = slots.index(run.a.mask_id)
        start = run.pos_host[first] - 1
        return first, start, int(run.canvas[0, start]) if first == 0 else slots[first - 1]

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
        bad = self.rows[valid - 1:]  # `rows` and `prior` are the drafts', fed[1:]
        for (k, v), (k_old, v_old) in zip(self.run.cache, self.prior):
            k[:, :, bad] = k_old[:, :, valid - 1:]
            v[:, :, bad] = v_old[:, :, valid - 1:]

    def _draft(self, slots: list[int]) -> None:
        """Drafts for the next `width` masked slots: what followed the last committed tokens
        where they occur in the visible text (`lookup`), else what the trigram table says."""
        run = self.run
        first = slots.index(run.a.mask_id)
        targets = run.pos_host[first:first + self.width]
        lo, hi = run.hole_span
        before = run.ids[:lo] + slots[:first]
        self.drafts = dict(zip(targets, self._guess(before, run.ids[hi:], len(targets))))

    def _guess(self, before: list[int], after: list[int], n: int) -> list[int]:
        """Up to `n` drafts after `before`: the lookup's where the last two or three tokens occur
        in the visible text, else the trigram table's, else the lookup's after the last token
        alone (one token says less about what follows than the table's counts do)."""
        if n <= 0:
            return []
        drafts = lookup(before, after, n, orders=LONG_ORDERS)
        if not drafts and self.table is not None:
            drafts = self.table.draft(before, n)
        return drafts or lookup(before, after, n, orders=(1,))


def line_start(before: list[int], lead: str, texts: list[str], id_of: dict[str, int], unit: str = "    ",
               tail: int = 96) -> list[int]:
    """Drafts for a slot whose token begins with `lead`, text that ends a line (token healing moved
    the prefix's last token, holding a line break, into the slot): the token of `lead` up to its
    last line break and the indentation of the last non-blank line before it, one `unit` deeper
    after a line ending in `:` (a Python block opens). Byte-level BPE gives an indentation of
    spaces, but for its last space, to the line break's token (the word's token takes the last
    one: "\\n        return" is "\\n       " + " return"), so that token comes first; then the
    whole indentation's. Empty when the vocabulary has neither. Measured on 100 held-out single
    lines (`dlsp eval --seed 34`, the cursor at the line's start): the first token of 70 fills.

    Args:
        before: the ids up to the slot; texts: the text of every id; id_of: text -> id
            (`engine.healing.Healer.id_of`); tail: how many ids of `before` to read back.
    """
    brk = lead.rfind("\n")
    if brk < 0:
        return []
    text = "".join(texts[t] for t in before[-tail:] if 0 <= t < len(texts)) + lead[:brk]
    lines = text.replace("\r\n", "\n").split("\n")
    line = next((ln for ln in reversed(lines) if ln.strip()), "")
    indent = line[:len(line) - len(line.lstrip(" \t"))]
    if line.rstrip().endswith(":"):
        indent += "\t" if indent.endswith("\t") else unit
    head = lead[:brk + 1]
    wanted = [head + indent[:-1], head + indent] if indent.endswith(" ") else [head + indent]
    return [id_of[t] for t in wanted if t in id_of and t.startswith(lead)]


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
