"""Per-request timings and counters, served by the custom request `dlsp/stats`.

Stage names: context, tokenize, prefill, steps, detokenize, postprocess, engine (the engine's
total), queue (waiting for the worker), server (total less engine, queue and debounce: the
server's own time) and total (request in to answer out). Only numbers are
kept, never text.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict, deque
from typing import Any

log = logging.getLogger(__name__)
REQUEST_COUNTERS = ("completed", "cancelled", "dropped", "cached", "empty", "held_back", "errors")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


class Stats:
    """Rolling timing samples per stage (the last `keep`) and request counters."""

    def __init__(self, keep: int = 1024) -> None:
        self._samples: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=keep))
        self._count: Counter[str] = Counter()
        self._requests: Counter[str] = Counter({k: 0 for k in REQUEST_COUNTERS})
        self.last_latency_ms: float | None = None

    def record(self, timings: dict[str, float]) -> None:
        for stage, ms in timings.items():
            self._samples[stage].append(float(ms))
            self._count[stage] += 1
        if "total" in timings:
            self.last_latency_ms = float(timings["total"])
        log.debug("timings %s", " ".join(f"{k}={v:.1f}ms" for k, v in timings.items()))

    def count(self, what: str) -> None:
        self._requests[what] += 1

    def snapshot(self) -> dict[str, Any]:
        stages = {stage: {"count": self._count[stage], "p50_ms": round(percentile(list(s), 50), 3),
                          "p95_ms": round(percentile(list(s), 95), 3)}
                  for stage, s in self._samples.items() if s}
        return {"stages": stages, "requests": dict(self._requests), "last_latency_ms": self.last_latency_ms}
