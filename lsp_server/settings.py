"""Server settings from `initializationOptions` and `workspace/didChangeConfiguration` (section
"dlsp"). Unknown keys are ignored; a value of the wrong type or out of range is ignored with a
warning that names the setting (and the previous value stays), never fatal and never silently
changed into something else."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any

log = logging.getLogger(__name__)

# camelCase client key -> (field name, accepted types)
KEYS: dict[str, tuple[str, tuple[type, ...]]] = {
    "modelPath": ("model_path", (str, type(None))),
    "device": ("device", (str, type(None))),
    "threshold": ("threshold", (int, float, type(None))),
    "steps": ("steps", (int, type(None))),
    "minPerStep": ("min_per_step", (int, type(None))),
    "draft": ("draft", (int, type(None))),
    "closeBrackets": ("close_brackets", (int, type(None))),
    "baseWeight": ("base_weight", (int, float, type(None))),
    "baseMultiline": ("base_multiline", (bool, type(None))),
    "rerank": ("rerank", (bool, type(None))),
    "minConfidence": ("min_confidence", (int, float)),
    "maxTokens": ("max_tokens", (int,)),
    "debounceMs": ("debounce_ms", (int, float)),
    "enabledLanguages": ("enabled_languages", (list, tuple)),
    "contextTokens": ("context_tokens", (int,)),
    "logLevel": ("log_level", (str,)),
}


@dataclass(frozen=True)
class Settings:
    """What a client can set. None means "the engine's default"."""

    model_path: str | None = None
    device: str | None = None
    threshold: float | None = None
    steps: int | None = None
    min_per_step: int | None = None
    draft: int | None = None
    close_brackets: int | None = None
    base_weight: float | None = None
    base_multiline: bool | None = None
    rerank: bool | None = None
    # inline suggestions whose tokens' geometric-mean probability under the decode is below this
    # are not shown (0: all are; code actions always answer)
    min_confidence: float = 0.0
    max_tokens: int = 64
    debounce_ms: float = 20.0
    enabled_languages: tuple[str, ...] = ()
    context_tokens: int = 1024
    log_level: str = "info"

    def language_enabled(self, language_id: str, default: tuple[str, ...] | None = None,
                         name: str | None = None) -> bool:
        """Whether to complete in a language: `enabledLanguages` when set, else `default` (the
        languages the loaded model was evaluated on), else all. `name` is the registry name of
        the document's language (a languageId or an extension may name it differently)."""
        allowed = self.enabled_languages or default
        return not allowed or language_id in allowed or (name is not None and name in allowed)

    def updated(self, raw: Any) -> Settings:
        """A copy with the recognised keys of `raw` applied; accepts {"dlsp": {...}} or {...}."""
        if isinstance(raw, dict) and isinstance(raw.get("dlsp"), dict):
            raw = raw["dlsp"]
        if not isinstance(raw, dict):
            return self
        changes: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in KEYS:
                continue
            name, accepted = KEYS[key]
            if (isinstance(value, bool) and bool not in accepted) or not isinstance(value, accepted):
                log.warning("setting %s: ignoring a value of type %s", key, type(value).__name__)
                continue
            problem = _problem(name, value)
            if problem:
                log.warning("setting %s: %s; keeping %r", key, problem, getattr(self, name))
                continue
            changes[name] = _clean(name, value)
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# field -> (lowest, highest) accepted; None values ("the engine's default") are always accepted
RANGES: dict[str, tuple[float, float]] = {
    "max_tokens": (1, 4096), "context_tokens": (16, 1 << 16), "debounce_ms": (0, 5000),
    "steps": (1, 4096), "min_per_step": (1, 256), "threshold": (0.0, 1.0),
    "draft": (0, 64), "close_brackets": (0, 256), "base_weight": (0.0, 16.0), "min_confidence": (0.0, 1.0),
}


def _problem(name: str, value: Any) -> str | None:
    lo_hi = RANGES.get(name)
    if lo_hi is None or value is None:
        return None
    lo, hi = lo_hi
    return None if lo <= value <= hi else f"{value!r} is outside {lo}..{hi}"


def _clean(name: str, value: Any) -> Any:
    if name == "enabled_languages":
        return tuple(str(v) for v in value if isinstance(v, str))
    if name in ("max_tokens", "context_tokens", "steps", "min_per_step", "draft", "close_brackets") and value is not None:
        return int(value)
    if name in ("debounce_ms", "threshold", "base_weight", "min_confidence") and value is not None:
        return float(value)
    return value
