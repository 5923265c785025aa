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
line is the same line and nothing more runs. Otherwise it decodes the base's line from the first
token it disagrees with, greedily (a row per forward, and prompt-lookup drafts checked in the same
forward), scores it the same way, and keeps the higher of the two. Everything runs on the rows
after the prefix: the adapted model's lower layers are the base's, causal, so the prefix's
keys/values from the run's cache serve both (`engine.expert` holds the base's upper layers and
their keys/values for the prefix).

A decode that mixed the base in (`engine.expert`) has read it at every slot of the fill already:
its greedy choice there, its log-probability of the fill's token, and the rows its caches hold
(`GenOutput.base_best`, `base_lp`, `base_fed`). From those the check knows where the base
disagrees without a forward. Where it agrees, nothing runs at all. Elsewhere the base's decode
starts at the slot it disagrees at, on the fill's rows in place, and the fill's suffix head is
read in the same first forward (`feed_together`); the base's line is scored from where it leaves
the fill, in one more. That is one forward fewer than reading the fill first (`_read_first`,
kept for decodes without that reading), on fewer rows. In float32 the two ways agree exactly;
so do they with int8 matmuls over a float32 cache (`DLSP_HALF_CACHE=0`, to 0.01 nats a token on
held-out lines). Over the int8 engine's fp16 cache they differ by up to ~0.35 nats a token: the
reader recomputes the row before the hole from fp16 keys/values where the decode took it from the
prefill, and int8 activation rounding carries the difference on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from engine.config import ModelArgs
from engine.expert import BaseReading, never_ids
from engine.fills import GenOutput
from engine.kv_cache import KVCache
from engine.speculate import lookup
from engine.tokenizer import Tokenizer
from kernels.attention import causal_attention
from kernels.rope import rope_tables

ROOM = 96  # rows a reader may append after the prefix (a line, its suffix head, some slack)
# the most forwards a check runs (~35-40 ms each at the 135M shape on 2 cores): a base line that has
# not ended by the last but one is no candidate (the last scores it). On 200 held-out lines (seeds
# 20, 21) the check ran 0-17; at most 6 kept every exact match and 46 of the 55 lines it changed
# (edit similarity 0.535 -> 0.533) and bounds what it adds to a suggestion at ~250 ms
MAX_FORWARDS = 6


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
        counter: a one-item list the reader counts its forwards in, shared by readers whose rows
            run in the same forwards (`feed_together`); None = its own.
        room: the most rows it appends (their keys/values are allocated up front).
    """

    def __init__(self, reading: BaseReading, cache: KVCache, base_cache: KVCache, start: int,
                 counter: list[int] | None = None, room: int = ROOM) -> None:
        self.model = reading.model
        self.layers = [*reading.model.layers[:reading.first], *reading.layers]
        caches = [*zip(cache.keys[:reading.first], cache.values[:reading.first]),
                  *zip(base_cache.keys, base_cache.values)]
        self.n0 = self.n = start - 1  # rows held: the prefix's (views of the caches, never written) and new ones
        self.prefix = [(k[:, :, :self.n0], v[:, :, :self.n0]) for k, v in caches]
        self.size = room
        shape = (*caches[0][0].shape[:2], room, caches[0][0].shape[3])
        self.kv = [(k.new_zeros(shape), v.new_zeros(shape)) for k, v in caches]  # the new rows'
        self.counter = [0] if counter is None else counter

    @property
    def forwards(self) -> int:
        return self.counter[0]

    @property
    def room(self) -> int:
        return self.n0 + self.size - self.n

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Append rows holding `ids`: (len(ids), V) float log-probabilities of the token after each.
        Setting `n` back first drops the rows after it (they are written over)."""
        return feed_together([(self, ids)])[0]


