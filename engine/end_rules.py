"""The logit and commit rules that decide where a fill ends, mixed into `engine.generate`'s run
(they read its canvas, hole layout and stop sets): which tokens would end a fill at a slot,
`end_mass`, `nonempty`, `close_brackets`, EOS after an ending commit, and the cuts of a decoded
head (`loop_guard`'s loops, `min_indent`'s dedent); and one rule on where a fill may start
(`avoid`: not by copying a given line). Works on tensors on the model's device."""

from __future__ import annotations

import torch

from engine.samplers import line_loop_start, loop_start, phrase_loop_start

OPENERS, CLOSERS = "([{", ")]}"


def open_depth(text: str, start: int = 0) -> int:
    """Brackets `text[start:]` opens and does not close, outside string literals and `#` comments
    (a quote opens a literal that the same quote closes, a backslash escapes). `text[:start]` (the
    line before the fill) is read for literals and comments only; a literal opened on an earlier
    line is not seen, so a fill inside one reads its quotes the other way round. Closers of
    brackets opened before `start` count negative."""
    depth, quote, i = 0, "", 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = ""
            elif c == "\n" and len(quote) == 1:  # a one-quote literal ends with its line
                quote = ""
        elif c == "#":  # a comment, to its line's end
            nl = text.find("\n", i)
            if nl < 0:
                break
            i = nl
        elif c in "'\"":
            quote = c * 3 if text.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in OPENERS and i >= start:
            depth += 1
        elif c in CLOSERS and i >= start:
            depth -= 1
        i += 1
    return depth


def dedent_start(head: list[int], texts: list[str], floor: int) -> int | None:
    """Index of the first token of `head` (a fill's committed tokens, in order) on a line after
    its first whose code starts fewer than `floor` columns in (tabs as 4): where a block fill has
    left its block. None while no such line has a character of code yet."""
    n = len(texts)
    text, starts = "", []
    for t in head:
        starts.append(len(text))
        text += texts[t] if t < n else ""
    at = text.find("\n")
    while at >= 0:
        line_start = at + 1
        nl = text.find("\n", line_start)
        line = text[line_start:] if nl < 0 else text[line_start:nl]
        code = line.lstrip(" \t")
        if code:
            if len(line[:len(line) - len(code)].expandtabs(4)) < floor:
                return next((i for i, st in enumerate(starts) if st >= line_start), None)
        at = nl
    return None


def _ban_unless_nothing_left(logits: torch.Tensor, ban: torch.Tensor) -> None:
    """Set `logits` (M, V) to -inf where `ban` (M, V) holds, in place, except on rows it would
    leave with no allowed token."""
    barred = logits.masked_fill(ban, float("-inf"))
    keep = torch.isfinite(barred).any(-1, keepdim=True)  # (M, 1)
    logits.copy_(torch.where(keep, barred, logits))


