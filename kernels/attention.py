"""Grouped-query attention of a query block over keys/values (bidirectional, or causal for the
lower layers of an AR-initialised model): reference and dispatcher."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.capabilities import HAS_FLASH_ATTN, use_triton

MAX_TRITON_QUERIES = 128  # the split-KV kernel is for denoising steps; longer blocks are prefills
MAX_FOLDED_QUERIES = 128  # CPU query blocks up to this long fold their head groups (`grouped_sdpa`)


def _key_mask(kv_len: torch.Tensor, lk: int) -> torch.Tensor:
    """(Lk,) bool, True for keys at positions < kv_len (no host sync)."""
    return torch.arange(lk, device=kv_len.device) < kv_len.reshape(())


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, no mask, kv heads shared by groups of query heads.

    Args:
        q: (B, Hq, Lq, d); k, v: (B, Hkv, Lk, d) with Hq % Hkv == 0.
        kv_len: optional 0-d integer tensor; keys at positions >= kv_len are ignored (a padded
            fixed-shape cache, see `engine.cuda_graphs`).
    Returns:
        (B, Hq, Lq, d) in q.dtype.
    """
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = q.float() @ kf.transpose(-1, -2) / (q.shape[-1] ** 0.5)  # (B, Hq, Lq, Lk)
    if kv_len is not None:
        scores = scores.masked_fill(~_key_mask(kv_len, k.shape[2]), float("-inf"))
    return (scores.softmax(-1) @ vf).to(q.dtype)


def _flash_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func  # guarded: HAS_FLASH_ATTN checked by the caller

    # flash-attn takes (B, L, H, d) and does grouped-query attention natively
    o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)
    return o.transpose(1, 2)


def grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention` with grouped-query heads, the group folded into the rows.

    The query heads that share a key/value head attend to the same keys, so (B, Hq, Lq, d) is
    read as (B, Hkv, group * Lq, d) against the keys as they are: no key/value head is
    repeated. SDPA's `enable_gqa` on a CPU copies the keys and values `group` times per call
    (3 x 1.5 MB per layer at 1k keys for the 135M shape): for the few rows of a denoising step
    that copy is most of the call (2 rows over 1k keys, 1 thread: 0.31 -> 0.14 ms per layer
    with a mask). Used for short CPU query blocks only; prefills keep SDPA's own paths.

    Args:
        q: (B, Hq, Lq, d); k, v: (B, Hkv, Lk, d) with Hq % Hkv == 0.
        mask: None, or (Lq, Lk) bool (True = attend) or float (added to the scores).
        k and v may be kept in another dtype than q (a half-precision cache): they are read in q's.
    Returns:
        (B, Hq, Lq, d).
    """
    if k.dtype != q.dtype:  # a cache kept in half precision (`Transformer.cache_dtype`): widened per call
        k, v = k.to(q.dtype), v.to(q.dtype)
    b, hq, lq, d = q.shape
    hkv = k.shape[1]
    if hkv == hq or not (q.device.type == "cpu" and lq <= MAX_FOLDED_QUERIES) or (mask is not None and mask.dim() != 2):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=hkv != hq)
    group = hq // hkv
    folded = q.reshape(b, hkv, group * lq, d)  # query head h = kv head h // group: row (h % group) * lq + i
    mask = None if mask is None else mask.repeat(group, 1)  # (group * Lq, Lk), the same rows per head
    return F.scaled_dot_product_attention(folded, k, v, attn_mask=mask).view(b, hq, lq, d)


def future_mask(q_pos: torch.Tensor, lk: int) -> torch.Tensor:
    """(Lq, Lk) bool, True where key position <= query position (causal visibility)."""
    return torch.arange(lk, device=q_pos.device)[None, :] <= q_pos[:, None]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor | None = None,
                     kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """Causal grouped-query attention: the query at position p sees keys at positions <= p.

    Args:
        q: (B, Hq, Lq, d); k, v: (B, Hkv, Lk, d).
        q_pos: (Lq,) int64 canvas positions of the queries; None = 0..Lq-1 with Lq == Lk (prefill).
        kv_len: as in `attention_ref`.
    Returns:
        (B, Hq, Lq, d) in q.dtype.
    """
    gqa = k.shape[1] != q.shape[1]
    if q_pos is None and kv_len is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if q_pos is None:
        q_pos = torch.arange(q.shape[2], device=q.device)
    mask = future_mask(q_pos, k.shape[2])  # (Lq, Lk)
    if kv_len is not None:
        mask = mask & _key_mask(kv_len, k.shape[2])[None, :]
    return grouped_sdpa(q, k, v, mask)


def ordered_rows_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                           k_old: torch.Tensor, v_old: torch.Tensor,
                           spare: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Bidirectional attention of a block of rows in which each row sees the rows *after* it as
    they were before this step: the state a one-row-at-a-time decode would have shown it, so
    several drafted rows are checked in one forward (speculative decoding, `engine.generate`).

    Args:
        q: (B, Hq, Q, d) queries of the rows at canvas positions `q_pos` (Q,), ascending.
        k, v: (B, Hkv, L, d) the cache, the rows' fresh keys/values already written at `q_pos`.
        k_old, v_old: (B, Hkv, Q, d) the rows' keys/values before this step.
        spare: the storage `k` and `v` are the leading rows of (a view from its start), with at
            least Q rows after them: the old keys/values are written there and attention reads
            one view of both, instead of concatenating a copy of the whole cache per layer
            (1.1 -> 0.3 ms per layer at 1.3k keys on 2 CPU cores). The spare rows hold nothing.
    Returns:
        (B, Hq, Q, d) in q.dtype: row i attends to every cache position, except that for a row j
        after it (q_pos[j] > q_pos[i]) it reads the old key/value of j instead of the fresh one.
    """
    n, lk = q.shape[2], k.shape[2]
    later = q_pos[None, :] > q_pos[:, None]  # (Q, Q): row j comes after row i
    fresh = torch.ones(n, lk, dtype=torch.bool, device=q.device)  # (Q, L)
    fresh[:, q_pos] = ~later
    mask = torch.cat([fresh, later], 1)  # (Q, L + Q)
    if spare is not None:
        sk, sv = spare
        sk[:, :, lk:lk + n], sv[:, :, lk:lk + n] = k_old, v_old
        keys, values = sk[:, :, :lk + n], sv[:, :, :lk + n]
    else:
        keys, values = torch.cat([k, k_old], 2), torch.cat([v, v_old], 2)
    return grouped_sdpa(q, keys, values, mask)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatcher. Same contract as `attention_ref`.

    Small query blocks (denoising steps): the Triton split-KV kernel on CUDA. Long blocks
    (prefill): flash-attn when installed and the tensors are CUDA fp16/bf16, else torch SDPA.
    """
    if use_triton(q, k, v) and q.shape[2] <= MAX_TRITON_QUERIES:
        from kernels.attention_triton import attention_triton

        return attention_triton(q, k, v, kv_len)
    if (HAS_FLASH_ATTN and kv_len is None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] <= 256):
        return _flash_prefill(q, k, v)
    mask = None if kv_len is None else _key_mask(kv_len, k.shape[2])[None, :].expand(q.shape[2], -1)  # (Lq, Lk)
    return grouped_sdpa(q, k, v, mask)