@torch.inference_mode()
def feed_together(feeds: list[tuple[CausalReader, list[int]]]) -> list[torch.Tensor]:
    """`CausalReader.feed` for several readers of the same base and caches in one forward: the
    matmuls run once over all their new rows (on a CPU a forward costs about what its weights do,
    whatever the rows), each reader's rows attend to its own prefix and rows only. Counted once."""
    first = feeds[0][0]
    for r, ids in feeds:
        if r.model is not first.model or r.counter is not first.counter:
            raise ValueError("readers fed together must share the base and the forward counter")
        if not ids or len(ids) > r.room:
            raise ValueError(f"{len(ids)} rows do not fit the reader's {r.room} free rows")
    m, a = first.model, first.model.args
    dev = first.kv[0][0].device
    index = torch.cat([torch.arange(r.n, r.n + len(ids), device=dev) for r, ids in feeds])
    cos, sin = rope_tables(a.head_dim, index, a.rope_theta)
    x = m.tok_emb(torch.tensor([[t for _, ids in feeds for t in ids]], device=dev))
    spans, at = [], 0
    for _, ids in feeds:
        spans.append((at, at + len(ids)))
        at += len(ids)
    for li, layer in enumerate(first.layers):
        q, k, v = layer.qkv(x, cos, sin)
        out = []
        for (r, _), (s, e) in zip(feeds, spans):
            (kp, vp), (kn, vn) = r.prefix[li], r.kv[li]
            lo, hi = r.n - r.n0, r.n - r.n0 + e - s
            kn[:, :, lo:hi], vn[:, :, lo:hi] = k[:, :, s:e].to(kn.dtype), v[:, :, s:e].to(vn.dtype)
            keys = torch.cat([kp, kn[:, :, :hi]], 2).to(q.dtype)
            values = torch.cat([vp, vn[:, :, :hi]], 2).to(q.dtype)
            out.append(causal_attention(q[:, :, s:e], keys, values, index[s:e]))
        x = layer.finish(x, torch.cat(out, 2) if len(out) > 1 else out[0])
    for r, ids in feeds:
        r.n += len(ids)
    first.counter[0] += 1
    lp = F.log_softmax(m.logits(m.norm(x)[0]).float(), -1)
    return [lp[s:e] for s, e in spans]


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
    # what the decode read of the base at the fill's slots (`GenOutput.base_best` and the rest):
    # its own choice, its log-probability of the fill's token, the tokens the caches' rows hold
    base_best: list[int] | None = None
    base_lp: list[float] | None = None
    fed: list[int] | None = None


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
                        base_lp=out.base_lp, fed=out.base_fed,
                        first_allowed=None if first_allowed is None else first_allowed.to(newline.device))


def _ids(inp: RerankInputs, lead: str, line: str, head: str) -> tuple[list[int], int]:
    """The ids of lead + line + head as a reader takes them (at most `ROOM - 1`), and how many of
    them belong to lead + line."""
    ids, offs = inp.encode(lead + line + head)
    keep = min(len(ids), ROOM - 1)
    return ids[:keep], min(keep, sum(1 for o in offs if o < len(lead + line)))


def _known(inp: RerankInputs, ids: list[int], n_line: int) -> bool:
    """Whether the decode's reading of the base covers the line: its choice and log-probability at
    every slot through the line's end, the fill's ids are the line's as the check encodes it, and
    the caches' rows hold them (the base read the same rows; a reader starts on them in place)."""
    best, lps, fed = inp.base_best, inp.base_lp, inp.fed
    return (best is not None and lps is not None and fed is not None and len(best) > n_line
            and len(lps) >= n_line and inp.fill[:n_line] == ids[:n_line] and fed[:n_line] == ids[:n_line])


def _split(best: list[int], inp: RerankInputs, ids: list[int], n_line: int) -> int | None:
    """The first slot where the base's greedy choice (`best`, per slot from the line's start)
    differs from the line: a token of the line, or its end (the base goes on where the line ends);
    None where it wrote the line and ended it."""
    for j in range(n_line + 1):
        if j < n_line:
            if best[j] != ids[j]:
                return j
        elif not (best[j] in inp.ends or bool(inp.newline[best[j]])) and not (j < len(ids) and best[j] == ids[j]):
            return j
    return None


