"""The denoising loop. Works on token ids only: no text, no tokenizer.

Canvas (`engine.fills.canvas`): `[bos] prefix [hole 0] ... [hole N] suffix [eos]`, holes start
fully masked. Two samplers share the loop:
  * naive (reference): a full forward over the canvas at every step, one commit per step;
  * fast: one prefill that caches keys/values of the whole canvas, then each step runs the
    transformer on the hole rows only (plus the shift neighbour for shifted families) against
    the cache, and commits every position whose confidence passes the threshold.
Both commit at least ceil(remaining / steps_left) per hole (fast: also `min_per_step`, optionally
Fast-dLLM's factor rule) or one per step (naive), so every position is committed by the last step.
An EOS inside a hole ends that fill; a full hole with no EOS grows by `grow_tokens` while the
budget allows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch

from engine.cuda_graphs import StepGraphs
from engine.end_rules import EndRules
from engine.expert import BaseReading, BaseRecord, BaseRun, never_ids
from engine.fills import FillScores, GenOutput, Holes, canvas, short_of_masks
from engine.fills import grow as _grow
from engine.fills import strip as _strip
from engine.healing import FirstSlot
from engine.kv_cache import KVCache, splice_in_place
from engine.model import DraftRows, Transformer
from engine.ngram import NgramDrafts
from engine.reuse import ReusePolicy, Session, plan
from engine.samplers import (
    commit_rows,
    copy_prior,
    factor_commits,
    frontier_run,
    min_commit,
    propose,
)
from engine.speculate import Speculator, applies
from engine.types import SamplingConfig


class _Run(EndRules):
    """One generation: canvas, cache and counters for a single call of `generate`."""

    def __init__(self, model: Transformer, shifted: bool, cfg: SamplingConfig, holes: Holes,
                 segments: list[list[int]], device: torch.device, graphs: StepGraphs | None = None,
                 stop_ids: torch.Tensor | None = None, first: FirstSlot | None = None,
                 banned: list[int] | None = None, blank_ids: torch.Tensor | None = None) -> None:
        self.model, self.a, self.cfg, self.graphs = model, model.args, cfg, graphs
        self.stop = None if stop_ids is None else stop_ids.to(device)
        # hole 0's leading slots constrained by token healing (a healed lead split into lines
        # spans several: `FirstSlot.partial`): `first` rules slot `first_at`, the last of them
        self.lead = "" if first is None else first.lead
        self.naive = cfg.sampler == "naive"
        if first is not None and first.partial and (self.naive or cfg.block != 1):
            allowed = first.allowed.clone()
            allowed[list(first.partial)] = False
            first = replace(first, allowed=allowed, partial=(), rest=None)
        self.first: FirstSlot | None = None
        self.first_stops: list[set[int] | None] = []  # per constrained slot, its own stop tokens (None: the usual)
        self.first_at = 0
        self.blank_ids: torch.Tensor | None = None
        self.shift = 1 if shifted else 0
        self.holes, self.segments, self.device = holes, segments, device
        self.base: BaseRun | None = None  # the base's reading of the frontier, mixed in (`engine.expert`)
        self.record: BaseRecord | None = None  # what it read at each slot, for the check (set by `generate`)
        self.texts: list[str] | None = None  # token texts (`close_brackets`, loops of lines), set by `generate`
        self.text_ids: dict[str, int] | None = None  # text -> id (the opening's line starts), set by `generate`
        self.min_indent: int | None = None  # `cut_dedent`, set by `generate`
        self.avoid: list[torch.Tensor | None] | None = None  # `_bar_copied_start`, set by `generate`
        self.blank_set: set[int] = set()
        self.out = GenOutput(fills=[])
        self.scores = FillScores(len(holes.fills), device)  # what each commit's distribution gave its token
        # `lookahead`: whether the slots leave some hole short of masks (set by `generate`); the
        # decode, speculative follow-through included, stops there for a growth round
        self.short_of_masks: Callable[[list[int]], bool] = lambda slots: False
        self.full_every_step = self.naive or cfg.refresh_every == 1
        # on the model's device: torch.multinomial needs the generator where the probabilities are
        self.gen = torch.Generator(device=device).manual_seed(cfg.seed) if cfg.temperature > 0 else None
        ends = {self.a.eos_id, self.a.pad_id}
        forbid = {i for i in (self.a.mask_id, self.a.bos_id, self.a.expand_id, *(banned or ())) if i is not None} - ends
        self.forbid = torch.tensor(sorted(forbid), device=device)
        self.ends = torch.tensor(sorted({self.a.eos_id, self.a.pad_id}), device=device)
        self.special = torch.tensor(self.a.special_ids, device=device)  # never counted by the copy prior
        # `nonempty`: while a hole holds only whitespace it may not end: no EOS/pad, and no
        # whitespace-only token that would stop a single-line fill
        self.blank: set[int] | None = None
        self.blank_first_stop: torch.Tensor | None = None
        if cfg.nonempty and blank_ids is not None:
            self.blank_ids = blank_ids = blank_ids.to(device)
            self.blank = set(torch.nonzero(blank_ids).flatten().tolist()) | set(self.a.special_ids)
            self.blank_stop = None if self.stop is None else blank_ids & self.stop  # (V,)
        if first is not None:
            self._constrain(first)

    def _constrain(self, first: FirstSlot) -> None:
        """`first` rules the next slot of hole 0 (the first one, then the one after a partial lead)."""
        first = replace(first, allowed=first.allowed.to(self.device),
                        stop=None if first.stop is None else first.stop.to(self.device))
        self.first, self.first_at = first, len(self.first_stops)
        self.first_stops.append(None if first.stop is None else set(torch.nonzero(first.stop).flatten().tolist()))
        self.blank_first_stop = None if self.blank_ids is None or first.stop is None else self.blank_ids & first.stop

    def _follow_lead(self, slots: list[int]) -> None:
        """After a commit: when hole 0's constrained slot took a partial lead, the rest of the lead
        constrains the slot after it (`FirstSlot.rest`)."""
        while self.first is not None and self.first.rest is not None:
            i = self.first_at
            if slots[i] == self.a.mask_id or i + 1 >= len(slots) or self.hole_host[i + 1] != 0:
                return
            nxt = self.first.rest(slots[i])
            if nxt is None:
                return
            self._constrain(nxt)

    def layout(self) -> None:
        ids, starts = canvas(self.a, self.segments, self.holes.fills)
        self.ids, self.hole_span = ids, (starts[0], starts[-1] + len(self.holes.fills[-1]))
        self.canvas = torch.tensor([ids], device=self.device)  # (1, L)
        hole_of, rows = [], []
        for h, (s, fill) in enumerate(zip(starts, self.holes.fills)):
            hole_of.append(torch.full((len(fill),), h))
            rows.append(torch.arange(s - self.shift, s + len(fill)))
        # (P,) canvas positions of hole slots, on the host (built there: no device read)
        self.pos_host = [p for s, fill in zip(starts, self.holes.fills) for p in range(s, s + len(fill))]
        self.pos = torch.tensor(self.pos_host, device=self.device)  # (P,)
        self.hole_of = torch.cat(hole_of).to(self.device)  # (P,)
        self.hole_host = [h for h, fill in enumerate(self.holes.fills) for _ in fill]  # (P,) on the host
        self.rows = torch.unique(torch.cat(rows)).to(self.device)  # (R,) rows a cached step runs
        self.step_row_of = self._row_map(self.rows)

    def _row_map(self, rows: torch.Tensor) -> torch.Tensor:
        row_of = torch.full((self.canvas.shape[1],), -1, dtype=torch.long, device=self.device)  # (L,)
        row_of[rows] = torch.arange(len(rows), device=self.device)
        return row_of

    def full(self, drafts: DraftRows | None = None) -> None:
        """A prefill of the canvas; `drafts`: rows it checks as it goes (`engine.speculate`)."""
        t0 = time.perf_counter()
        self.hidden, self.cache = self.model.prefill(self.canvas, keep_cache=not self.full_every_step, drafts=drafts)
        if self.base is not None:
            tokens = self.canvas[0].tolist()
            self.base.feed(list(range(len(tokens))), tokens if drafts is None else drafts.placed(tokens))
        self.hidden_is_full = True
        self.age = 0
        self.out.forward_passes += 1
        self.out.prefill_ms += (time.perf_counter() - t0) * 1e3

    def reuse(self, old_ids: list[int], old_span: tuple[int, int], old_cache: KVCache, age: int,
              edit: bool, policy: ReusePolicy) -> bool:
        """Instead of a prefill: splice the old canvas's cache (in place: the session or the run
        owns it) and run one step over the rows in between (edited tokens, holes, the shift
        neighbour). False when the plan says prefill.
        `age`: reuses of edits behind the old cache; `edit`: this is one more (not a growth round)."""
        t0 = time.perf_counter()
        p = plan(old_ids, old_span, self.ids, self.hole_span, policy, age)
        if p is None or old_cache.length != len(old_ids):
            return False
        self.cache = splice_in_place(old_cache, p.length, p.head, p.tail, self.a.rope_theta)
        rows = torch.unique(torch.cat([torch.arange(p.head, p.length - p.tail, device=self.device), self.rows]))
        self.hidden = self.model.step(self.canvas[:, rows], rows, self.cache)
        self.fed(rows)
        self.row_of, self.hidden_is_full, self.age = self._row_map(rows), False, age + edit
        self.out.forward_passes += 1
        self.out.reused_tokens = p.reused
        self.out.prefill_ms += (time.perf_counter() - t0) * 1e3
        return True

    def cached_step(self, before: list[int] | None = None, slots: list[int] | None = None) -> None:
        """A forward of the hole rows against the cache. With `cfg.lazy_rows` (and the slots of
        the previous step, `before`, and now, `slots`): of those rows, only the ones that changed
        and the window's logit rows."""
        if self.cfg.lazy_rows and before is not None and slots is not None:
            rows = self._lazy_rows(before, slots)
            self.hidden = self.model.step(self.canvas[:, rows], rows, self.cache)
            self.fed(rows)
            self.hidden_is_full, self.row_of = False, self._row_map(rows)
            self.out.forward_passes += 1
            return
        ids = self.canvas[:, self.rows]
        hidden = self.graphs.step(ids, self.rows, self.cache) if self.graphs is not None else None
        self.hidden = hidden if hidden is not None else self.model.step(ids, self.rows, self.cache)
        self.fed(self.rows)
        self.hidden_is_full, self.row_of = False, self.step_row_of
        self.out.forward_passes += 1

    def fed(self, rows: torch.Tensor) -> None:
        """After a forward of canvas rows `rows`: the base's reading of them, if it is on."""
        if self.base is not None:
            self.base.feed(rows.tolist(), self.canvas[0, rows].tolist())

    def _lazy_rows(self, before: list[int], slots: list[int]) -> torch.Tensor:
        """Canvas rows a lazy step runs (sorted): slots whose token changed since the last forward,
        and the rows the next commit reads its logits from (the window's masked slots, moved
        back by the shift)."""
        pos = self.pos_host
        changed = {pos[i] for i, (b, t) in enumerate(zip(before, slots)) if b != t}
        masked = [i for i, t in enumerate(slots) if t == self.a.mask_id]
        if self.cfg.block is not None:
            masked = self._window(masked, len(self.holes.fills))
        reads = {pos[i] - self.shift for i in masked}
        return torch.tensor(sorted(changed | reads), device=self.device)

    def slots(self) -> list[int]:
        """The ids at every hole slot, on the host: the step's one device-to-host read. Everything
        the step decides on the host (which rows are masked, per-hole counts and budgets, whether
        the run is done, tokens committed by the previous step) comes from it."""
        return self.canvas[0, self.pos].tolist()

    def commit(self, slots: list[int], left: int) -> tuple[list[int], int]:
        """`commit_once`, then the step's one host read: the slots and the masks left after it
        (the tokens it committed are counted in `tokens_per_step`)."""
        self.commit_once(slots)
        slots = self.slots()
        self._follow_lead(slots)
        self.out.tokens_per_step.append(left - slots.count(self.a.mask_id))
        return slots, left - self.out.tokens_per_step[-1]

    def commit_once(self, slots: list[int]) -> None:
        """Propose tokens for the masked slots (`slots`, as read at the start of this step) and
        commit by the rule, on the device, without reading anything back."""
        n_holes = len(self.holes.fills)
        masked = [i for i, t in enumerate(slots) if t == self.a.mask_id]
        remaining = [0] * n_holes
        for i in masked:
            remaining[self.hole_host[i]] += 1
        if not self.naive and self.cfg.block is not None:
            masked = self._window(masked, n_holes)
        idx = torch.tensor(masked, device=self.device)  # (M,)
        mpos, mhole = self.pos[idx], self.hole_of[idx]  # (M,)
        src = mpos - self.shift
        h = self.hidden[0, src] if self.hidden_is_full else self.hidden[0, self.row_of[src]]  # (M, D)
        # the base's reading of the same slot shares the LM head: its row rides in the same call
        # (rows are independent; one read of the vocabulary-sized matrix instead of two, ~1 ms)
        at = self.pos_host[masked[0]] - self.shift if self.base is not None and len(masked) == 1 else None
        base_h = None if at is None else self.base.hidden_at(at)  # (1, D)
        logits = self.model.logits(h if base_h is None else torch.cat([h, base_h]))  # (M (+1), V)
        base_logits = None if base_h is None else logits[-1]
        logits = logits[:len(masked)]
        if self.cfg.copy_weight > 0:
            usable = ~torch.isin(self.canvas[0], self.special)
            logits = copy_prior(logits, self.canvas[0], mpos, usable, self.cfg.copy_weight, self.cfg.copy_order)
        lp = None
        if base_logits is not None:
            i, rec = masked[0], self.record
            allowed = self.first.allowed if self.first is not None and self.first_at == 0 else None
            lp = self.base.logprobs(at, self.ends, None if rec is None else rec.never_at(i, allowed), base_logits)
            if lp is not None:
                if rec is not None:
                    rec.best[i] = self.base.best
                logits = torch.log_softmax(logits, -1) + self.cfg.base_weight * lp[None]
        logits[:, self.forbid] = float("-inf")
        if self.cfg.eos_frontier:  # EOS only at the first masked slot of each hole
            lead = torch.full((n_holes,), self.canvas.shape[1], device=mpos.device).scatter_reduce(
                0, mhole, mpos, "amin")
            behind = (mpos != lead[mhole])[:, None]  # (M, 1)
            logits[:, self.ends] = logits[:, self.ends].masked_fill(behind, float("-inf"))
        if self.first is not None:  # hole 0's first slot, while still masked
            barred = (mpos == self.pos[self.first_at])[:, None] & ~self.first.allowed[None, :]  # (M, V)
            logits.masked_fill_(barred, float("-inf"))
        if self.blank is not None:
            self._bar_empty_end(logits, slots, masked, mpos)
        if self.avoid is not None:
            self._bar_copied_start(logits, slots, masked)
        if self.cfg.close_brackets and self.texts is not None:
            self._hold_open_line(logits, slots, masked)
        if self.cfg.end_penalty:
            logits.sub_(self._ending(mpos, logits.shape[1]).to(logits.dtype) * self.cfg.end_penalty)
        if self.cfg.end_mass:
            self._decide_ends(logits, mpos)
        tokens, conf = propose(logits, self.cfg.confidence, self.cfg.temperature, self.gen)
        if lp is not None and self.record is not None:  # the one row commits: what it takes
            self.record.lp[masked[0]] = lp[tokens[0]]  # (ends rescored: not a line's token)
        if self.naive:
            group, thr, n_min = torch.zeros_like(mhole), float("inf"), [1]
        else:
            group, thr = mhole, self.cfg.threshold
            n_min = [min_commit(r, b - u) for r, b, u in zip(remaining, self.holes.budget, self.holes.used)]
            if self.cfg.min_per_step > 1:
                n_min = [max(n, min(r, self.cfg.min_per_step)) for n, r in zip(n_min, remaining)]
        n_min_t = torch.tensor(n_min, dtype=torch.long, device=self.device)  # (H,)
        if not self.naive and self.cfg.factor is not None:
            n_min_t = torch.maximum(n_min_t, factor_commits(conf, mhole, n_holes, self.cfg.factor))
        eligible = None  # with `block`, `masked` is the window already
        if self.cfg.contiguous and not self.naive:
            eligible, thr = frontier_run(conf, mhole, n_holes, thr, n_min_t), float("-inf")
        chosen = commit_rows(self.canvas[0], mpos, tokens, conf, group, thr, n_min_t, eligible)
        self.scores.add(logits, tokens, chosen, mhole)
        for hh in {self.hole_host[i] for i in masked}:
            self.holes.used[hh] += 1
        if self.cfg.eos_fill or self.stop is not None:
            self._end_fill(mpos, mhole, tokens, chosen)

    def _window(self, masked: list[int], n_holes: int) -> list[int]:
        """The first `block` masked slots of each hole (`masked` in position order): the only ones
        that may commit, so the LM head (a vocabulary x dim matmul per row: 28M multiply-adds at
        the 135M shape) and every commit rule run on them alone."""
        seen, window = [0] * n_holes, []
        for i in masked:
            h = self.hole_host[i]
            if seen[h] < self.cfg.block:
                window.append(i)
                seen[h] += 1
        return window

    def read_fills(self) -> None:
        for h in range(len(self.holes.fills)):
            self.holes.fills[h] = self.canvas[0, self.pos[self.hole_of == h]].tolist()


