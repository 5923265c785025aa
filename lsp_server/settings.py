"""Server settings from `initializationOptions` and `workspace/didChangeConfiguration` (section
"dlsp"). Unknown keys and values of the wrong type are ignored with a warning, never fatal."""

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
            if isinstance(value, bool) or not isinstance(value, accepted):
                log.warning("setting %s: ignoring a value of type %s", key, type(value).__name__)
                continue
            changes[name] = _clean(name, value)
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _clean(name: str, value: Any) -> Any:
    if name == "enabled_languages":
        return tuple(str(v) for v in value if isinstance(v, str))
    if name in ("max_tokens", "context_tokens"):
        return max(1, min(int(value), 1 << 16))
    if name == "debounce_ms":
        return max(0.0, min(float(value), 5000.0))
    if name == "steps" and value is not None:
        return max(1, int(value))
    if name == "min_per_step" and value is not None:
        return max(1, min(int(value), 256))
    if name == "threshold" and value is not None:
        return float(value)
    return value
