"""`Engine`: text in, text out. Turns strings into token ids, clips the context once to the
model's positions by rank (`engine.clip`), runs `engine.generate` (reusing the last canvas and
cache of the request's session), and turns ids back into text. Implements
`engine.types.InfillBackend`. Knows nothing about documents, positions or the protocol."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from engine import int8_cache
from engine.assembly import assemble, base_layers, is_adapter_dir
from engine.checkpoint import load_model, load_tokenizer, read_args
from engine.clip import Clipped, Piece, clip, split_budget
from engine.config import FAMILIES, ModelArgs
from engine.cuda_graphs import StepGraphs
from engine.errors import CheckpointError, InvalidRequestError
from engine.expert import BaseReading, build_base_reading
from engine.generate import generate
from engine.healing import Healer
from engine.model import Transformer, skeleton
from engine.ngram import NgramDrafts, load_drafts
from engine.quantize import MIN_PARAMS, calibration_ids, int8_available, own_parameters_, quantize_int8
from engine.rerank import from_run, rerank
from engine.reuse import ReusePolicy, Session
from engine.runtime import (
    ResidentTrim,
    ThreadTuner,
    mapped_allocations,
    release_cold_code,
    release_freed_memory,
)
from engine.sampling_checks import check_sampling, checkpoint_sampling
from engine.tokenizer import Tokenizer
from engine.types import ContextSegment, InfillRequest, InfillResult, SamplingConfig

__all__ = ["DEFAULT_MODEL_DIR", "Engine", "best_device", "checkpoint_sampling", "split_budget"]
MAX_SESSIONS = 4  # documents whose clipping anchor is kept (LRU)
# of those, the most recent ones that also keep their last canvas and cache: a cache is ~46 KB
# per context token at the 135M shape (~60 MB for a 1k-token context); the document being typed
# in is the one that reuses it, one switched back to pays a prefill
MAX_CACHED_SESSIONS = 2
# the cached sessions other than the one in use keep their cache in half precision (half the memory;
# widened again when used, ~30 ms instead of a prefill's seconds); the int8 CPU model keeps the one
# in use in it too (DLSP_HALF_CACHE=0: float32; ~34 MB less at 1k tokens for up to ~3 ms more per
# forward, attention widening what it reads: measured in the README)
IDLE_CACHE_DTYPE = torch.float16
ANCHOR_CHARS = 48  # text of the window's start remembered to keep it in place across keystrokes

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
log = logging.getLogger(__name__)


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _clean(text: str) -> str:
    """Lone surrogates (from undecodable bytes) become U+FFFD so the tokenizer never fails."""
    return text.encode("utf-8", "replace").decode("utf-8")


def stored_dtype(ckpt: Path) -> torch.dtype:
    """The dtype of a checkpoint's floating tensors as stored (from the first safetensors header);
    float32 when it cannot be read (the loader reports real problems)."""
    names = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    try:
        f = sorted(ckpt.glob("*.safetensors"))[0]
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(min(n, 1 << 24)))
        kinds = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
        return names[kinds.pop()] if len(kinds) == 1 and kinds <= names.keys() else torch.float32
    except (IndexError, OSError, ValueError, KeyError):
        return torch.float32


class Engine:
    """A loaded model plus its tokenizer. `infill` is blocking; call it from one worker thread."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str = "model",
                 default_sampling: SamplingConfig | None = None, cuda_graphs: bool | None = None,
                 reuse: ReusePolicy | None = None) -> None:
        """`cuda_graphs`: replay captured fixed-shape denoising steps (default: on CUDA devices,
        unless DLSP_CUDA_GRAPHS=0); `True` on CPU runs the same padded steps eagerly (tests).
        `reuse`: when a session's last cache is reused. Default: on for models with causal lower
        layers (the embedded 135M adaptation), off for fully bidirectional ones, where every
        reused key/value is approximate (with the 5M model, reuse changed the suggestion at 10 of
        16 typing pauses); DLSP_REUSE=1 / 0 forces it on / off."""
        self.model = model
        self.args: ModelArgs = model.args
        self.tokenizer = tokenizer
        self.name = name
        self.shifted = FAMILIES[self.args.family].shifted
        self.default_sampling = default_sampling or SamplingConfig()
        self.adapted_from_base = False  # set by from_pretrained for a shipped adapter (see engine.assembly)
        self._newlines: torch.Tensor | None = None
        self._blank: torch.Tensor | None = None
        # control tokens of a pretrained vocabulary (<|im_start|>, <|im_end|>, <file_sep>...) never
        # belong in code; EOS/pad stay allowed (they end a fill)
        self._banned = [i for i in tokenizer.added_special_ids()
                        if i < self.args.vocab_size and i not in (self.args.eos_id, self.args.pad_id)]
        self._healer: Healer | None = None
        self.drafts: NgramDrafts | None = None  # speculative drafts (`engine.ngram`), from the checkpoint
        self.base: BaseReading | None = None  # the pretrained base's upper layers (`engine.expert`)
        if reuse is None:  # auto: reuse when some layers are causal (their prefix keys/values stay exact)
            env = os.environ.get("DLSP_REUSE", "auto")
            reuse = ReusePolicy(enabled=env == "1" or (env != "0" and model.args.causal_layers > 0))
        self.reuse = reuse
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._sessions_lock = threading.Lock()
        self.int8, self.params = False, model.num_params()
        self.int8_cached = False  # the int8 model came from `engine.int8_cache`, not quantized by this load
        self.threads: ThreadTuner | None = None  # per-request thread count from measured speed (CPU)
        self.memory = ResidentTrim()  # hands a run's freed buffers back (`infill`)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and os.environ.get("DLSP_CUDA_GRAPHS", "1") != "0"
        self.graphs = StepGraphs(model, use_graph=self.device.type == "cuda") if cuda_graphs else None

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None,
                        dtype: torch.dtype | None = None, int8: bool | None = None) -> Engine:
        """Load a checkpoint directory (None = the embedded default model).

        fp32 on CPU (no native bf16 there), the checkpoint's fp16/bf16 weights upcast.
        `int8`: int8 matmuls on CPU (`engine.quantize`). None = auto: on for models of at least
        `MIN_PARAMS` parameters (the 135M default), off for smaller ones; DLSP_INT8=1 / 0 forces
        it on / off. Measured on the adapted 135M model, 100 held-out single lines, context 384
        (`dlsp eval --int8 on/off`, same tasks): exact match 0.11 vs 0.12 in fp32, edit
        similarity 0.417 vs 0.413 (the AR floor 0.10 / 0.421 vs 0.11 / 0.424), for a ~3x faster
        denoising step and ~0.25 GB less memory.
        """
        ckpt = Path(path) if path is not None else DEFAULT_MODEL_DIR
        device = device or best_device()
        dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
        params = 0
        if ckpt.is_dir() and (ckpt / "config.json").is_file():  # else load_model names what is wrong
            params = skeleton(read_args(ckpt)).num_params()
        if int8 is None:
            env = os.environ.get("DLSP_INT8", "auto")
            int8 = env == "1" or (env != "0" and params >= MIN_PARAMS)
        int8 = bool(int8) and device == "cpu" and dtype == torch.float32 and int8_available()
        if not ckpt.is_dir():
            raise CheckpointError(ckpt, "checkpoint directory does not exist")
        adapted = is_adapter_dir(ckpt)
        weights = assemble(ckpt) if adapted else ckpt  # an adapter: the checkpoint it assembles to
        args = read_args(weights)  # a missing or bad config.json is named before the tokenizer
        tokenizer = load_tokenizer(ckpt)
        want_base = adapted and os.environ.get("DLSP_BASE_READING", "1") != "0" and args.causal_layers > 0
        calibration = calibration_ids(tokenizer, args.lead_id) if int8 else None
        cached, base_blocks, cache_file = None, None, None
        if calibration and adapted:  # the int8 model as quantized before, when its inputs have not changed
            cached, base_blocks, cache_file = int8_cache.lookup(ckpt, weights, args, calibration, want_base)
        if cached is not None:
            model = cached
        else:
            # int8: load the weights as stored when that is 16-bit, quantize the matmuls from there
            # (block by block in fp32), and only then widen the rest (embedding, norms) to fp32
            model, _ = load_model(weights, device=device, dtype=stored_dtype(weights) if int8 else dtype)
            if int8:
                with mapped_allocations():
                    quantize_int8(model, calibration)
                    own_parameters_(model, dtype)
        engine = cls(model, tokenizer, name=str(ckpt), default_sampling=checkpoint_sampling(ckpt))
        engine.int8, engine.params = bool(int8), params
        model.cache_dtype = IDLE_CACHE_DTYPE if int8 and os.environ.get("DLSP_HALF_CACHE", "1") != "0" else None
        engine.int8_cached = cached is not None
        engine.adapted_from_base = adapted
        engine.drafts = load_drafts(ckpt)
        if base_blocks is not None:
            engine.base = BaseReading(model, base_blocks)
        elif want_base and cached is None:
            try:
                with mapped_allocations():
                    engine.base = build_base_reading(model, base_layers(ckpt), calibration)
                    release_freed_memory()
            except (CheckpointError, ValueError) as exc:  # the model still works, without it
                log.warning("the base's reading is off: %s", exc)
        if int8 and cached is None and cache_file is not None:
            try:
                int8_cache.save(cache_file, model, engine.base.layers if engine.base is not None else None)
                int8_cache.touch_and_prune(cache_file)
            except (OSError, ValueError) as exc:
                log.warning("could not keep the int8 model for later loads: %s", exc)
        return engine

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(_clean(text)))

    def info(self) -> dict[str, Any]:
        a = self.args
        return {"model": self.name, "family": a.family, "params": self.params,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""), "int8": self.int8,
                "max_positions": a.max_positions, "vocab_size": a.vocab_size}

    def _check(self, req: InfillRequest, cfg: SamplingConfig) -> None:
        self._check_sampling(cfg)
        if req.max_new_tokens < 0 or req.hole_tokens < 0:
            raise InvalidRequestError("hole_tokens and max_new_tokens must be >= 0")
        if req.min_indent is not None and not (isinstance(req.min_indent, int) and 0 <= req.min_indent <= 4096):
            raise InvalidRequestError("min_indent must be None or 0..4096 columns")
        if req.avoid and (len(req.avoid) != req.n_holes or not all(isinstance(t, str) for t in req.avoid)):
            raise InvalidRequestError(f"avoid must hold one line of text per hole ({req.n_holes}), or nothing")

    _check_sampling = staticmethod(check_sampling)

    def _segments(self, req: InfillRequest, session: Session | None) -> tuple[list[list[int]], int, Clipped, str]:
        """Tokenize and clip once, in this model's tokens, within its positions: the cursor window
        first, ranked context segments next, middles whole (`engine.clip.clip`). Also returns the
        end of the prefix left off the canvas for token healing (see `encode_before_word`)."""
        prefix_text = _clean(req.prefix)
        if req.token_healing:  # trailing whitespace as code after it has it; `rest` is healed
            prefix, starts, rest = self.tokenizer.encode_before_word(prefix_text)
        else:
            (prefix, starts), rest = self.tokenizer.encode_offsets(prefix_text), ""
        suffix = self.tokenizer.encode(_clean(req.suffix))
        middles = [self.tokenizer.encode(_clean(m)) for m in req.middles]
        max_new = req.max_new_tokens
        room = self.args.max_positions - 2 - sum(map(len, middles))  # bos + eos
        if room - req.n_holes * max_new < 0:  # shrink the per-hole budget before failing
            max_new = max(0, room // req.n_holes - 1)
        if room - req.n_holes * max(1, max_new) < 0:
            raise InvalidRequestError(
                f"the text between holes takes {sum(map(len, middles))} tokens; the model allows {self.args.max_positions}")
        budget = room - req.n_holes * max_new
        if req.max_context_tokens is not None:
            budget = min(budget, req.max_context_tokens)
        pieces = [self._piece(seg) for seg in req.context]
        out = clip(prefix_text, prefix, starts, suffix, [q for q in pieces if q is not None], budget,
                   anchor=session.anchor if session is not None else None, slack=0.25 if session is not None else 0.0,
                   previous=session.pieces if session is not None else None)
        if session is not None:
            session.anchor = prefix_text[out.window_start:out.window_start + ANCHOR_CHARS] or None
            session.pieces = frozenset(out.kept_ids)
        return [out.prefix, *middles, out.suffix], max_new, out, rest

    def _piece(self, seg: ContextSegment) -> Piece | None:
        text = _clean(seg.text)
        ids = tuple(self.tokenizer.encode(text))
        if not ids:
            return None
        end = None if seg.at is None else seg.at + len(text)
        return Piece(ids=ids, rank=seg.rank, kind=seg.kind, start=seg.at, end=end)

    def _session(self, key: str | None) -> Session | None:
        """The session of a request (its clipping anchor, and its canvas and cache when reuse is on):
        with reuse off the context is clipped the same way, so the two differ only in reuse."""
        if key is None:
            return None
        with self._sessions_lock:
            session = self._sessions.pop(key, None) or Session()
            self._sessions[key] = session  # most recently used last
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            kept, changed = list(self._sessions.values()), False
            for old in kept[:-MAX_CACHED_SESSIONS]:
                changed |= old.cache is not None or old.base is not None
                old.canvas, old.cache, old.base = None, None, None
            for old in kept[-MAX_CACHED_SESSIONS:-1]:
                # the base's keys/values (`engine.expert`) are not kept idle: a document taken up
                # again computes them once more (their layers over its prefix, a third of a prefill)
                changed |= old.base is not None
                old.base = None
                if old.cache is not None and old.cache.dtype == torch.float32:
                    # no spare rows: it is widened (into a copy with them) before it is spliced
                    old.cache, changed = old.cache.to(IDLE_CACHE_DTYPE, headroom=0), True
            want = getattr(self.model, "cache_dtype", None) or self.dtype
            if session.cache is not None and session.cache.dtype != want:
                session.cache = session.cache.to(want)
        if changed:
            self.memory.hand_back(release_freed_memory)
        return session

    def forget(self, session: str) -> None:
        """Drop the last canvas and cache kept for `session` (its document closed), and hand the
        cache's memory back to the system (~10 ms; without it a closed document's cache stayed
        resident as free heap: the server's callers run this off their event loop)."""
        with self._sessions_lock:
            dropped = self._sessions.pop(session, None)
        held = dropped is not None and dropped.cache is not None
        del dropped  # the cache is freed here (a run still using the session holds it until it ends)
        if held:
            self.rest()  # its cache's pages, and the code its fills ran (faults back in with the next)

    def rest(self) -> None:
        """The editor has been quiet for a while (the server calls this on its worker, never
        beside a run): hand the heap's free pages back and unmap library code, so an idle server
        holds its model and its documents' caches and little else. `ResidentTrim` leaves up to
        its slack resident after a run so that the next keystroke does not fault its buffers in
        again; once typing stops that slack only costs memory. Measured on the 135M int8 engine
        with a 1k-token document open: 466-525 MB -> 425 MB, and the next fill as fast as without
        (the pages fault back in within noise: 443-536 vs 438-477 ms cold, 197-214 vs 205-209 ms warm)."""
        self.memory.hand_back(release_freed_memory)
        release_cold_code()

    def infill(self, req: InfillRequest) -> InfillResult:
        """Fill every hole of the request. Raises InvalidRequestError on unusable settings."""
        cfg = req.sampling or self.default_sampling
        self._check(req, cfg)
        t0 = time.perf_counter()
        session = self._session(req.session) if req.n_holes == 1 else None
        segments, max_new, clipped, rest = self._segments(req, session)
        t1 = time.perf_counter()
        hole_tokens = min(req.hole_tokens, max_new)
        heal, moved = None, False  # the constraint on the fill's start; whether a prefix token moved into the hole
        if req.token_healing and max_new:
            if rest:  # the prefix's last whitespace belongs to the first token after it
                heal = self.healer().for_text(rest, req.single_line)
            elif segments[0]:
                heal = self.healer().first_slot(segments[0][-1], req.single_line)
                moved = heal is not None
        if moved:
            segments[0] = segments[0][:-1]
        # a cold request prefills the whole context, a warm one reuses the session's cache
        kind = "warm" if session is not None and session.cache is not None else "cold"
        threads = self.threads.pick(kind) if self.threads is not None else None
        if threads is not None:
            torch.set_num_threads(threads)
        out = generate(self.model, segments, cfg, self.shifted, hole_tokens=hole_tokens,
                       max_new_tokens=max_new, should_stop=req.should_stop, graphs=self.graphs,
                       stop_ids=self._newline_ids() if req.single_line else None,
                       first=heal[1] if heal is not None else None, session=session, policy=self.reuse,
                       banned=self._banned, blank_ids=self._blank_ids(), drafts=self.drafts,
                       texts=self.healer().texts, text_ids=self.healer().id_of,
                       base=self.base if req.single_line or cfg.base_multiline else None,
                       min_indent=None if req.single_line else req.min_indent,
                       avoid=[self.healer().starting(line) for line in req.avoid] if any(req.avoid) else None)
        t2 = time.perf_counter()
        if threads is not None and out.forward_passes and not out.cancelled:
            self.threads.record(threads, (out.prefill_ms + out.steps_ms) / out.forward_passes, kind)
        texts = [self.tokenizer.decode(f) for f in out.fills]
        generated = sum(map(len, out.fills))
        if heal is not None and out.fills[0]:
            texts[0] = texts[0][len(heal[0]):] if texts[0].startswith(heal[0]) else texts[0]
            generated -= moved  # a moved prefix token restores context; it is not new text
        if req.single_line:
            texts = [t.split("\n", 1)[0] for t in texts]
        passes = out.forward_passes
        scores = list(out.scores) if len(out.scores) == len(texts) else [None] * len(texts)
        t3 = time.perf_counter()
        if (cfg.rerank and req.single_line and req.n_holes == 1 and cfg.temperature == 0 and texts[0].strip()
                and out.base_cache is not None and self.base is not None):
            inputs = from_run(out, [self.args.lead_id, *segments[0]], segments[-1], self.args, self.tokenizer,
                              self.base, self._banned, self._newline_ids(),
                              heal[1].allowed if heal is not None else None, cfg.draft)
            checked = rerank(inputs, heal[0] if heal is not None else "", texts[0], req.suffix,
                             should_stop=req.should_stop)
            if not (req.should_stop is not None and req.should_stop()):
                if checked.text != texts[0]:
                    scores[0] = None  # the base's line: the decode's score is not its
                texts[0] = checked.text
                passes += checked.forwards
        out.cache = out.base_cache = None
        t4 = time.perf_counter()
        # a prefill's transient buffers (~150 MB at 1k tokens) stay resident once freed, also
        # when the prefill came after a reuse (a growth round, a failed plan), and so do the
        # check's: handed back when the process grew past its last low point (~10 ms when it
        # did, ~20 us to check)
        self.memory.settle(release_freed_memory, prefilled=bool(out.forward_passes and not out.reused_tokens))
        timings = {"tokenize": (t1 - t0) * 1e3, "prefill": out.prefill_ms, "steps": out.steps_ms,
                   "detokenize": (t3 - t2) * 1e3, "rerank": (t4 - t3) * 1e3,
                   "total": (time.perf_counter() - t0) * 1e3}
        return InfillResult(texts=tuple(texts), timings_ms=timings, forward_passes=passes,
                            tokens_per_step=tuple(out.tokens_per_step),
                            generated_tokens=generated, cancelled=out.cancelled,
                            context_tokens=(len(segments[0]) + moved, len(segments[-1])),
                            kept=clipped.kinds, reused_tokens=out.reused_tokens,
                            scores=tuple(None if out.cancelled else x for x in scores))

    def warm(self) -> None:
        """Build the vocabulary-sized tables (token texts, healing index, line-break and blank
        masks) now, at load time: built by the first request they held the GIL for a whole
        vocabulary decode (~0.1 s at 49k tokens) while an editor waited on the server."""
        self.healer()
        self._newline_ids()
        self._blank_ids()
        release_cold_code()  # the loading's code (torch's operator registration, quantization) runs no more

    def healer(self) -> Healer:
        """Token healing's index over the vocabulary (built on first use)."""
        if self._healer is None:
            self._healer = Healer(self.tokenizer.token_texts(), self.args.vocab_size,
                                  tuple(sorted({*self.args.special_ids, *self._banned})), self.device)
        return self._healer

    def _newline_ids(self) -> torch.Tensor:
        """(V,) bool on the model's device: tokens holding a line break (cached)."""
        if self._newlines is None:
            self._newlines = torch.tensor(self.tokenizer.newline_ids(self.args.vocab_size), dtype=torch.bool,
                                          device=self.device)
        return self._newlines

    def _blank_ids(self) -> torch.Tensor:
        """(V,) bool on the model's device: tokens whose text is whitespace only (cached)."""
        if self._blank is None:
            texts = self.tokenizer.token_texts()[:self.args.vocab_size]
            blank = [t != "" and t.strip() == "" for t in texts] + [False] * (self.args.vocab_size - len(texts))
            self._blank = torch.tensor(blank, dtype=torch.bool, device=self.device)
        return self._blank

    def with_sampling(self, **changes: Any) -> SamplingConfig:
        return replace(self.default_sampling, **changes)