@torch.inference_mode()
def generate(model: Transformer, segments: list[list[int]], cfg: SamplingConfig, shifted: bool,
             hole_tokens: int = 16, max_new_tokens: int = 64,
             should_stop: Callable[[], bool] | None = None, graphs: StepGraphs | None = None,
             stop_ids: torch.Tensor | None = None, first: FirstSlot | None = None,
             session: Session | None = None, policy: ReusePolicy | None = None,
             banned: list[int] | None = None, blank_ids: torch.Tensor | None = None,
             drafts: NgramDrafts | None = None, texts: list[str] | None = None,
             text_ids: dict[str, int] | None = None, base: BaseReading | None = None,
             min_indent: int | None = None, avoid: list[torch.Tensor | None] | None = None) -> GenOutput:
    """Fill the holes between `segments` (prefix, middles..., suffix).

    Args:
        model: the native transformer (eval mode).
        segments: token ids, len = number of holes + 1.
        cfg: sampler settings; shifted: the family's logits are shifted (position i-1 -> token i).
        hole_tokens: initial masks per hole; max_new_tokens: the most a hole may grow to.
        should_stop: polled before every step; True ends the run with `cancelled`.
        graphs: captured fixed-shape steps (CUDA graphs) for the cached steps; None = eager.
        stop_ids: (V,) bool, tokens that end a fill where they are committed (e.g. those holding a
            line break, for single-line fills): later slots of that hole become EOS and it does
            not grow. The stop token itself stays in the fill.
        first: a constraint on hole 0's first slot (see `FirstSlot`).
        session: the previous canvas and cache of the same text (`engine.reuse`): the first forward
            re-encodes only what changed when `policy` allows, and the session is updated with
            this run's canvas and cache (also when cancelled). Growth rounds reuse the run's own
            cache the same way (the suffix's keys re-rotated to its new positions).
        policy: reuse settings (None = `ReusePolicy()`; with `enabled=False` every round prefills).
        banned: ids never proposed (besides mask/bos/expand), e.g. a pretrained vocabulary's
            control tokens; EOS/pad are never banned.
        blank_ids: (V,) bool, tokens whose text is whitespace only: with `cfg.nonempty`, a hole
            holding nothing else may not end yet (no EOS/pad, no whitespace-only stop token).
        drafts: the model's trigram table: speculative drafts where the prompt lookup has none.
        texts: the text of every token id, for `cfg.close_brackets` and `cfg.loop_guard`'s loops of
            lines (both off without it).
        text_ids: text -> id (`texts` inverted, `engine.healing.Healer.id_of`): with `texts`, the
            prefill's opening drafts a slot that starts a line by the line above's indentation.
        base: the pretrained base's upper layers over this model's causal lower ones: with
            `cfg.base_weight` > 0 (one hole, `block=1`, the fast sampler, a shifted family, no
            CUDA graphs) every commit also reads the base (`engine.expert`); its keys/values are
            kept in the session like the model's.
        min_indent: multi-line fills (no `stop_ids`, with `texts`): a fill ends before its first
            line after the first that starts left of this many columns (`cut_dedent`).
        avoid: per hole, (V,) bool or None: tokens the hole may not commit while it holds only
            whitespace (with `blank_ids`; `InfillRequest.avoid`, `EndRules._bar_copied_start`).
    Returns:
        GenOutput with the fills (special tokens stripped, cut at EOS) and counters.
    """
    a = model.args
    n0 = max(0, min(hole_tokens, max_new_tokens))
    n_holes = len(segments) - 1
    if n0 == 0:
        return GenOutput(fills=[[] for _ in range(n_holes)])
    holes = Holes([[a.mask_id] * n0 for _ in range(n_holes)], [cfg.steps or n0] * n_holes, [0] * n_holes)
    run = _Run(model, shifted, cfg, holes, segments, next(model.parameters()).device, graphs, stop_ids, first,
               banned, blank_ids)
    run.texts, run.text_ids = texts, text_ids
    if avoid is not None and blank_ids is not None and any(t is not None for t in avoid):
        run.avoid = [None if t is None else t.to(run.device) for t in avoid]
        run.blank_set = run.blank or set(torch.nonzero(blank_ids).flatten().tolist()) | set(a.special_ids)
    # a block fill ends where it leaves its block (multi-line fills with token texts only)
    run.min_indent = min_indent if (min_indent is not None and stop_ids is None and texts is not None) else None
    if not (cfg.base_weight > 0 and n_holes == 1 and cfg.block == 1 and shifted and not run.naive
            and not run.full_every_step and graphs is None):
        base = None
    model.tap = None if base is None else base.first
    if base is not None and cfg.rerank:
        run.record = BaseRecord(never_ids(a, banned or [], run.device))
    stop = None if stop_ids is None else set(torch.nonzero(stop_ids).flatten().tolist())
    first_stop = run.first_stops  # the stop tokens of hole 0's constrained slots (grows as they commit)
    policy = policy or ReusePolicy()
    if cfg.lookahead:
        run.short_of_masks = lambda slots: short_of_masks(a, slots, run.hole_host, n_holes, cfg.lookahead,
                                                          max_new_tokens, stop, first_stop)
    spec = Speculator(run, cfg.draft, drafts) if applies(run) else None
    prior = None
    if session is not None and session.canvas is not None and session.cache is not None:
        prior = (session.canvas, session.holes, session.cache, session.age, True)
    while True:
        run.layout()
        if base is not None and run.base is None:
            run.base = base.start(session.base if session is not None else None, run.ids, run.hole_span,
                                  max_new_tokens, segments[1][0] if segments[1] else None)
            if session is not None:
                session.base = run.base.state
        elif run.base is not None:
            run.base.relayout(run.hole_span)
        if session is not None:
            session.canvas = None  # the splice below edits its cache in place: invalid until updated
        if spec is not None:
            spec.reset()
        if run.full_every_step or prior is None or not run.reuse(*prior, policy):
            # a prefill checks drafts for the first slots as it goes (`draft_opening`); a reuse
            # step does not: on a CPU its few rows cost less than the draft rows would add
            opening, slots = None, []
            if spec is not None and cfg.draft_opening:
                slots = run.slots()
                opening = spec.opening(slots)
            run.full(opening)
            if spec is not None and opening is not None:  # a prefill commits nothing: the same slots
                spec.adopt(opening, slots)
        if session is not None and not run.full_every_step:
            session.canvas, session.holes, session.cache, session.age = run.ids, run.hole_span, run.cache, run.age
        if not _denoise(run, spec, should_stop):
            run.out.fills = [[] for _ in range(n_holes)]
            model.tap = model.tapped = None
            return run.out
        run.read_fills()
        prior = (run.ids, run.hole_span, run.cache, run.age, False)  # growth splices the run's own cache
        if not _grow(a, holes, cfg, max_new_tokens, stop, first_stop):
            break
    run.out.fills = [_strip(a, f, stop, first_stop if h == 0 else None) for h, f in enumerate(holes.fills)]
    run.out.scores = run.scores.read()
    if not run.full_every_step:
        _keep_caches(run)
    model.tap = model.tapped = None
    return run.out


