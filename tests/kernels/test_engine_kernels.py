"""End to end on CPU: the engine gives the same infill through the Triton kernels (interpreter)
as through the references."""

from __future__ import annotations

import pytest

from engine import Engine
from engine.types import InfillRequest, SamplingConfig

REQUESTS = [
    InfillRequest(prefix="def add(a, b):\n    return ", suffix="\n\nclass Point:\n", hole_tokens=8,
                  max_new_tokens=12),
    InfillRequest(prefix="for i in range(10):\n    ", suffix="\n", hole_tokens=6, max_new_tokens=6,
                  middles=("print(i)\n",)),
]


def _run(engine: Engine, sampling: SamplingConfig) -> list[tuple[str, ...]]:
    from dataclasses import replace

    return [engine.infill(replace(r, sampling=sampling)).texts for r in REQUESTS]


@pytest.mark.parametrize("ckpt_name", ["tiny_ckpt", "tiny_dream_ckpt"])
@pytest.mark.parametrize("sampling", [SamplingConfig(sampler="fast", threshold=0.3),
                                      SamplingConfig(sampler="fast", confidence="neg_entropy", threshold=-2.0),
                                      SamplingConfig(sampler="naive")],
                         ids=["fast", "fast-entropy", "naive"])
def test_same_infill_with_kernels(ckpt_name, sampling, request, monkeypatch):
    engine = Engine.from_pretrained(request.getfixturevalue(ckpt_name), device="cpu")
    import kernels.confidence_triton as ct

    monkeypatch.delenv("DLSP_TRITON_ON_CPU", raising=False)
    want = _run(engine, sampling)
    calls = []
    real = ct.confidence_triton
    monkeypatch.setattr(ct, "confidence_triton", lambda *a: calls.append(1) or real(*a))
    request.getfixturevalue("triton_on_cpu")
    got = _run(engine, sampling)
    assert calls, "the kernels were not used"
    assert got == want
    assert any(t for texts in want for t in texts)
