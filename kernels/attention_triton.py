"""Triton split-KV attention for a small query block against cached keys/values (flash-decoding).

A denoising step has 1-128 query rows per head and up to ~8k cached positions: too few rows to
fill a GPU by tiling queries, so the key/value length is split across programs as well
(Dao et al., "Flash-Decoding for long-context inference", 2023). Each program handles the
query rows of *all* heads that share one kv head (grouped-query attention reads each K/V tile
once per group), runs an online softmax over its slice of keys, and writes an unnormalised
partial output with its running max and sum; `_reduce_kernel` combines the slices.
Non-causal. An optional `kv_len` (device scalar) masks keys at positions >= kv_len, so a
fixed-shape padded cache (CUDA graphs) attends only to its real entries.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _split_kernel(q_ptr, k_ptr, v_ptr, kvlen_ptr, acc_ptr, ml_ptr,
                  sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
                  n_kv, lq, lk, d, group, split_len, n_split, scale,
                  HAS_KVLEN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    bh = tl.program_id(0)  # b * n_kv + kv head
    mblk = tl.program_id(1)
    split = tl.program_id(2)
    b = bh // n_kv
    hk = bh % n_kv
    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)  # row r = (head in group) * lq + query position
    n_rows = group * lq
    row_ok = rows < n_rows
    hq = hk * group + rows // lq
    qi = rows % lq
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < d
    q_off = b.to(tl.int64) * sqb + hq.to(tl.int64)[:, None] * sqh + qi.to(tl.int64)[:, None] * sql + dd[None, :]
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # (M, D)
    k_base = k_ptr + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = v_ptr + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    end = lk
    if HAS_KVLEN:
        end = tl.minimum(lk, tl.load(kvlen_ptr).to(tl.int32))
    lo = split * split_len
    hi = tl.minimum(lo + split_len, end)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        c_ok = cols < hi
        kv_mask = c_ok[:, None] & d_ok[None, :]
        k = tl.load(k_base + cols.to(tl.int64)[:, None] * skl + dd[None, :], mask=kv_mask, other=0.0)  # (N, D)
        v = tl.load(v_base + cols.to(tl.int64)[:, None] * svl + dd[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale  # (M, N)
        s = tl.where(c_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    # partials laid out (B * n_kv, n_split, rows, D) and (B * n_kv, n_split, 2, rows)
    part = bh.to(tl.int64) * n_split + split
    tl.store(acc_ptr + (part * n_rows + rows[:, None]) * BLOCK_D + dd[None, :], acc, mask=row_ok[:, None])
    tl.store(ml_ptr + (part * 2) * n_rows + rows, m_i, mask=row_ok)
    tl.store(ml_ptr + (part * 2 + 1) * n_rows + rows, l_i, mask=row_ok)


@triton.jit
def _reduce_kernel(acc_ptr, ml_ptr, o_ptr, sob, soh, sol,
                   n_kv, lq, d, group, n_split,
                   BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)
    mblk = tl.program_id(1)
    b = bh // n_kv
    hk = bh % n_kv
    rows = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    n_rows = group * lq
    row_ok = rows < n_rows
    dd = tl.arange(0, BLOCK_D)
    m_all = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    for sp in range(0, n_split):
        part = bh.to(tl.int64) * n_split + sp
        m_all = tl.maximum(m_all, tl.load(ml_ptr + (part * 2) * n_rows + rows, mask=row_ok, other=float("-inf")))
    m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
    l_all = tl.zeros((BLOCK_M,), tl.float32)
    o = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for sp in range(0, n_split):
        part = bh.to(tl.int64) * n_split + sp
        m_s = tl.load(ml_ptr + (part * 2) * n_rows + rows, mask=row_ok, other=float("-inf"))
        l_s = tl.load(ml_ptr + (part * 2 + 1) * n_rows + rows, mask=row_ok, other=0.0)
        a_s = tl.load(acc_ptr + (part * n_rows + rows[:, None]) * BLOCK_D + dd[None, :], mask=row_ok[:, None],
                      other=0.0)
        w = tl.exp(m_s - m_safe)  # 0 for an empty slice (m_s = -inf)
        l_all += w * l_s
        o += w[:, None] * a_s
    o = o / tl.where(row_ok, l_all, 1.0)[:, None]
    hq = hk * group + rows // lq
    qi = rows % lq
    off = b.to(tl.int64) * sob + hq.to(tl.int64)[:, None] * soh + qi.to(tl.int64)[:, None] * sol + dd[None, :]
    tl.store(o_ptr + off, o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & (dd < d)[None, :])


def _num_splits(lk: int, programs: int, block_n: int, device: torch.device) -> int:
    """Enough KV slices to give every SM about two programs, each slice at least one tile."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    want = max(1, (2 * sms) // max(1, programs))
    return max(1, min(want, triton.cdiv(lk, block_n), 64))


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_len: torch.Tensor | None = None,
                     num_splits: int | None = None, block_n: int = 64) -> torch.Tensor:
    """Same contract as `kernels.attention.attention_ref` (plus the optional key-length mask).

    Args:
        q: (B, Hq, Lq, d); k, v: (B, Hkv, Lk, d), Hq % Hkv == 0, last dim contiguous (any other strides).
        kv_len: None or a 0-d/1-element integer tensor on q's device: keys at positions >= kv_len
            are ignored (must be >= 1).
        num_splits: KV slices (None = from the SM count); block_n: keys per tile.
    Returns:
        (B, Hq, Lq, d) in q.dtype.
    """
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bsz, hq, lq, d = q.shape
    n_kv, lk = k.shape[1], k.shape[2]
    group = hq // n_kv
    out = torch.empty_like(q)
    if lq == 0 or bsz == 0:
        return out
    n_rows = group * lq
    block_m = max(16, min(64, triton.next_power_of_2(n_rows)))
    block_d = max(16, triton.next_power_of_2(d))
    m_blocks = triton.cdiv(n_rows, block_m)
    if num_splits is None:
        num_splits = _num_splits(lk, bsz * n_kv * m_blocks, block_n, q.device)
    split_len = triton.cdiv(triton.cdiv(lk, num_splits), block_n) * block_n
    num_splits = triton.cdiv(lk, split_len)
    acc = torch.empty(bsz * n_kv, num_splits, n_rows, block_d, dtype=torch.float32, device=q.device)
    ml = torch.empty(bsz * n_kv, num_splits, 2, n_rows, dtype=torch.float32, device=q.device)
    has_len = kv_len is not None
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    _split_kernel[(bsz * n_kv, m_blocks, num_splits)](
        q, k, v, kv_len if has_len else q, acc, ml,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        n_kv, lq, lk, d, group, split_len, num_splits, 1.0 / d ** 0.5,
        HAS_KVLEN=has_len, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, DOT_PRECISION=precision)
    _reduce_kernel[(bsz * n_kv, m_blocks)](
        acc, ml, out, out.stride(0), out.stride(1), out.stride(2), n_kv, lq, d, group, num_splits,
        BLOCK_M=block_m, BLOCK_D=block_d)
    return out
