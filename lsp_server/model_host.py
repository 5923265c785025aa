"""The engine's life cycle: load on a background thread, report the state, swap on reload.

States: "loading" -> "ready" | "failed". While not ready, requests get empty results. A failed
load is reported (with the reason) and leaves the server running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from engine.types import InfillBackend

log = logging.getLogger(__name__)
Loader = Callable[[str | None, str | None], InfillBackend]


def default_loader(path: str | None, device: str | None) -> InfillBackend:
    import os

    from engine import Engine
    from engine.runtime import ThreadTuner

    engine = Engine.from_pretrained(path, device=device)
    if engine.device.type == "cpu" and not os.environ.get("DLSP_THREADS"):  # an explicit count is kept
        engine.threads = ThreadTuner.for_machine()
    return engine


class ModelHost:
    """Holds the engine. `on_change(status)` is called (from the loading thread) on every change."""

    def __init__(self, loader: Loader = default_loader,
                 on_change: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._loader = loader
        self.on_change = on_change or (lambda status: None)
        self.engine: InfillBackend | None = None
        self.state = "loading"
        self.message = ""
        self.source: tuple[str | None, str | None] | None = None
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.engine is not None

    def status(self) -> dict[str, Any]:
        info = self.info()
        return {"state": self.state, "model": info.get("model") if info else None,
                "device": info.get("device") if info else None, "message": self.message}

    def info(self) -> dict[str, Any] | None:
        if self.engine is None:
            return None
        try:
            return dict(self.engine.info())
        except Exception:
            return None

    def load(self, path: str | None, device: str | None) -> threading.Thread:
        """Start loading (path None = the embedded default model); returns the loading thread."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self.source = (path, device)
            self.engine, self.state, self.message = None, "loading", f"loading {path or 'the default model'}"
        self.on_change(self.status())
        thread = threading.Thread(target=self._load, args=(generation, path, device), name="dlsp-load", daemon=True)
        thread.start()
        return thread

    def _load(self, generation: int, path: str | None, device: str | None) -> None:
        try:
            engine, state, message = self._loader(path, device), "ready", "model loaded"
        except Exception as exc:  # any load failure is reported, never fatal
            log.warning("model load failed: %s", exc)
            engine, state, message = None, "failed", f"could not load the model: {exc}"
        with self._lock:
            if generation != self._generation:  # a newer load superseded this one
                return
            self.engine, self.state, self.message = engine, state, message
        self.on_change(self.status())
