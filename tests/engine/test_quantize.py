"""int8 matmuls against their fp32 references (parity on random weights; the adapted model's
quality is measured by `dlsp eval`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import Engine, InfillRequest
from engine.quantize import Int8Linear, int8_available, int8_linear_ref, quantize_int8

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no fbgemm int8 linear")


@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_matches_the_dequantized_reference(bias):
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(96, 40, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(40, 96, generator=g) * 0.05)
    x = torch.randn(2, 7, 96, generator=g)
    q = Int8Linear(lin)
    got, ref, exact = q(x), int8_linear_ref(x, q), lin(x).detach()
    assert got.shape == (2, 7, 40) and got.dtype == torch.float32
    # weights: per-channel rounding only; activations: 7-bit dynamic quantization on top
    assert (int8_linear_ref(x, q) - exact).norm() / exact.norm() < 0.01
    assert (got - ref).norm() / ref.norm() < 0.03


def test_quantized_engine_runs_and_mostly_agrees_with_fp32(tiny_ckpt):
    fp32 = Engine.from_pretrained(tiny_ckpt, device="cpu", int8=False)
    q = Engine.from_pretrained(tiny_ckpt, device="cpu", int8=True)
    assert q.info()["int8"] and not fp32.info()["int8"] and q.info()["params"] == fp32.info()["params"]
    assert not any(isinstance(m, nn.Linear) for m in q.model.modules())
    ids = torch.randint(3, q.args.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = fp32.model(ids), q.model(ids)
    top2 = a.topk(2, dim=-1).values
    sure = (top2[..., 0] - top2[..., 1]) > 0.5  # compare argmax only where fp32 is decided
    assert (a.argmax(-1) == b.argmax(-1))[sure].float().mean() > 0.9
    res = q.infill(InfillRequest(prefix="def f(x):\n    return ", suffix="\n", hole_tokens=4, max_new_tokens=4))
    assert res.forward_passes >= 1


def test_auto_leaves_small_models_in_fp32(tiny_ckpt, monkeypatch):
    monkeypatch.delenv("DLSP_INT8", raising=False)
    assert not Engine.from_pretrained(tiny_ckpt, device="cpu").int8
    monkeypatch.setenv("DLSP_INT8", "1")
    assert Engine.from_pretrained(tiny_ckpt, device="cpu").int8
    m = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2)))
    assert quantize_int8(m) == 2 and isinstance(m[1][0], Int8Linear)
