"""RMSNorm (optionally fused with the residual add): reference and dispatcher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.capabilities import use_triton


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual (or x); return (rmsnorm(h) * weight, h).

    Args:
        x: (..., D); weight: (D,); residual: (..., D) or None.
    Returns:
        (normed (..., D) in x.dtype, h (..., D) in x.dtype)
    """
    h = x if residual is None else x + residual
    hf = h.float()
    out = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight.float()).to(x.dtype), h


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatcher: Triton on CUDA without autograd, reference elsewhere. Same contract as `rms_norm_ref`."""
    if use_triton(x, weight, residual):
        from kernels.norm_triton import rms_norm_triton

        return rms_norm_triton(x, weight, eps, residual)
    if residual is None and x.dtype == weight.dtype == torch.float32:
        # one aten call instead of five: a one-row step is bound by per-op overhead on a CPU
        return F.rms_norm(x, (x.shape[-1],), weight, eps), x
    return rms_norm_ref(x, weight, eps, residual)
