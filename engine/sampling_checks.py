"""Decoding settings checked before any work: a request's (`check_sampling`, raising
`InvalidRequestError`) and a checkpoint's recommended ones (`checkpoint_sampling`, raising
`CheckpointError` at load time, so a bad checkpoint never loads as "ready" and then fails every
request)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from engine.errors import CheckpointError, InvalidRequestError
from engine.samplers import CONFIDENCE
from engine.types import SamplingConfig

SAMPLERS = ("fast", "naive")


def check_sampling(cfg: SamplingConfig) -> None:
    """Raise InvalidRequestError naming the first setting out of its range."""
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
    if not 0 <= cfg.draft <= 64:
        raise InvalidRequestError("draft must be in 0..64")
    if cfg.loop_guard < 0 or cfg.loop_guard == 1:
        raise InvalidRequestError("loop_guard must be 0 (off) or >= 2")
    if not (cfg.lookahead == 0 or 2 <= cfg.lookahead <= 256):
        raise InvalidRequestError("lookahead must be 0 (off) or in 2..256")
    if not 0.0 <= cfg.end_penalty <= 20.0:  # also false for NaN
        raise InvalidRequestError("end_penalty must be in 0..20")
    if not 0.0 <= cfg.end_mass <= 1.0:  # also false for NaN
        raise InvalidRequestError("end_mass must be in 0..1")
    if not 0 <= cfg.close_brackets <= 256:
        raise InvalidRequestError("close_brackets must be in 0..256 (0 = off)")
    if not 0.0 <= cfg.base_weight <= 16.0:  # also false for NaN
        raise InvalidRequestError("base_weight must be in 0..16 (0 = off)")
    if cfg.factor is not None and (cfg.factor <= 0 or cfg.confidence not in ("max_prob", "margin")):
        raise InvalidRequestError("factor must be > 0 and needs confidence 'max_prob' or 'margin'")


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
        check_sampling(cfg)
    except InvalidRequestError as exc:
        return str(exc)
    return None
