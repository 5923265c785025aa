"""Triton RMSNorm fused with the residual add: one read of x (and the residual), one write of
the sum and one of the normed row. Rows need not be a power of two wide (masked tail)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, out_ptr, h_ptr, stride_x, stride_r, d, eps,
                     HAS_RES: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    ok = cols < d
    x = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + row * stride_r + cols, mask=ok, other=0.0)
        h = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # the sum is rounded as x + r would be
        tl.store(h_ptr + row * d + cols, h, mask=ok)
    else:
        h = x
    hf = h.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / d + eps)
    w = tl.load(w_ptr + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * d + cols, (hf * rstd * w).to(out_ptr.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor, d: int) -> torch.Tensor:
    t2 = t.reshape(-1, d)  # a view when the rows are evenly strided
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `kernels.norm.rms_norm_ref`.

    Args:
        x: (..., D); weight: (D,); residual: (..., D) or None.
    Returns:
        (normed (..., D) in x.dtype, h = x + residual (or x itself) (..., D) in x.dtype).
    """
    d = x.shape[-1]
    x2 = _rows(x, d)  # (R, D)
    n = x2.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    has_res = residual is not None
    if has_res:
        r2 = _rows(residual.expand_as(x), d)
        h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    else:
        r2, h = x2, x
    if n == 0:
        return out, h
    block = triton.next_power_of_2(d)
    _rms_norm_kernel[(n,)](x2, r2, weight.contiguous(), out, h, x2.stride(0), r2.stride(0), d, float(eps),
                           HAS_RES=has_res, BLOCK_D=block, num_warps=min(16, max(1, block // 256)))
    return out, h