class EndRules:
    """Methods of `engine.generate._Run` (its attributes: `a`, `cfg`, `device`, `canvas`, `pos`,
    `hole_of`, `hole_host`, `holes`, `ends`, `stop`, `first`, `first_at`, `lead`, `blank`,
    `blank_stop`, `blank_first_stop`, `segments`, `texts`, `min_indent`, `avoid`, `blank_set`)."""

    def _ending(self, mpos: torch.Tensor, vocab: int) -> torch.Tensor:
        """(M, V) bool: the tokens that would end the fill at each slot: EOS and pad, and the stop
        tokens by `_end_fill`'s rule (with single-line fills, the tokens holding a line break;
        hole 0's first slot has its own set when its constraint gives one)."""
        ends = torch.zeros(1, vocab, dtype=torch.bool, device=self.device)
        ends[0, self.ends] = True
        if self.stop is not None:
            stop = self.stop[None, :]  # (1, V)
            if self.first is not None and self.first.stop is not None:
                stop = torch.where((mpos == self.pos[self.first_at])[:, None], self.first.stop[None, :], stop)  # (M, V)
            ends = ends | stop
        return ends.expand(mpos.shape[0], -1)

    def _decide_ends(self, logits: torch.Tensor, mpos: torch.Tensor) -> None:
        """`end_mass`: a slot ends the fill when the tokens that would end it hold at least that
        much probability together, and only then; the token is the likeliest of the chosen kind."""
        ends = self._ending(mpos, logits.shape[1])  # (M, V)
        mass = (logits.softmax(-1) * ends).sum(-1, keepdim=True)  # (M, 1)
        stop = mass >= self.cfg.end_mass
        logits.masked_fill_(ends & ~stop, float("-inf"))
        logits.masked_fill_(~ends & stop, float("-inf"))

    def _holds_code(self, slots: list[int], blank: set[int]) -> list[bool]:
        """Per hole: whether it has committed a token outside `blank` (whitespace-only and special ids)."""
        content = [False] * len(self.holes.fills)
        for i, t in enumerate(slots):
            if t != self.a.mask_id and t not in blank:
                content[self.hole_host[i]] = True
        return content

    def _bar_empty_end(self, logits: torch.Tensor, slots: list[int], masked: list[int],
                       mpos: torch.Tensor) -> None:
        """`nonempty`: rows of holes with no non-whitespace token committed yet may not end the
        fill. The line-break ban is dropped on a row it would leave with no allowed token."""
        content = self._holds_code(slots, self.blank)
        if all(content):
            return
        empty = torch.tensor([not content[self.hole_host[i]] for i in masked], device=self.device)[:, None]  # (M, 1)
        logits[:, self.ends] = logits[:, self.ends].masked_fill(empty, float("-inf"))
        if self.blank_stop is None:
            return
        stops = self.blank_stop[None, :]  # (1, V)
        if self.blank_first_stop is not None:
            stops = torch.where((mpos == self.pos[self.first_at])[:, None], self.blank_first_stop[None, :], stops)  # (M, V)
        _ban_unless_nothing_left(logits, empty & stops)

    def _bar_copied_start(self, logits: torch.Tensor, slots: list[int], masked: list[int]) -> None:
        """`avoid`: rows of a hole that holds only whitespace so far may not take the tokens that
        would begin the line it must not copy (`InfillRequest.avoid`); dropped on a row it would
        leave with no allowed token."""
        content = self._holds_code(slots, self.blank_set)
        rows = [(r, self.avoid[self.hole_host[i]]) for r, i in enumerate(masked) if not content[self.hole_host[i]]]
        rows = [(r, ban) for r, ban in rows if ban is not None]
        if not rows:
            return
        barred = torch.zeros_like(logits, dtype=torch.bool)  # (M, V)
        for r, ban in rows:
            barred[r] = ban
        _ban_unless_nothing_left(logits, barred)

    def _hold_open_line(self, logits: torch.Tensor, slots: list[int], masked: list[int]) -> None:
        """`close_brackets`: the frontier row of a hole whose decoded head opened a bracket it has
        not closed, and holds fewer than `cfg.close_brackets` tokens, may not end the fill
        (EOS/pad, and for single-line fills the stop tokens); dropped on a row it would leave with
        no allowed token."""
        mask, texts, n = self.a.mask_id, self.texts, len(self.texts)
        line = self._line_before()
        held = []
        for row, i in enumerate(masked):
            h = self.hole_host[i]
            idx = [j for j, hh in enumerate(self.hole_host) if hh == h]
            if i != next(j for j in idx if slots[j] == mask):  # not the hole's frontier slot
                continue
            head = [slots[j] for j in idx[:idx.index(i)]]
            text = "".join(texts[t] for t in head if t < n)
            start = len(line) if h == 0 else 0  # the line before the fill: literals and comments only
            if h == 0 and self.lead and text.startswith(self.lead):
                start += len(self.lead)  # the healed token's start is the prefix's
            if len(head) < self.cfg.close_brackets and open_depth((line if h == 0 else "") + text, start) > 0:
                held.append(row)
        if not held:
            return
        rows = torch.zeros(logits.shape[0], 1, dtype=torch.bool, device=self.device)  # (M, 1)
        rows[held] = True
        ends = self.stop.clone() if self.stop is not None else torch.zeros(
            logits.shape[1], dtype=torch.bool, device=self.device)  # (V,)
        ends[self.ends] = True
        _ban_unless_nothing_left(logits, rows & ends[None, :])

    def _line_before(self) -> str:
        """The text of the prefix's last line, up to hole 0 (from the prefix tokens; a token moved
        into the hole by healing is read from the fill)."""
        texts, parts = self.texts, []
        for t in reversed(self.segments[0]):
            piece = texts[t] if t < len(texts) else ""
            if "\n" in piece:
                parts.append(piece[piece.rfind("\n") + 1:])
                break
            parts.append(piece)
        return "".join(reversed(parts))

    def _end_fill(self, mpos: torch.Tensor, mhole: torch.Tensor, tokens: torch.Tensor, chosen: torch.Tensor) -> None:
        """After an EOS/pad commit (with `eos_fill`) or a stop token, the rest of that hole is EOS
        (the model was trained so: a FIM middle is followed by EOS pads). On the device: the
        first ending commit of each hole, then every masked slot after it."""
        ends = torch.zeros_like(chosen)
        if self.cfg.eos_fill:
            ends |= (tokens == self.a.eos_id) | (tokens == self.a.pad_id)
        if self.stop is not None:
            stop_here = self.stop[tokens]
            if self.first is not None and self.first.stop is not None:  # the first slot has its own rule
                stop_here = torch.where(mpos == self.pos[self.first_at], self.first.stop[tokens], stop_here)
            ends |= stop_here
        never = self.canvas.shape[1]
        first = torch.full((len(self.holes.fills),), never, device=self.device).scatter_reduce(
            0, mhole, torch.where(ends & chosen, mpos, never), "amin")  # (H,)
        row = self.canvas[0, self.pos]  # (P,)
        tail = (self.pos > first[self.hole_of]) & (row == self.a.mask_id)
        self.canvas[0, self.pos] = torch.where(tail, self.a.eos_id, row)

    def _heads(self, slots: list[int]) -> list[tuple[list[int], list[int], bool]]:
        """Per hole: its slot indices, its decoded head (the slots up to the first mask, cut at an
        end: a step that commits the end can commit more after it) and whether it has ended."""
        mask, out = self.a.mask_id, []
        for h in range(len(self.holes.fills)):
            idx = [i for i, hh in enumerate(self.hole_host) if hh == h]
            head = [slots[i] for i in idx]
            head = head[:head.index(mask)] if mask in head else head
            ends = [j for j, t in enumerate(head) if t in (self.a.eos_id, self.a.pad_id)]
            out.append((idx, head[:ends[0]] if ends else head, bool(ends)))
        return out

    def _end_at(self, slots: list[int], cut: list[int]) -> tuple[list[int], int]:
        """Slots `cut` become EOS (on the canvas and in `slots`); returns the slots and masks left."""
        self.canvas[0, self.pos[torch.tensor(cut, device=self.device)]] = self.a.eos_id
        slots = list(slots)
        for i in cut:
            slots[i] = self.a.eos_id
        return slots, slots.count(self.a.mask_id)

    def cut_loops(self, slots: list[int], left: int) -> tuple[list[int], int]:
        """`loop_guard`: a hole whose decoded head (its slots up to the first mask or end) ends in a loop
        (of tokens; of lines or of phrases, whitespace aside, in multi-line fills when the token
        texts are known) ends after the loop's first copy; the rest of it becomes EOS. Returns the slots
        and the masks left."""
        cut = []
        for idx, head, ended in self._heads(slots):
            at = loop_start(head, self.cfg.loop_guard)
            if at is None and self.stop is None and self.texts is not None:
                at = line_loop_start(head, self.texts, ended=ended)
                if at is None:
                    at = phrase_loop_start(head, self.texts, self.cfg.loop_guard)
            if at is not None:
                cut += idx[at:]
        return self._end_at(slots, cut) if cut else (slots, left)

    def cut_dedent(self, slots: list[int], left: int) -> tuple[list[int], int]:
        """`min_indent`: a hole whose decoded head has a line (after its first) starting left of
        `min_indent` columns has left its block: it ends before that line's first token (the rest
        becomes EOS), as the editor would cut it, without decoding the rest first."""
        cut = []
        for idx, head, _ in self._heads(slots):
            at = dedent_start(head, self.texts, self.min_indent)
            if at is not None:
                cut += idx[at:]
        return self._end_at(slots, cut) if cut else (slots, left)