def _tail(inp: RerankInputs, ids: list[int], c: int, counter: list[int]) -> tuple[CausalReader, list[int]]:
    """To score `ids` (lead + line + head) whose first `c` tokens are the fill's: a reader holding
    those rows in place, and the rows to feed it (the last of them again, then the rest)."""
    rows = [inp.last if c == 0 else inp.fill[c - 1], *ids[c:]]
    return CausalReader(inp.reading, inp.cache, inp.base_cache, inp.start + c, counter, len(rows)), rows


def _tail_score(inp: RerankInputs, ids: list[int], c: int, rows: torch.Tensor) -> float:
    """log p(ids): the decode's log-probabilities of the first `c`, the fed `rows` for the rest."""
    rest = ids[c:]
    tail = float(rows[torch.arange(len(rest)), torch.tensor(rest)].sum()) if rest else 0.0
    return (float(sum(inp.base_lp[:c])) if c else 0.0) + tail


def _score(inp: RerankInputs, ids: list[int],
           counter: list[int] | None = None) -> tuple[float, torch.Tensor, CausalReader]:
    """Log-probability of `ids` (lead + line + head) after the prefix read in one forward, the
    rows' log-probs, and the reader that read them (with room for a decode after them)."""
    reader = CausalReader(inp.reading, inp.cache, inp.base_cache, inp.start, counter)
    lp = reader.feed([inp.last, *ids])
    return _tail_score(inp, ids, 0, lp), lp, reader


def _choose(line: str, base_line: str, s_model: float, s_base: float, forwards: int) -> Reranked:
    if s_base > s_model:
        return Reranked(base_line, "base", forwards, (s_model, s_base))
    return Reranked(line, "model", forwards, (s_model, s_base))


@torch.inference_mode()
def rerank(inp: RerankInputs, lead: str, line: str, suffix: str, max_tokens: int = 48, extra: int = 8,
           should_stop: Callable[[], bool] | None = None, max_forwards: int = MAX_FORWARDS) -> Reranked:
    """The engine's `line` against the base's own line (see the module's doc). The base's line
    holds at most `max_tokens` tokens, and at most `extra` more than the fill's; the check runs at
    most `max_forwards` forwards (at least 2)."""
    budget = max(1, max_forwards - 1)  # forwards the base's decode may reach: the last one scores
    head = suffix_head(suffix)
    ids, n_line = _ids(inp, lead, line, head)
    # the base's line may run a little longer than the fill, not to the budget: a base that
    # rambles on (a regex, a list) would hold the editor's suggestion for dozens of forwards
    # (on 400 held-out lines, a base line more than 8 tokens longer than the fill never won a
    # line: 5 times it was shown, none of them right)
    cap = min(max_tokens, n_line + extra)
    if not _known(inp, ids, n_line):
        return _read_first(inp, lead, line, head, ids, n_line, cap, should_stop, budget)
    split = _split(inp.base_best, inp, ids, n_line)
    if split is None:  # the base wrote the fill itself: nothing to read
        return Reranked(line, "model", 0, ())
    # the fill's score rides along with the first forward of the base's decode, which starts from
    # the fill's rows before `split` in place
    counter: list[int] = [0]
    ride = [_tail(inp, ids, n_line, counter)]
    t = inp.base_best[split]
    out = list(ids[:split]) if t in inp.ends else None  # the base ends the line there
    got: list[torch.Tensor] = []
    if out is None:
        reader = CausalReader(inp.reading, inp.cache, inp.base_cache, inp.start + split + 1, counter)
        row = torch.full((inp.newline.shape[0],), float("-inf"), device=inp.newline.device)
        row[t] = 0.0  # the base's choice there, as the decode read it
        out = _decode_base(inp, lead, reader, ids[:split], row, cap, should_stop, line_ids=ids[:n_line],
                           ride=ride, got=got, max_forwards=budget)
    base_line = _base_line(inp, lead, out)
    if base_line is None or base_line == line:
        return Reranked(line, "model", counter[0], ())
    ids2, _ = _ids(inp, lead, base_line, head)
    c = 0
    while c < min(len(ids2), n_line) and ids2[c] == ids[c]:
        c += 1
    scoring = _tail(inp, ids2, c, counter)
    rows = feed_together([scoring, *ride] if not got else [scoring])
    s_model = _tail_score(inp, ids, n_line, got[0] if got else rows[1])
    return _choose(line, base_line, s_model, _tail_score(inp, ids2, c, rows[0]), counter[0])


