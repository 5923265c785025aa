"""`rms_norm_triton` (fused residual add) against `rms_norm_ref`."""

from __future__ import annotations

import pytest
import torch

from kernels.norm import rms_norm, rms_norm_ref
from tests.kernels.helpers import assert_close3


def _low_prec(x, w, eps, residual):
    h = x if residual is None else x + residual
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w.to(x.dtype)


@pytest.mark.parametrize("shape", [(3, 64), (2, 5, 100), (1, 7, 320), (1, 1, 4096)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm_matches_reference(shape, dtype, with_residual, device):
    from kernels.norm_triton import rms_norm_triton

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype).to(device)
    r = torch.randn(shape, generator=g).to(dtype).to(device) if with_residual else None
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(device)
    out, h = rms_norm_triton(x, w, 1e-5, r)
    ref_out, ref_h = rms_norm_ref(x, w, 1e-5, r)
    assert out.dtype == dtype and h.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(h, ref_h, atol=0, rtol=0)  # the sum is rounded exactly as x + r
    ref32 = rms_norm_ref(ref_h.float(), w, 1e-5)[0]
    low = ref32 if dtype == torch.float32 else _low_prec(x, w, 1e-5, r)
    assert_close3(out, ref32, low, 1e-5 if dtype == torch.float32 else 1e-3)


def test_rms_norm_strided_input(device, triton_on_cpu):
    x = torch.randn(4, 6, 48, device=device)[:, ::2]  # rows evenly strided, not contiguous
    w = torch.rand(48, device=device)
    r = torch.randn(4, 3, 48, device=device)
    for got, want in zip(rms_norm(x, w, 1e-6, r), rms_norm_ref(x, w, 1e-6, r)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
