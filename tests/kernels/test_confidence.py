"""`_confidence_kernel` and `_commit_kernel` against `confidence_ref` / `commit_mask_ref`."""

from __future__ import annotations

import pytest
import torch

from kernels import confidence as conf_mod
from kernels.confidence import commit_mask_ref, commit_ref, confidence_ref
from tests.kernels.helpers import assert_close3


def _low_prec(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, ...]:
    """The same measures computed in the logits' own dtype (the 'lowprec' leg of the rule)."""
    t = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits / t, dim=-1)
    p = logp.exp()
    top2 = p.topk(2, dim=-1).values
    return top2[:, 0], top2[:, 0] - top2[:, 1], torch.where(p > 0, p * logp, 0).sum(-1)


def _logits(n: int, v: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, v, generator=g) * 4
    if n > 1:
        x[1, : v // 2] = float("-inf")  # forbidden ids, as the samplers mask them
    if n > 2:
        x[2, :] = float("-inf")
        x[2, v - 1] = 0.5  # a single allowed token
    return x.to(dtype).to(device)


@pytest.mark.parametrize("v", [2, 7, 320, 1000, 4099, 151936])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_confidence_matches_reference(v, dtype, temperature, device):
    from kernels.confidence_triton import confidence_triton

    n = 3 if v > 5000 else 6
    logits = _logits(n, v, dtype, device)
    tok, maxp, margin, negent = confidence_triton(logits, temperature)
    rtok, rmaxp, rmargin, rnegent = confidence_ref(logits.float(), temperature)
    low = _low_prec(logits, temperature) if dtype != torch.float32 else (rmaxp, rmargin, rnegent)
    assert tok.dtype == torch.int64 and maxp.dtype == torch.float32 and negent.shape == (n,)
    # fp32 accumulation order differs over 151,936 terms: a few ulps of the sum
    atol = 1e-5 if v < 5000 else 1e-4
    assert_close3(maxp, rmaxp, low[0], atol)
    assert_close3(margin, rmargin, low[1], atol)
    assert_close3(negent, rnegent, low[2], atol * 10)
    clear = rmargin.cpu() > 1e-4  # ties may break differently: compare tokens only where the top-2 gap is clear
    assert torch.equal(tok.cpu()[clear], rtok.cpu()[clear])
    assert clear.any()


def test_confidence_strided_rows_and_ties(device):
    from kernels.confidence_triton import confidence_triton

    base = torch.randn(8, 300).to(device)
    base[0, 17] = base[0, 250] = base[0].max() + 1.0  # exact tie for the top: margin 0
    rows = base[::2]  # non-contiguous row stride
    tok, maxp, margin, _ = confidence_triton(rows, 0.0, block_v=128)
    rtok, rmaxp, rmargin, _ = confidence_ref(rows)
    assert_close3(maxp, rmaxp, rmaxp, 1e-6)
    assert_close3(margin, rmargin, rmargin, 1e-6)
    assert margin[0].abs().item() < 1e-6 and int(tok[0]) in (17, 250)
    assert torch.equal(tok[1:].cpu(), rtok[1:].cpu())


def test_confidence_empty(device):
    from kernels.confidence_triton import confidence_triton

    out = confidence_triton(torch.zeros(0, 10, device=device))
    assert all(t.shape == (0,) for t in out)


def _commit_case(n: int, n_holes: int, seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(n, generator=g)
    conf[: n // 4] = conf[n // 4: 2 * (n // 4)]  # duplicated scores: ties broken by lower index
    masked = torch.rand(n, generator=g) > 0.3
    hole = torch.randint(0, n_holes, (n,), generator=g)
    n_min = torch.randint(0, 4, (n_holes,), generator=g)
    return conf.to(device), masked.to(device), hole.to(device), n_min.to(device)


@pytest.mark.parametrize("n,n_holes", [(1, 1), (5, 2), (64, 3), (130, 4), (300, 7)])
@pytest.mark.parametrize("threshold", [0.8, float("inf"), 0.0])
def test_commit_mask_matches_reference(n, n_holes, threshold, device):
    from kernels.confidence_triton import commit_mask_triton

    for seed in range(3):
        conf, masked, hole, n_min = _commit_case(n, n_holes, seed, device)
        got = commit_mask_triton(conf, masked, hole, threshold, n_min)
        want = commit_mask_ref(conf, masked, hole, threshold, n_min)
        assert got.dtype == torch.bool
        assert torch.equal(got.cpu(), want.cpu())


def test_commit_at_least_one_per_hole_and_writes_canvas(device):
    from kernels.confidence_triton import commit_triton

    n = 40
    conf, _, hole, _ = _commit_case(n, 3, 1, device)
    masked = torch.ones(n, dtype=torch.bool, device=device)
    n_min = torch.ones(3, dtype=torch.long, device=device)
    pos = torch.randperm(100)[:n].to(device)
    tokens = torch.randint(5, 50, (n,)).to(device)
    canvas = torch.zeros(100, dtype=torch.long, device=device)
    ref_canvas = canvas.clone()
    got = commit_triton(canvas, pos, tokens, conf, masked, hole, 2.0, n_min)  # nothing passes 2.0
    want = commit_ref(ref_canvas, pos, tokens, conf, masked, hole, 2.0, n_min)
    assert torch.equal(got.cpu(), want.cpu())
    assert torch.equal(canvas.cpu(), ref_canvas.cpu())
    for h in range(3):
        assert int(got[hole == h].sum()) == int((hole == h).any())
    assert int((canvas != 0).sum()) == int(got.sum())


def test_dispatchers_route_by_override(device, triton_on_cpu, monkeypatch):
    calls = []
    import kernels.confidence_triton as ct

    real = ct.confidence_triton
    monkeypatch.setattr(ct, "confidence_triton", lambda *a: calls.append(1) or real(*a))
    logits = _logits(4, 50, torch.float32, device)
    out = conf_mod.confidence(logits, 0.0)
    assert calls and torch.equal(out[0].cpu(), confidence_ref(logits)[0].cpu())


def test_dispatcher_uses_reference_without_override(monkeypatch):
    monkeypatch.delenv("DLSP_TRITON_ON_CPU", raising=False)
    import kernels.confidence_triton as ct

    monkeypatch.setattr(ct, "confidence_triton", lambda *a: pytest.fail("Triton used on CPU"))
    conf_mod.confidence(torch.randn(3, 10), 0.0)
