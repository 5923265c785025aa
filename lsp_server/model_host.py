"""The engine's life cycle: load on a background thread, report the state, swap on reload.

States: "loading" -> "ready" | "failed". While not ready, requests get empty results. A failed
load is reported (with the reason) and leaves the server running.

One loader thread at most, latest wins: a load asked for while another runs waits in a single
slot, and a newer ask replaces it there, so thirty quick `modelPath` flips run at most two loads
(the one already inside torch, which cannot be interrupted, and the last) and hold one model.
A finished load that was superseded (or closed) is dropped, never published.
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
    from engine.checkpoint import checkpoint_languages
    from engine.engine import DEFAULT_MODEL_DIR
    from engine.runtime import ThreadTuner

    engine = Engine.from_pretrained(path, device=device)
    engine.warm()  # on the loading thread, not inside the first request
    engine.languages = checkpoint_languages(path or DEFAULT_MODEL_DIR)  # what its model card says
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
        self._wanted: tuple[int, str | None, str | None] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.engine is not None

    @property
    def languages(self) -> tuple[str, ...] | None:
        """Languages the loaded model was evaluated on (None: not said, or no model)."""
        langs = getattr(self.engine, "languages", None)
        return tuple(langs) if langs else None

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
        """Ask for a load (path None = the embedded default model); returns the loading thread,
        which ends once no newer load is waiting."""
        with self._lock:
            self._generation += 1
            self._wanted = (self._generation, path, device)
            self.source = (path, device)
            self.engine, self.state, self.message = None, "loading", f"loading {path or 'the default model'}"
            thread = self._thread
            if thread is None:
                thread = self._thread = threading.Thread(target=self._run, name="dlsp-load", daemon=True)
                thread.start()
        self.on_change(self.status())
        return thread

    def _run(self) -> None:
        while True:
            with self._lock:
                job, self._wanted = self._wanted, None
                if job is None or self._closed:
                    self._thread = None
                    return
            self._load(*job)

    def _load(self, generation: int, path: str | None, device: str | None) -> None:
        try:
            engine, state, message = self._loader(path, device), "ready", "model loaded"
        except Exception as exc:  # any load failure is reported, never fatal
            log.warning("model load failed: %s", exc)
            engine, state, message = None, "failed", f"could not load the model: {exc}"
        with self._lock:
            if generation != self._generation or self._closed:  # superseded: drop it
                return
            self.engine, self.state, self.message = engine, state, message
        self.on_change(self.status())

    def close(self, timeout: float = 0.0) -> bool:
        """Abandon loads (a waiting one never starts, a running one is dropped when it ends);
        True when no loader thread is left after waiting up to `timeout` seconds."""
        with self._lock:
            self._closed, self._wanted = True, None
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True
