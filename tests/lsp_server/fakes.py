"""A fake engine with the real `Engine` contract (`engine.InfillBackend`) for unit tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine import InfillRequest, InfillResult, SamplingConfig


class FakeEngine:
    """Fills holes with `fill(req)` (default: "hole0", "hole1", ...) after `steps` denoising steps,
    polling `should_stop` between steps like the real engine. `gate`, when given, must be set
    before the steps start, so tests can hold a generation in flight."""

    def __init__(self, fill: Callable[[InfillRequest], tuple[str, ...]] | None = None, steps: int = 4,
                 step_s: float = 0.0, gate: threading.Event | None = None,
                 score: Callable[[InfillRequest], float | None] | None = None) -> None:
        self.fill = fill or (lambda req: tuple(f"hole{i}" for i in range(req.n_holes)))
        self.score = score or (lambda req: None)  # every hole's score (`InfillResult.scores`)
        self.steps, self.step_s, self.gate = steps, step_s, gate
        self.calls: list[InfillRequest] = []
        self.stopped = 0
        self.started = threading.Event()
        self.default_sampling = SamplingConfig()
        self.forgotten: list[str] = []
        self.rests = 0

    def forget(self, session: str) -> None:
        self.forgotten.append(session)

    def rest(self) -> None:
        self.rests += 1

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 3)

    def info(self) -> dict:
        return {"model": "fake", "family": "fake", "params": 0, "device": "cpu", "dtype": "float32",
                "max_positions": 4096, "vocab_size": 256}

    def infill(self, req: InfillRequest) -> InfillResult:
        self.calls.append(req)
        self.started.set()
        while self.gate is not None and not self.gate.wait(0.005):
            if req.should_stop and req.should_stop():
                break
        for _ in range(self.steps):
            if req.should_stop and req.should_stop():
                self.stopped += 1
                return InfillResult(texts=("",) * req.n_holes, timings_ms={"total": 0.0}, forward_passes=0,
                                    tokens_per_step=(), generated_tokens=0, cancelled=True)
            time.sleep(self.step_s)
        timings = {"tokenize": 0.1, "prefill": 1.0, "steps": 2.0, "detokenize": 0.1, "total": 3.2}
        return InfillResult(texts=self.fill(req), timings_ms=timings, forward_passes=1 + self.steps,
                            tokens_per_step=(1,) * self.steps, generated_tokens=self.steps,
                            scores=(self.score(req),) * req.n_holes)
