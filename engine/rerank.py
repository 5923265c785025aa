"""A single-line fill checked against the code after it: the pretrained base's own line as a
second candidate, and the better of the two by the base's likelihood of the line together with
the suffix's next line. Works on token ids, caches and modules only.

The adapted model and the base it came from (read left to right, `engine.expert`) each complete
about as many held-out lines exactly, but not the same ones: on 100 held-out single lines the
engine's fill was right 17 times, the base's 15, one of the two 19 times. The suffix tells them
apart. Code after the line is far likelier after the right line (`x = f()` before `return x`,
a comment before code rather than an unclosed docstring), and the base scores it exactly,
causally, from keys/values the run already holds.

`rerank` scores the engine's fill (the fill, then the suffix up to the end of its next non-blank
line). Where the base agrees with every token of the fill and with where it ends, the base's
line is the same line and nothing more runs. A decode that mixed the base in (`engine.expert`)
read it at every slot of the fill already and keeps its own choice there (`GenOutput.base_best`):
where those were the fill and then its end, the check knows it without reading anything (17 of
40 held-out lines; the same 40 answers, 8% fewer forwards and 19% less time in the check). Otherwise it decodes the base's line from the first
token it disagrees with, greedily (a row per forward, and prompt-lookup drafts checked in the same
forward), scores it the same way, and keeps the higher of the two. Everything runs on the rows after the prefix: the adapted model's lower layers
are the base's, causal, so the prefix's keys/values from the run's cache serve both (`engine.
expert` holds the base's upper layers and their keys/values for the prefix).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.config import ModelArgs
from engine.expert import BaseReading, never_ids
from engine.generate import GenOutput
from engine.kv_cache import KVCache
from engine.speculate import lookup
from engine.tokenizer import Tokenizer
from kernels.attention import causal_attention
from kernels.rope import rope_tables

ROOM = 96  # rows a reader may append after the prefix (a line, its suffix head, some slack)


def suffix_head(suffix: str, max_chars: int = 120) -> str:
    """The suffix up to the end of the first line after the cursor's that holds non-whitespace
    (the rest of the cursor's line included), at most `max_chars` characters."""
    end = suffix.find("\n")
    if end < 0:
        return suffix[:max_chars]
    while True:
        nxt = suffix.find("\n", end + 1)
        line = suffix[end + 1:] if nxt < 0 else suffix[end + 1:nxt]
        end = len(suffix) if nxt < 0 else nxt
        if line.strip() or nxt < 0:
            return suffix[:min(end, max_chars)]


class CausalReader:
    """The base read left to right over rows appended after a prefix.

    Args:
        reading: the base's upper layers over `reading.model`'s causal lower ones.
        cache: the adapted model's cache of the run; rows [0, start) are the prefix's (its
            lower layers' keys/values are the base's).
        base_cache: the base reading's cache; rows [0, start) hold the prefix.
        start: the first canvas position after the prefix (the hole's start). The row before it is
            re-fed by the first `feed` (its output predicts the first new token).
    """

    def __init__(self, reading: BaseReading, cache: KVCache, base_cache: KVCache, start: int) -> None:
        self.model = reading.model
        self.layers = [*reading.model.layers[:reading.first], *reading.layers]
        caches = [*zip(cache.keys[:reading.first], cache.values[:reading.first]),
                  *zip(base_cache.keys, base_cache.values)]
        self.n0 = self.n = start - 1  # rows held: the prefix's (views of the caches, never written) and new ones
        self.prefix = [(k[:, :, :self.n0], v[:, :, :self.n0]) for k, v in caches]
        shape = (*caches[0][0].shape[:2], ROOM, caches[0][0].shape[3])
        self.kv = [(k.new_zeros(shape), v.new_zeros(shape)) for k, v in caches]  # the new rows'
        self.forwards = 0

    @property
    def room(self) -> int:
        return self.n0 + ROOM - self.n

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        """Append rows holding `ids`: (len(ids), V) float log-probabilities of the token after each.
        Setting `n` back first drops the rows after it (they are written over)."""
        if not ids or len(ids) > self.room:
            raise ValueError(f"{len(ids)} rows do not fit the reader's {self.room} free rows")
        m, a = self.model, self.model.args
        dev = self.kv[0][0].device
        index = torch.arange(self.n, self.n + len(ids), device=dev)
        cos, sin = rope_tables(a.head_dim, index, a.rope_theta)
        x = m.tok_emb(torch.tensor([ids], device=dev))
        lo, hi = self.n - self.n0, self.n - self.n0 + len(ids)
        for layer, (kp, vp), (kn, vn) in zip(self.layers, self.prefix, self.kv):
            q, k, v = layer.qkv(x, cos, sin)
            kn[:, :, lo:hi], vn[:, :, lo:hi] = k.to(kn.dtype), v.to(vn.dtype)
            keys = torch.cat([kp, kn[:, :, :hi]], 2).to(q.dtype)
            values = torch.cat([vp, vn[:, :, :hi]], 2).to(q.dtype)
            x = layer.finish(x, causal_attention(q, keys, values, index))
        self.n += len(ids)
        self.forwards += 1
        return F.log_softmax(m.logits(m.norm(x)[0]).float(), -1)


@dataclass
class Reranked:
    text: str  # the chosen line (without the healed lead)
    chosen: str  # "model" or "base"
    forwards: int  # forwards the check ran
    scores: tuple[float, ...]  # log p_base(lead + line + suffix head | prefix), per candidate (none
    # where the base wrote the fill itself during the decode: nothing was scored)


@dataclass
class RerankInputs:
    """What the check needs from the engine."""

    reading: BaseReading
    cache: KVCache
    base_cache: KVCache
    start: int
    last: int
    encode: Callable[[str], tuple[list[int], list[int]]]  # text -> ids, start offsets
    decode: Callable[[list[int]], str]
    ends: frozenset[int]  # ids that end a fill (EOS/pad)
    newline: torch.Tensor  # (V,) bool: tokens holding a line break
    banned: torch.Tensor  # (V,) bool: never proposed by the base's decode
    first_allowed: torch.Tensor | None  # (V,) bool: what the line's first token may be (healing)
    before: list[int] = field(default_factory=list)  # the canvas's ids before the hole (drafts' lookup)
    after: list[int] = field(default_factory=list)  # the suffix's ids
    draft: int = 0  # prompt-lookup drafts checked per forward of the base's decode (0 = off)
    fill: list[int] = field(default_factory=list)  # the run's fill (ids, healed lead first)
    base_best: list[int] | None = None  # the base's own choice at each slot of it (`GenOutput.base_best`)


def from_run(out: GenOutput, before: list[int], after: list[int], a: ModelArgs, tok: Tokenizer,
             reading: BaseReading, banned: list[int], newline: torch.Tensor, first_allowed: torch.Tensor | None,
             draft: int) -> RerankInputs:
    """The check's inputs from a finished run of `engine.generate.generate` that kept its caches
    (`GenOutput.cache`, `GenOutput.base_cache`): `before` is its canvas up to the hole (the
    leading id and the prefix), `after` the suffix's ids."""
    if out.cache is None or out.base_cache is None:
        raise ValueError("the run kept no caches for the check")
    never = never_ids(a, banned, newline.device)
    return RerankInputs(reading=reading, cache=out.cache, base_cache=out.base_cache, start=len(before),
                        last=before[-1], encode=tok.encode_offsets, decode=tok.decode,
                        ends=frozenset(i for i in (a.eos_id, a.pad_id) if i is not None), newline=newline,
                        banned=never, before=before, after=after, draft=draft,
                        fill=list(out.fills[0]) if out.fills else [], base_best=out.base_best,
                        first_allowed=None if first_allowed is None else first_allowed.to(newline.device))


def _ids(inp: RerankInputs, lead: str, line: str, head: str) -> tuple[list[int], int]:
    """The ids of lead + line + head as a reader takes them (at most `ROOM - 1`), and how many of
    them belong to lead + line."""
    ids, offs = inp.encode(lead + line + head)
    keep = min(len(ids), ROOM - 1)
    return ids[:keep], min(keep, sum(1 for o in offs if o < len(lead + line)))


def _base_wrote(inp: RerankInputs, ids: list[int], n_line: int) -> bool:
    """Whether the base's own choices during the decode (`base_best`) were the line's ids, token
    for token, and then a line's end or the suffix's first token: what the check's first forward
    would find, known without it. Only where the fill's ids are the line's as the check encodes it
    (the base read the same rows)."""
    best = inp.base_best
    if best is None or len(best) <= n_line or inp.fill[:n_line] != ids[:n_line] or best[:n_line] != ids[:n_line]:
        return False
    end = best[n_line]
    return end in inp.ends or bool(inp.newline[end]) or (n_line < len(ids) and end == ids[n_line])


def _score(inp: RerankInputs, lead: str, line: str,
           head: str) -> tuple[float, list[int], torch.Tensor, int, CausalReader]:
    """Log-probability of lead + line + head after the prefix, the ids, the rows' log-probs, how
    many of the ids belong to lead + line, and the reader that read them."""
    ids, n_line = _ids(inp, lead, line, head)
    reader = CausalReader(inp.reading, inp.cache, inp.base_cache, inp.start)
    lp = reader.feed([inp.last, *ids])
    score = float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum()) if ids else 0.0
    return score, ids, lp, n_line, reader