def _base_line(inp: RerankInputs, lead: str, out: list[int] | None) -> str | None:
    """The base's decoded ids as a line after the lead; None when there is no line to weigh."""
    if out is None:
        return None
    text = inp.decode(out)
    text = text[len(lead):] if text.startswith(lead) else text
    line = text.split("\n", 1)[0]
    return line if line.strip() else None


def _read_first(inp: RerankInputs, lead: str, line: str, head: str, ids: list[int], n_line: int, cap: int,
                should_stop: Callable[[], bool] | None, budget: int) -> Reranked:
    """The check without the decode's reading of the base: a forward reads the line (`ids`, the
    first `n_line` of them lead + line) first."""
    s_model, lp, reader = _score(inp, ids)
    # the first row where the base's greedy choice differs (the rows are masked in place: ~200 KB
    # each, no copy)
    lp[:, inp.banned] = float("-inf")
    if inp.first_allowed is not None:
        lp[0, ~inp.first_allowed] = float("-inf")
    split = _split(lp.argmax(-1).tolist(), inp, ids, n_line)
    if split is None:
        return Reranked(line, "model", reader.forwards, (s_model,))
    reader.n = inp.start + split  # the rows of the line's first `split` tokens stay: the base's decode goes on from them
    out = _decode_base(inp, lead, reader, ids[:split], lp[split].clone(), cap, should_stop, line_ids=ids[:n_line],
                       max_forwards=budget)
    del lp
    base_line = _base_line(inp, lead, out)
    if base_line is None or base_line == line:
        return Reranked(line, "model", reader.forwards, (s_model,))
    s_base = _score(inp, _ids(inp, lead, base_line, head)[0], reader.counter)[0]
    return _choose(line, base_line, s_model, s_base, reader.forwards)


def _decode_base(inp: RerankInputs, lead: str, reader: CausalReader, head: list[int], row: torch.Tensor,
                 max_tokens: int, should_stop: Callable[[], bool] | None,
                 line_ids: list[int] = (), ride: list[tuple[CausalReader, list[int]]] = (),
                 got: list[torch.Tensor] | None = None, max_forwards: int | None = None) -> list[int] | None:
    """The base's greedy line after `head` (ids of lead + line so far, read by `reader`; `row`:
    the log-probs after them), with prompt-lookup drafts (`engine.speculate.lookup`) checked in
    the same forward: first from the fill's own line (`line_ids`: the two lines often meet again
    after they part, `(self, node):`), then from the visible text. Returns the ids through the
    token that ends the line (EOS not kept; the forwards it ran are the reader's); None when the
    line does not start with `lead` or has not ended within `max_tokens` (a line cut short is no
    candidate), or would need a forward past the reader's `max_forwards`. `ride`: other readers'
    rows fed in the decode's first forward (`feed_together`), their log-probs appended to `got`."""
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
        if max_forwards is not None and reader.forwards >= max_forwards:
            return None
        width = min(inp.draft, reader.room - 2, max_tokens - len(out))
        drafts = (lookup(out, list(line_ids), width) or lookup(inp.before + out, inp.after, width)) if width > 0 else []
        n0 = reader.n
        if ride and got is not None and not got:
            rows, *others = feed_together([(reader, [t, *drafts]), *ride])
            got.extend(others)
        else:
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
