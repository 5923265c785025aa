"""Triton kernels for `kernels.confidence`: one-pass confidence of logits rows and the fused commit.

`_confidence_kernel` reads each row once in chunks of BLOCK_V and keeps an online softmax
(running max m, s = sum exp(x - m), w = sum exp(x - m) (x - m)) plus the top two values, so that
  max_prob = 1 / s,  margin = (1 - exp(x2 - x1)) / s,  neg_entropy = sum p log p = w / s - log s
with x = logits / T. Vocabularies need not be a power of two (151,936 for Qwen2): the last
chunk is masked. -inf logits (forbidden ids) contribute nothing.

`_commit_kernel` applies the threshold rule of `commit_mask_ref` on the device: the rank of a
row among the masked rows of its hole is counted against every other row (N is a few hundred
at most), so nothing is synchronised with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _confidence_kernel(x_ptr, stride_row, n_cols, inv_t,
                       tok_ptr, maxp_ptr, margin_ptr, negent_ptr,
                       BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = x_ptr + row * stride_row
    cols = tl.arange(0, BLOCK_V)
    neg_inf = float("-inf")
    m = tl.full((), neg_inf, tl.float32)  # running max of x
    s = tl.full((), 0.0, tl.float32)  # sum exp(x - m)
    w = tl.full((), 0.0, tl.float32)  # sum exp(x - m) * (x - m)
    top1 = tl.full((), neg_inf, tl.float32)
    top2 = tl.full((), neg_inf, tl.float32)
    arg = tl.full((), 0, tl.int32)
    for start in range(0, n_cols, BLOCK_V):
        idx = start + cols
        x = tl.load(base + idx, mask=idx < n_cols, other=neg_inf).to(tl.float32) * inv_t
        # top two of the chunk; ties keep the lowest index (tl.argmax does)
        c1 = tl.max(x, axis=0)
        i1 = tl.argmax(x, axis=0)
        c2 = tl.max(tl.where(cols == i1, neg_inf, x), axis=0)
        better = c1 > top1
        top2 = tl.where(better, tl.maximum(top1, c2), tl.maximum(top2, c1))
        arg = tl.where(better, start + i1, arg)
        top1 = tl.maximum(top1, c1)
        # online softmax; guard -inf - -inf (nothing finite seen yet)
        m_new = tl.maximum(m, c1)
        m_safe = tl.where(m_new == neg_inf, 0.0, m_new)
        delta = tl.where(m == neg_inf, 0.0, m - m_safe)
        alpha = tl.exp(delta)
        xm = x - m_safe
        p = tl.exp(xm)
        w = alpha * (w + s * delta) + tl.sum(p * tl.where(p > 0, xm, 0.0), axis=0)
        s = s * alpha + tl.sum(p, axis=0)
        m = m_new
    p1 = 1.0 / s
    p2 = tl.exp(top2 - top1) / s
    tl.store(tok_ptr + row, arg.to(tl.int64))
    tl.store(maxp_ptr + row, p1)
    tl.store(margin_ptr + row, p1 - p2)
    tl.store(negent_ptr + row, w / s - tl.log(s))


def confidence_triton(logits: torch.Tensor, temperature: float = 0.0,
                      block_v: int = 4096) -> tuple[torch.Tensor, ...]:
    """Same contract as `kernels.confidence.confidence_ref`.

    Args:
        logits: (N, V) fp32/fp16/bf16, V >= 2; temperature <= 0 means 1 for the probabilities.
        block_v: chunk of the vocabulary read per iteration (a power of two).
    Returns:
        token (N,) int64, max_prob (N,), margin (N,), neg_entropy (N,) float32.
    """
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    n, v = logits.shape
    dev = logits.device
    tok = torch.empty(n, dtype=torch.int64, device=dev)
    maxp, margin, negent = (torch.empty(n, dtype=torch.float32, device=dev) for _ in range(3))
    if n == 0:
        return tok, maxp, margin, negent
    t = temperature if temperature > 0 else 1.0
    block = min(block_v, triton.next_power_of_2(v))
    _confidence_kernel[(n,)](logits, logits.stride(0), v, 1.0 / t, tok, maxp, margin, negent,
                             BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return tok, maxp, margin, negent


@triton.jit
def _commit_kernel(conf_ptr, masked_ptr, hole_ptr, nmin_ptr, n, threshold,
                   tok_ptr, pos_ptr, canvas_ptr, out_ptr,
                   WRITE: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    neg_inf = float("-inf")
    ii = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    in_i = ii < n
    m_i = tl.load(masked_ptr + ii, mask=in_i, other=0) != 0
    s_i = tl.where(m_i, tl.load(conf_ptr + ii, mask=in_i, other=0.0).to(tl.float32), neg_inf)
    h_i = tl.load(hole_ptr + ii, mask=in_i, other=-1)
    rank = tl.zeros((BLOCK_I,), dtype=tl.int32)
    for start in range(0, n, BLOCK_J):
        jj = start + tl.arange(0, BLOCK_J)
        in_j = jj < n
        m_j = tl.load(masked_ptr + jj, mask=in_j, other=0) != 0
        s_j = tl.where(m_j, tl.load(conf_ptr + jj, mask=in_j, other=0.0).to(tl.float32), neg_inf)
        h_j = tl.load(hole_ptr + jj, mask=in_j, other=-2)
        # row j outranks row i: higher score, or the same score at a lower index
        better = (s_j[None, :] > s_i[:, None]) | ((s_j[None, :] == s_i[:, None]) & (jj[None, :] < ii[:, None]))
        same = (h_j[None, :] == h_i[:, None]) & in_j[None, :]
        rank += tl.sum((same & better).to(tl.int32), axis=1)
    n_min = tl.load(nmin_ptr + h_i, mask=in_i, other=0)
    chosen = m_i & ((s_i >= threshold) | (rank < n_min)) & in_i
    tl.store(out_ptr + ii, chosen.to(tl.int8), mask=in_i)
    if WRITE:
        tok = tl.load(tok_ptr + ii, mask=in_i, other=0)
        pos = tl.load(pos_ptr + ii, mask=in_i, other=0)
        tl.store(canvas_ptr + pos, tok.to(canvas_ptr.dtype.element_ty), mask=chosen)


def _launch_commit(conf, masked, hole, threshold, n_min, tokens=None, pos=None, canvas=None) -> torch.Tensor:
    n = conf.shape[0]
    out = torch.empty(n, dtype=torch.int8, device=conf.device)
    if n == 0:
        return out.bool()
    write = canvas is not None
    conf, hole, n_min = conf.contiguous(), hole.contiguous(), n_min.contiguous()
    masked_i8 = masked.contiguous().to(torch.int8)
    if write:
        tokens, pos = tokens.contiguous(), pos.contiguous()
    else:
        tokens = pos = canvas = hole  # unused pointers
    block_i = min(64, triton.next_power_of_2(n))
    block_j = min(128, triton.next_power_of_2(n))
    _commit_kernel[(triton.cdiv(n, block_i),)](conf, masked_i8, hole, n_min, n, float(threshold),
                                               tokens, pos, canvas, out,
                                               WRITE=write, BLOCK_I=block_i, BLOCK_J=block_j)
    return out.bool()


def commit_mask_triton(conf: torch.Tensor, masked: torch.Tensor, hole: torch.Tensor, threshold: float,
                       n_min: torch.Tensor) -> torch.Tensor:
    """Same contract as `kernels.confidence.commit_mask_ref`: (N,) bool rows to commit."""
    return _launch_commit(conf, masked, hole, threshold, n_min)


def commit_triton(canvas: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor, conf: torch.Tensor,
                  masked: torch.Tensor, hole: torch.Tensor, threshold: float,
                  n_min: torch.Tensor) -> torch.Tensor:
    """Same contract as `kernels.confidence.commit_ref`: choose rows and write their tokens into
    the (contiguous, 1-D) canvas in the same launch."""
    if not canvas.is_contiguous():
        raise ValueError("commit_triton writes in place: the canvas must be contiguous")
    return _launch_commit(conf, masked, hole, threshold, n_min, tokens, pos, canvas)
