"""Non-causal grouped-query attention of a query block over keys/values: reference and dispatcher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.capabilities import use_triton


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, no mask, kv heads shared by groups of query heads.

    Args:
        q: (B, Hq, Lq, d); k, v: (B, Hkv, Lk, d) with Hq % Hkv == 0.
    Returns:
        (B, Hq, Lq, d) in q.dtype.
    """
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = q.float() @ kf.transpose(-1, -2) / (q.shape[-1] ** 0.5)  # (B, Hq, Lq, Lk)
    return (scores.softmax(-1) @ vf).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dispatcher: Triton split-KV kernel on CUDA for small query blocks, torch SDPA elsewhere."""
    if use_triton(q) and q.shape[2] <= 128:
        from kernels.attention_triton import attention_triton

        return attention_triton(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1])
