"""Triton rotary embeddings (rotate-half convention): out = x * cos + rotate_half(x) * sin.

One program rotates BLOCK_L positions of one (batch, head); x may be any strided view with a
contiguous last dimension (q/k straight from `.view(...).transpose(1, 2)`). The cos/sin tables
may have a zero position stride: one angle for every position is how `rerotate_keys` shifts a
whole cached block by a constant delta.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(x_ptr, cos_ptr, sin_ptr, out_ptr, n_heads, seq, half,
                 sxb, sxh, sxl, sob, soh, sol, stl,
                 BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr):
    bh = tl.program_id(0)
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    ll = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    jj = tl.arange(0, BLOCK_H)
    ok = (ll < seq)[:, None] & (jj < half)[None, :]
    li = ll.to(tl.int64)[:, None]
    xb = x_ptr + b * sxb + h * sxh + li * sxl
    x1 = tl.load(xb + jj[None, :], mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(xb + half + jj[None, :], mask=ok, other=0.0).to(tl.float32)
    tb = li * stl + jj[None, :]
    c1 = tl.load(cos_ptr + tb, mask=ok, other=0.0)
    c2 = tl.load(cos_ptr + tb + half, mask=ok, other=0.0)
    s1 = tl.load(sin_ptr + tb, mask=ok, other=0.0)
    s2 = tl.load(sin_ptr + tb + half, mask=ok, other=0.0)
    ob = out_ptr + b * sob + h * soh + li * sol
    ty = out_ptr.dtype.element_ty
    tl.store(ob + jj[None, :], (x1 * c1 - x2 * s1).to(ty), mask=ok)
    tl.store(ob + half + jj[None, :], (x2 * c2 + x1 * s2).to(ty), mask=ok)


def apply_rope_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as `kernels.rope.apply_rope_ref`.

    Args:
        x: (B, H, L, hd), last dim contiguous; cos, sin: (L, hd) float32, or (1, hd) for one
            angle at every position; out: optional (B, H, L, hd) destination (may be x itself).
    Returns:
        (B, H, L, hd) in x.dtype.
    """
    if x.stride(-1) != 1:
        x = x.contiguous()
    bsz, n_heads, seq, hd = x.shape
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    stl = 0 if cos.shape[0] == 1 else cos.stride(0)
    if out is None:
        out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    half = hd // 2
    block_l = min(64, triton.next_power_of_2(seq))
    _rope_kernel[(bsz * n_heads, triton.cdiv(seq, block_l))](
        x, cos, sin, out, n_heads, seq, half,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2), stl,
        BLOCK_L=block_l, BLOCK_H=triton.next_power_of_2(half))
    return out
