"""`Engine`: text in, text out. Turns strings into token ids, clips context to a token budget
from the cursor outwards, runs `engine.generate`, and turns ids back into text. Knows nothing
about documents, positions or the protocol."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch

from engine.assembly import is_adapter_dir
from engine.checkpoint import load_model, load_tokenizer
from engine.config import FAMILIES, ModelArgs
from engine.cuda_graphs import StepGraphs
from engine.errors import CheckpointError, InvalidRequestError
from engine.generate import FirstSlot, generate
from engine.model import Transformer
from engine.samplers import CONFIDENCE
from engine.tokenizer import Tokenizer
from engine.types import InfillRequest, InfillResult, SamplingConfig

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
SAMPLERS = ("fast", "naive")


def best_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _clean(text: str) -> str:
    """Lone surrogates (from undecodable bytes) become U+FFFD so the tokenizer never fails."""
    return text.encode("utf-8", "replace").decode("utf-8")


def checkpoint_sampling(ckpt: Path) -> SamplingConfig:
    """Decoding defaults a checkpoint recommends (`"dlsp_sampling"` in its config.json, chosen by
    `dlsp eval` for the shipped model); unknown keys are ignored, anything else stays default.
    Raises CheckpointError naming the file when a value is invalid (at load time, so a bad
    checkpoint never loads as "ready" and then fails every request)."""
    path = ckpt / "config.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8")).get("dlsp_sampling") or {}
    except (OSError, ValueError, AttributeError):
        return SamplingConfig()  # an unreadable config.json is reported by the model loader
    if not isinstance(rec, dict):
        raise CheckpointError(path, "dlsp_sampling must be a JSON object")
    known = {f.name for f in fields(SamplingConfig)} - {"sampler"}
    cfg = SamplingConfig(**{k: v for k, v in rec.items() if k in known})
    problem = sampling_problem(cfg)
    if problem:
        raise CheckpointError(path, f"invalid dlsp_sampling: {problem}")
    return cfg


def sampling_problem(cfg: SamplingConfig) -> str | None:
    """What is wrong with a sampling config (a value's type or range), or None."""
    for f in fields(SamplingConfig):
        value, default = getattr(cfg, f.name), f.default
        kinds = ((bool,) if isinstance(default, bool) else (int,) if isinstance(default, int)
                 else (str,) if isinstance(default, str) else (int, float))
        if value is None and default is None:
            continue
        if isinstance(value, bool) != (kinds == (bool,)) or not isinstance(value, kinds):
            return f"{f.name} must be {' or '.join(k.__name__ for k in kinds)}, not {value!r}"
    try:
        Engine._check_sampling(cfg)
    except InvalidRequestError as exc:
        return str(exc)
    return None


def split_budget(n_prefix: int, n_suffix: int, budget: int, prefix_share: float = 0.75) -> tuple[int, int]:
    """Tokens to keep of prefix and suffix: the prefix gets `prefix_share` of the budget,
    and whatever one side does not need goes to the other."""
    budget = max(0, budget)
    p = min(n_prefix, int(budget * prefix_share))
    s = min(n_suffix, budget - p)
    p = min(n_prefix, budget - s)
    return p, s


class Engine:
    """A loaded model plus its tokenizer. `infill` is blocking; call it from one worker thread."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str = "model",
                 default_sampling: SamplingConfig | None = None, cuda_graphs: bool | None = None) -> None:
        """`cuda_graphs`: replay captured fixed-shape denoising steps (default: on CUDA devices,
        unless DLSP_CUDA_GRAPHS=0); `True` on CPU runs the same padded steps eagerly (tests)."""
        self.model = model
        self.args: ModelArgs = model.args
        self.tokenizer = tokenizer
        self.name = name
        self.shifted = FAMILIES[self.args.family].shifted
        self.default_sampling = default_sampling or SamplingConfig()
        self.adapted_from_base = False  # set by from_pretrained for a shipped adapter (see engine.assembly)
        self._newlines: torch.Tensor | None = None
        # control tokens of a pretrained vocabulary (<|im_start|>, <|im_end|>, <file_sep>...) never
        # belong in code; EOS/pad stay allowed (they end a fill)
        self._banned = [i for i in tokenizer.added_special_ids()
                        if i < self.args.vocab_size and i not in (self.args.eos_id, self.args.pad_id)]
        self._heal_cache: dict[tuple[int, bool], tuple[str, FirstSlot] | None] = {}
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if cuda_graphs is None:
            cuda_graphs = self.device.type == "cuda" and os.environ.get("DLSP_CUDA_GRAPHS", "1") != "0"
        self.graphs = StepGraphs(model, use_graph=self.device.type == "cuda") if cuda_graphs else None

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | None = None,
                        dtype: torch.dtype | None = None) -> Engine:
        """Load a checkpoint directory (None = the embedded default model).

        fp32 on CPU (no native bf16 there), the checkpoint's fp16/bf16 weights upcast.
        """
        ckpt = Path(path) if path is not None else DEFAULT_MODEL_DIR
        device = device or best_device()
        dtype = dtype or (torch.float32 if device == "cpu" else torch.bfloat16)
        model, _ = load_model(ckpt, device=device, dtype=dtype)
        engine = cls(model, load_tokenizer(ckpt), name=str(ckpt), default_sampling=checkpoint_sampling(ckpt))
        engine.adapted_from_base = is_adapter_dir(ckpt)
        return engine

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(_clean(text)))

    def info(self) -> dict[str, Any]:
        a = self.args
        return {"model": self.name, "family": a.family, "params": self.model.num_params(),
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "max_positions": a.max_positions, "vocab_size": a.vocab_size}

    def _check(self, req: InfillRequest, cfg: SamplingConfig) -> None:
        self._check_sampling(cfg)
        if req.max_new_tokens < 0 or req.hole_tokens < 0:
            raise InvalidRequestError("hole_tokens and max_new_tokens must be >= 0")

    @staticmethod
    def _check_sampling(cfg: SamplingConfig) -> None:
        if cfg.sampler not in SAMPLERS:
            raise InvalidRequestError(f"unknown sampler {cfg.sampler!r}; known: {', '.join(SAMPLERS)}")
        if cfg.confidence not in CONFIDENCE:
            raise InvalidRequestError(f"unknown confidence {cfg.confidence!r}; known: {', '.join(CONFIDENCE)}")
        if cfg.steps is not None and cfg.steps < 1:
            raise InvalidRequestError("steps must be >= 1")
        if cfg.temperature < 0:
            raise InvalidRequestError("temperature must be >= 0")
        if cfg.min_per_step < 1:
            raise InvalidRequestError("min_per_step must be >= 1")
        if cfg.factor is not None and (cfg.factor <= 0 or cfg.confidence not in ("max_prob", "margin")):
            raise InvalidRequestError("factor must be > 0 and needs confidence 'max_prob' or 'margin'")

    def _segments(self, req: InfillRequest) -> tuple[list[list[int]], int, tuple[int, int]]:
        """Tokenize and clip: keep the prefix's end and the suffix's start; middles stay whole."""
        prefix = self.tokenizer.encode(_clean(req.prefix))
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
        p, s = split_budget(len(prefix), len(suffix), budget)
        prefix = prefix[len(prefix) - p:]
        suffix = suffix[:s]
        return [prefix, *middles, suffix], max_new, (p, s)

    def infill(self, req: InfillRequest) -> InfillResult:
        """Fill every hole of the request. Raises InvalidRequestError on unusable settings."""
        cfg = req.sampling or self.default_sampling
        self._check(req, cfg)
        t0 = time.perf_counter()
        segments, max_new, kept = self._segments(req)
        t1 = time.perf_counter()
        hole_tokens = min(req.hole_tokens, max_new)
        heal = self._healing(segments[0][-1], req.single_line) if req.token_healing and segments[0] and max_new else None
        if heal is not None:
            segments[0] = segments[0][:-1]
        out = generate(self.model, segments, cfg, self.shifted, hole_tokens=hole_tokens,
                       max_new_tokens=max_new, should_stop=req.should_stop, graphs=self.graphs,
                       stop_ids=self._newline_ids() if req.single_line else None,
                       first=heal[1] if heal is not None else None, banned=self._banned)
        t2 = time.perf_counter()
        texts = [self.tokenizer.decode(f) for f in out.fills]
        generated = sum(map(len, out.fills))
        if heal is not None and out.fills[0]:
            texts[0] = texts[0][len(heal[0]):] if texts[0].startswith(heal[0]) else texts[0]
            generated -= 1  # the healed slot restores context; it is not new text
        if req.single_line:
            texts = [t.split("\n", 1)[0] for t in texts]
        t3 = time.perf_counter()
        timings = {"tokenize": (t1 - t0) * 1e3, "prefill": out.prefill_ms, "steps": out.steps_ms,
                   "detokenize": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return InfillResult(texts=tuple(texts), timings_ms=timings, forward_passes=out.forward_passes,
                            tokens_per_step=tuple(out.tokens_per_step),
                            generated_tokens=generated, cancelled=out.cancelled,
                            context_tokens=kept)

    def _healing(self, last: int, single_line: bool) -> tuple[str, FirstSlot] | None:
        """Token healing for a prefix that ends with token `last`: its text, and the constraint on
        the first slot (tokens starting with that text; for single-line fills, a line break only
        counts after it). None when `last` is special or a partial UTF-8 sequence."""
        key = (last, single_line)
        if key in self._heal_cache:
            return self._heal_cache[key]
        texts = self.tokenizer.token_texts()
        special = set(self.args.special_ids) | set(self._banned)
        text = texts[last] if last < len(texts) else ""
        out = None
        if text and "\ufffd" not in text and last not in special:
            v = self.args.vocab_size
            allowed = torch.zeros(v, dtype=torch.bool)
            stop = torch.zeros(v, dtype=torch.bool) if single_line else None
            for i, t in enumerate(texts[:v]):
                if i not in special and t.startswith(text):
                    allowed[i] = True
                    if stop is not None:
                        stop[i] = "\n" in t[len(text):]
            out = (text, FirstSlot(allowed.to(self.device), None if stop is None else stop.to(self.device)))
        if len(self._heal_cache) >= 512:
            self._heal_cache.clear()
        self._heal_cache[key] = out
        return out

    def _newline_ids(self) -> torch.Tensor:
        """(V,) bool on the model's device: tokens holding a line break (cached)."""
        if self._newlines is None:
            self._newlines = torch.tensor(self.tokenizer.newline_ids(self.args.vocab_size), dtype=torch.bool,
                                          device=self.device)
        return self._newlines

    def with_sampling(self, **changes: Any) -> SamplingConfig:
        return replace(self.default_sampling, **changes)