@torch.inference_mode()
def rerank(inp: RerankInputs, lead: str, line: str, suffix: str, max_tokens: int = 48, extra: int = 8,
           should_stop: Callable[[], bool] | None = None) -> Reranked:
    """The engine's `line` against the base's own line (see the module's doc). The base's line
    holds at most `max_tokens` tokens, and at most `extra` more than the fill's."""
    head = suffix_head(suffix)
    if _base_wrote(inp, *_ids(inp, lead, line, head)):
        return Reranked(line, "model", 0, ())
    s_model, ids, lp, n_line, reader = _score(inp, lead, line, head)
    # the first row where the base's greedy choice differs: a token of the line, or the line's end
    # (the rows are masked in place: ~200 KB each, no copy)
    lp[:, inp.banned] = float("-inf")
    if inp.first_allowed is not None:
        lp[0, ~inp.first_allowed] = float("-inf")
    best = lp.argmax(-1).tolist()
    split = None
    for j in range(n_line + 1):
        if j < n_line:
            if best[j] != ids[j]:
                split = j
                break
        elif not (best[j] in inp.ends or bool(inp.newline[best[j]])) and not (j < len(ids) and best[j] == ids[j]):
            split = j  # the base would go on where the line ends
    if split is None:
        return Reranked(line, "model", reader.forwards, (s_model,))
    reader.n = inp.start + split  # the rows of the line's first `split` tokens stay: the base's decode goes on from them
    # the base's line may run a little longer than the fill, not to the budget: a base that
    # rambles on (a regex, a list) would hold the editor's suggestion for dozens of forwards
    # (on 400 held-out lines, a base line more than 8 tokens longer than the fill never won a
    # line: 5 times it was shown, none of them right)
    out = _decode_base(inp, lead, reader, ids[:split], lp[split].clone(), min(max_tokens, n_line + extra),
                       should_stop, line_ids=ids[:n_line])
    del lp
    forwards = reader.forwards  # the score's and the base's decode's
    if out is None:  # healing the base did not keep, or its line did not end in time
        return Reranked(line, "model", forwards, (s_model,))
    text = inp.decode(out)
    text = text[len(lead):] if text.startswith(lead) else text
    base_line = text.split("\n", 1)[0]
    if base_line == line or not base_line.strip():
        return Reranked(line, "model", forwards, (s_model,))
    s_base, *_, scored = _score(inp, lead, base_line, head)
    forwards += scored.forwards
    if s_base > s_model:
        return Reranked(base_line, "base", forwards, (s_model, s_base))
    return Reranked(line, "model", forwards, (s_model, s_base))


