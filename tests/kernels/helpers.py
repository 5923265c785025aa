"""Shared assertions of the kernel tests."""

from __future__ import annotations

import torch


def assert_close3(fast: torch.Tensor, ref32: torch.Tensor, ref_low: torch.Tensor, atol: float) -> None:
    """The three-way rule of STYLE.md: |fast - ref_fp32| <= 2 |ref_lowprec - ref_fp32| + atol."""
    fast, ref32, ref_low = fast.float().cpu(), ref32.float().cpu(), ref_low.float().cpu()
    assert fast.shape == ref32.shape, (fast.shape, ref32.shape)
    err = (fast - ref32).abs()
    bound = 2 * (ref_low - ref32).abs() + atol
    bad = ~(err <= bound)
    assert not bad.any(), (f"{int(bad.sum())}/{bad.numel()} out of tolerance; max err {err.max().item():.3g}, "
                           f"worst excess {(err - bound).max().item():.3g}")