def _denoise(run: _Run, spec: Speculator | None, should_stop: Callable[[], bool] | None) -> bool:
    """One round of steps over the laid-out, encoded canvas until no mask is left (or a rule
    stops it for a growth round). False when `should_stop` cancelled the run (marked in `run.out`)."""
    t0, step = time.perf_counter(), 0
    slots = run.slots()
    before = None  # the slots at the last forward (lazy steps run the rows changed since)
    left = slots.count(run.a.mask_id)
    while left:
        if should_stop is not None and should_stop():
            run.out.cancelled = True
            run.out.steps_ms += (time.perf_counter() - t0) * 1e3
            return False
        if step > 0 and spec is not None:
            spec.forward(slots)
        elif step > 0:
            refresh = run.full_every_step or (run.cfg.refresh_every > 0 and step % run.cfg.refresh_every == 0)
            run.full() if refresh else run.cached_step(before, slots)
        before = slots
        slots, left = run.commit(slots, left)
        step += 1
        if spec is not None:  # commit on through the drafts that held
            slots, left = spec.follow(slots, left)
        if run.cfg.loop_guard:
            slots, left = run.cut_loops(slots, left)
        if run.min_indent is not None and left:
            slots, left = run.cut_dedent(slots, left)
        if left and run.short_of_masks(slots):
            break
    run.out.steps_ms += (time.perf_counter() - t0) * 1e3
    return True


def _keep_caches(run: _Run) -> None:
    """What a check after the run reads (`engine.rerank`): the run's cache, the base reading's
    where it covers the prefix, and the base's choices at the fill's slots."""
    run.out.cache = run.cache
    b = run.base
    if b is not None and not b.broken and b.state.fed[:run.hole_span[0]] == run.ids[:run.hole_span[0]]:
        run.out.base_cache = b.state.cache
    read = run.record.read() if run.record is not None and b is not None else None
    if read is not None:
        run.out.base_best, run.out.base_lp = read
        run.out.base_fed = list(b.state.fed[run.hole_span[0]:])
