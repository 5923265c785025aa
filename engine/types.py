"""Plain types of the engine's public API: requests, results, sampling settings.

Text-level (`InfillRequest`, `InfillResult`) types are what `engine.Engine` speaks; the
sampler in `engine.generate` works on token ids and uses only `SamplingConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class SamplingConfig:
    """How holes are denoised.

    Attributes:
        sampler: "fast" (cached, parallel commits) or "naive" (full recompute, one commit per step).
        steps: maximum denoising steps per block of `hole_tokens`; None = one step per token
            (the worst case of the commit rule; the threshold usually finishes far sooner).
        threshold: commit every masked position whose confidence passes this (fast sampler).
        min_per_step: the fast sampler commits at least this many tokens per hole and step (the
            best by confidence), whatever the threshold says: a floor on parallelism.
        factor: Fast-dLLM's factor rule on top of the threshold (None = off): commit the n most
            confident while the j-th best has confidence >= 1 - factor / (j + 1). Needs a
            probability-valued confidence ("max_prob" or "margin").
        confidence: name in `engine.samplers.CONFIDENCE` ("max_prob", "margin", "neg_entropy").
        temperature: 0 = greedy and deterministic; > 0 samples with a generator seeded by `seed`.
        seed: seed of the explicit `torch.Generator` used when temperature > 0.
        refresh_every: recompute the cached keys/values of the context every R steps (0 = never).
        grow_tokens: tokens added to a hole when it is full, not finished and the budget allows.
        eos_fill: once EOS is committed in a hole, fill the rest of that hole with EOS at once.
        eos_frontier: EOS/pad may only be proposed at the first masked slot of a hole, so a fill
            ends where its text ends instead of EOS spreading leftwards from the far end of the
            hole (the most predictable slots, which otherwise empty the fill one step at a time).
        copy_weight: mix an n-gram cache of the visible text into the model's distribution with
            this weight (0 = off): a slot next to known tokens favours what followed (or preceded)
            the same tokens elsewhere in the file. See `engine.samplers.copy_prior`.
        copy_order: the longest match the cache counts (tokens).
        block: semi-autoregressive window (fast sampler): only the first `block` masked slots of
            each hole may be committed in a step, by the same rule; None = any slot.
        contiguous: commits run from each hole's frontier (fast sampler): the first masked slot
            always commits, each next one only if it passes the threshold and every slot before
            it commits too (within `block`). The canvas is then always a decoded head and a masked
            tail, the state the left-to-right training rows show the model, while confident runs
            still go several tokens per forward.
        nonempty: a fill may not end (EOS/pad, or a line break with nothing but whitespace
            before it in the fill) until it holds some non-whitespace text. A suggestion of
            nothing, or of a blank line, is never worth showing; without the rule the adapted
            135M model ended 28 of 100 held-out single lines right after their indentation.
        lazy_rows: cached steps (fast sampler) run only the rows that changed since the last
            forward (the slots just committed) and the rows the window's logits are read from;
            every other hole row keeps the keys/values of its last forward. Exact for a causal
            model (a row sees only rows before it, none of which changed), so the AR floor decodes
            with one row per token like a KV-cached AR model; in bidirectional layers the masked
            rows ahead of the frontier are stale (Fast-dLLM's approximate caching, Wu et al. 2025,
            arXiv:2505.22618), a quality cost for `dlsp eval` to measure. With `block=1` a step
            runs one row instead of the whole hole.
        draft: self-speculative decoding (0 = off): with `block=1`, greedy decoding, a shifted
            family and one hole, each forward also runs the next `draft` slots holding drafted
            tokens (`engine.speculate`: what followed the last committed tokens elsewhere in the
            visible text, else the model's trigram table, `engine.ngram`), each row seeing the
            rows after it as they were (`engine.model.Transformer.step`'s `prior`); the commit then continues
            through every draft that turns out to be what it would have committed anyway. The
            fill is the one-row-per-step decode's (`lazy_rows`), in fewer forwards; a forward of
            a few rows costs about what one row does on a CPU (weights are read once).
        draft_opening: with `draft`, a prefill also checks drafts for the first masked slot and
            the `draft` after it, layer by layer (`engine.model.DraftRows`): a right first draft
            (the lookup's, or the indentation of the line above for a slot that starts a line)
            saves the forward that would have checked the slots after it. Same fill. A step that
            reuses a session's cache does not: on a CPU the draft rows cost it more than the
            check they save.
        loop_guard: end a fill whose decoded head has fallen into a loop (0 = off): once it ends
            with the same span of 1-16 tokens this many times in a row, 12 tokens or more
            (`engine.samplers.loop_start`), the fill is cut after the span's first copy. A small
            model sometimes repeats a fragment until the budget runs out (`op(op(op(...`). In a
            multi-line fill the same goes for its last complete lines, whitespace aside: a block
            of 1-8 lines twice in a row (`line_loop_start`).
        lookahead: keep at least `lookahead // 2` masks ahead of a fill's decoded head (0 = off):
            when fewer are left and the fill has not ended, the hole is topped up to `lookahead`
            masks (a growth round). The number of masks between the head and the suffix tells a
            model trained with EOS padding how much is left to write; a fixed hole that empties
            as it is decoded tells it, falsely, that the line must end soon.
        end_penalty: subtracted from the logits of every token that would end a fill at its slot
            (EOS/pad; with single-line fills, tokens holding a line break): a prior against
            endings the model proposes too early (`return` for `return 2`).
        end_mass: decide whether a slot ends the fill by the probability of all the tokens that
            would end it together (0 = off): it ends when that is at least `end_mass`, and
            otherwise takes the likeliest token that goes on. The plain argmax weighs one end
            token against each way of going on alone, so a flat continuation (`self._` + any of
            many names) loses to an end the model itself gives ~12%.
        close_brackets: (0 = off) while a fill has opened a bracket it has not closed (outside
            strings and comments, `engine.end_rules.open_depth`) and holds fewer than this many
            tokens, it may not end (no EOS/pad; a single-line fill no token holding a line
            break). A small model often breaks a call after `(` where the code goes on on the
            same line (`self.rcLines.extend(` for `self.rcLines.extend(rcFile)`), and a line
            cut there is not a suggestion worth showing; multi-line fills ended the same way
            (`dlsp demo`'s parse_line body: `return line.split(` and EOS).
        base_weight: a model adapted from a pretrained AR base (whose lower layers it keeps causal
            and unchanged) also reads the slot being committed with the base's own upper layers,
            left to right, and scores each token by `log p_model + base_weight * log p_base`
            (0 = off; needs the fast sampler with `block=1` and one hole, `engine.expert`). The
            base learned on far more code; the adapted model sees the suffix. The engine applies
            it to single-line requests, and to multi-line ones with `base_multiline`.
        base_multiline: `base_weight` applies to multi-line requests (blocks, bodies, holes of code
            actions) too.
        rerank: single-line requests with the base's reading (`base_weight` > 0, greedy): the
            base's own line, decoded from the first token where it disagrees with the fill, is a
            second candidate, and the one under which the base finds the line and the suffix's
            next line likelier is shown (`engine.rerank`). Costs forwards only where the two differ.
    """

    sampler: str = "fast"
    steps: int | None = None
    threshold: float = 0.9
    min_per_step: int = 1
    factor: float | None = None
    confidence: str = "max_prob"
    temperature: float = 0.0
    seed: int = 0
    refresh_every: int = 0
    grow_tokens: int = 8
    eos_fill: bool = True
    eos_frontier: bool = True
    copy_weight: float = 0.0
    copy_order: int = 3
    block: int | None = None
    contiguous: bool = False
    nonempty: bool = True
    lazy_rows: bool = False
    draft: int = 0
    draft_opening: bool = True
    loop_guard: int = 0
    lookahead: int = 0
    end_penalty: float = 0.0
    end_mass: float = 0.0
    close_brackets: int = 0
    base_weight: float = 0.0
    base_multiline: bool = False
    rerank: bool = False


@dataclass(frozen=True)
class ContextSegment:
    """A piece of far context worth keeping when not all of the text fits the model.

    The engine clips once, in its own tokens: the cursor window (the prefix's end, the suffix's
    start) first, then segments by rank (lowest first) as long as they fit whole, then a wider
    window (`engine.clip`).

    Attributes:
        text: the segment's text (whole lines, ending with a line break).
        rank: lower is kept first (e.g. enclosing scope headers, then imports, then sibling
            signatures nearest first, then other files).
        kind: what it is ("scope", "imports", "outline", "other_file", ...), reported back in
            `InfillResult.kept`.
        at: the character offset of `text` in the request's prefix (then it is kept only if it lies
            before the window), or None for text from elsewhere, which goes before everything
            else in the order given.
    """

    text: str
    rank: int
    kind: str = ""
    at: int | None = None


@dataclass(frozen=True)
class InfillRequest:
    """Fill one or more holes between pieces of text.

    The document reads `prefix, hole 0, middles[0], hole 1, ..., middles[-1], hole N, suffix`,
    so a single-hole request has `middles == ()`.

    Attributes:
        prefix: text before the first hole.
        suffix: text after the last hole.
        middles: text between consecutive holes (len = number of holes - 1).
        hole_tokens: initial size of each hole in tokens (one int for all holes).
        max_new_tokens: budget per hole: a hole grows up to this many tokens.
        max_context_tokens: token budget for prefix + suffix (None = what the model allows).
        context: ranked segments of far context (see `ContextSegment`); the prefix and suffix are
            the cursor window and need not be clipped by the caller.
        session: a key for the text this request belongs to (a document URI): the engine keeps the
            last canvas and cache of each session and re-encodes only what changed; None = no reuse.
        sampling: sampler settings (None = the engine's default).
        single_line: each fill ends at its first line break: a committed token holding one ends
            the hole there (later slots become EOS, no growth) and the text is cut before it.
        min_indent: multi-line fills: a fill ends before its first line (after the first) whose
            code starts left of this many columns (tabs as 4), where it leaves the block the
            editor asked for, instead of decoding text the editor would cut (None = off).
        token_healing: move the prefix's last token into the hole and let the model rewrite it
            (its first slot may only take tokens that start with that token's text), so that a
            cursor inside a word or after a line break does not leave the model at a token
            boundary it never saw in training. A prefix ending in whitespace is first tokenized
            as code after it has it (`Tokenizer.encode_before_word`): after a new line's
            indentation the canvas ends in the indentation less one space and the fill's first
            token must start with that space (` return`). The returned text starts after the
            prefix.
        avoid: per hole (empty, or one entry per hole), a line the fill may not start by copying:
            while the hole holds only whitespace, no token whose text (leading whitespace aside)
            begins that line's code can be committed ("" = no such line). A fill action sets it
            when a first run's fill was nothing but the line after its hole.
        should_stop: polled between denoising steps; True cancels the run.
    """

    prefix: str
    suffix: str = ""
    middles: tuple[str, ...] = ()
    hole_tokens: int = 16
    max_new_tokens: int = 64
    max_context_tokens: int | None = None
    context: tuple[ContextSegment, ...] = ()
    session: str | None = None
    sampling: SamplingConfig | None = None
    single_line: bool = False
    min_indent: int | None = None
    token_healing: bool = True
    avoid: tuple[str, ...] = ()
    should_stop: Callable[[], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def n_holes(self) -> int:
        return len(self.middles) + 1


@dataclass(frozen=True)
class InfillResult:
    """What the engine produced.

    Attributes:
        texts: the fill of each hole, special tokens stripped.
        timings_ms: wall time per stage: tokenize, prefill, steps, detokenize, total.
        forward_passes: transformer calls (prefill and refreshes count as one each).
        tokens_per_step: tokens committed at each denoising step.
        generated_tokens: non-special tokens in the fills.
        cancelled: True when `should_stop()` ended the run (texts are then empty).
        context_tokens: (prefix, suffix) tokens kept after clipping (prefix including segments).
        kept: the kinds of the context segments kept, in canvas order.
        reused_tokens: canvas positions whose keys/values came from the session's last run.
        scores: per hole, the mean natural-log probability of the tokens the decode committed
            there (the token that ended it included), each under the distribution it was chosen
            from (the adapted model's, mixed with the base's where the decode reads it, after the
            decoding rules): a fill's confidence, higher is surer (0 = certain). None where
            nothing was committed, or where `rerank` put the base's line in place of the fill.
    """

    texts: tuple[str, ...]
    timings_ms: dict[str, float]
    forward_passes: int
    tokens_per_step: tuple[int, ...]
    generated_tokens: int
    cancelled: bool = False
    context_tokens: tuple[int, int] = (0, 0)
    kept: tuple[str, ...] = ()
    reused_tokens: int = 0
    scores: tuple[float | None, ...] = ()

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def score(self) -> float | None:
        return self.scores[0] if self.scores else None

    @property
    def confidence(self) -> float | None:
        """exp(score): the geometric-mean probability of the first fill's tokens, in 0..1."""
        return None if self.score is None else math.exp(self.score)


@runtime_checkable
class InfillBackend(Protocol):
    """What a front end (the language server, benchmarks, tests) needs of an engine. `Engine`
    implements it; test doubles do too. `infill` blocks: call it from one worker thread."""

    default_sampling: SamplingConfig

    def infill(self, req: InfillRequest) -> InfillResult: ...

    def count_tokens(self, text: str) -> int: ...

    def info(self) -> dict[str, Any]: ...

    def forget(self, session: str) -> None:
        """Drop what is kept for a session (its document closed)."""

    def rest(self) -> None:
        """The editor went quiet: hand back memory only runs need (called between runs)."""


def parse_sampling(spec: str, base: SamplingConfig | None = None) -> SamplingConfig:
    """A `SamplingConfig` from a command-line spec: a sampler name, optionally followed by
    `:field=value,...`, e.g. "fast", "naive", "fast:min_per_step=4,threshold=0.8", "fast:factor=1".
    Fields not named keep `base`'s values (default: `SamplingConfig()`)."""
    name, _, rest = spec.partition(":")
    cfg = replace(base or SamplingConfig(), sampler=name.strip())
    kinds = {f.name: f.type for f in fields(SamplingConfig)}
    changes: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or key not in kinds or key == "sampler":
            raise ValueError(f"bad sampling spec {spec!r}: {item!r} is not FIELD=VALUE with a field of "
                             f"SamplingConfig ({', '.join(k for k in kinds if k != 'sampler')})")
        kind, raw = str(kinds[key]), raw.strip()
        try:
            if raw.lower() == "none" and "None" in kind:
                changes[key] = None
            elif kind.startswith("bool"):
                changes[key] = raw.lower() in ("1", "true", "yes")
            elif kind.startswith("int"):
                changes[key] = int(raw)
            elif kind.startswith("float"):
                changes[key] = float(raw)
            else:
                changes[key] = raw
        except ValueError:
            raise ValueError(f"bad sampling spec {spec!r}: {key} needs a {kind.split(' ')[0]}, not {raw!r}") from None
    return replace(cfg, **changes)