def _decode_base(inp: RerankInputs, lead: str, reader: CausalReader, head: list[int], row: torch.Tensor,
                 max_tokens: int, should_stop: Callable[[], bool] | None,
                 line_ids: list[int] = ()) -> list[int] | None:
    """The base's greedy line after `head` (ids of lead + line so far, read by `reader`; `row`:
    the log-probs after them), with prompt-lookup drafts (`engine.speculate.lookup`) checked in
    the same forward: first from the fill's own line (`line_ids`: the two lines often meet again
    after they part, `(self, node):`), then from the visible text. Returns the ids through the
    token that ends the line (EOS not kept; the forwards it ran are the reader's); None when the
    line does not start with `lead` or has not ended within `max_tokens` (a line cut short is no
    candidate)."""
    out = list(head)

    def pick(row: torch.Tensor) -> int:
        row = row.clone()
        row[inp.banned] = float("-inf")
        if not out and inp.first_allowed is not None:
            row[~inp.first_allowed] = float("-inf")
        return int(row.argmax())

    def done(t: int) -> bool | None:
        """Take `t`: True when the line has ended, None when it left the lead or ran to the cap."""
        if t in inp.ends:
            return True
        out.append(t)
        body = inp.decode(out)
        if not body.startswith(lead) and not lead.startswith(body):
            return None
        return True if "\n" in body[len(lead):] else (None if len(out) >= max_tokens else False)

    while True:
        t = pick(row)
        ended = done(t)
        if ended is None:
            return None
        if ended:
            return out
        if reader.room < 2 or (should_stop is not None and should_stop()):
            return None
        width = min(inp.draft, reader.room - 2, max_tokens - len(out))
        drafts = (lookup(out, list(line_ids), width) or lookup(inp.before + out, inp.after, width)) if width > 0 else []
        n0 = reader.n
        rows = reader.feed([t, *drafts])
        k = 0
        while k < len(drafts) and pick(rows[k]) == drafts[k]:  # the drafts the base itself writes
            ended = done(drafts[k])
            k += 1
            if ended is None:
                return None
            if ended:
                return out
        reader.n = n0 + 1 + k  # rows of drafts that did not hold are written over by the next feed
        row = rows[k]
