"""`attention_triton` (split-KV, grouped-query) against `attention_ref`."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.attention import attention, attention_ref, causal_attention, grouped_sdpa, ordered_rows_attention
from tests.kernels.helpers import assert_close3


def _low_prec(q, k, v, kv_len=None):
    """Attention computed in the inputs' dtype (fp16 matmuls and softmax)."""
    group = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ kk.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if kv_len is not None:
        s = s.masked_fill(torch.arange(k.shape[2], device=q.device) >= kv_len, float("-inf"))
    return s.softmax(-1) @ vv


def _qkv(b, hq, hkv, lq, lk, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, lq, hq, d, generator=g).transpose(1, 2)  # strided like the model's view
    k = torch.randn(b, hkv, lk, d, generator=g)
    v = torch.randn(b, hkv, lk, d, generator=g)
    return (t.to(dtype).to(device) for t in (q, k, v))


CASES = [  # (B, Hq, Hkv, Lq, Lk, d, splits)
    (1, 4, 2, 1, 37, 16, None),
    (2, 8, 2, 5, 300, 24, 3),
    (1, 4, 4, 128, 1000, 64, 4),
    (1, 6, 2, 17, 8192, 16, 8),
    (1, 2, 1, 33, 100, 32, 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:6])))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_matches_reference(case, dtype, device):
    from kernels.attention_triton import attention_triton

    b, hq, hkv, lq, lk, d, splits = case
    q, k, v = _qkv(b, hq, hkv, lq, lk, d, dtype, device)
    out = attention_triton(q, k, v, num_splits=splits)
    assert out.dtype == dtype and out.shape == (b, hq, lq, d)
    ref32 = attention_ref(q.float(), k.float(), v.float())
    low = ref32 if dtype == torch.float32 else _low_prec(q, k, v)
    assert_close3(out, ref32, low, 1e-5 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kv_len", [1, 63, 64, 65, 250])
def test_attention_key_length_mask(kv_len, dtype, device):
    from kernels.attention_triton import attention_triton

    q, k, v = _qkv(1, 4, 2, 9, 256, 16, dtype, device, seed=1)
    n = torch.tensor(kv_len, device=device)
    out = attention_triton(q, k, v, n, num_splits=4)
    ref32 = attention_ref(q.float(), k.float(), v.float(), n)
    # the mask equals slicing the keys
    sliced = attention_ref(q.float(), k[:, :, :kv_len].float(), v[:, :, :kv_len].float())
    torch.testing.assert_close(ref32, sliced, atol=1e-6, rtol=1e-6)
    low = ref32 if dtype == torch.float32 else _low_prec(q, k, v, n)
    assert_close3(out, ref32, low, 1e-5 if dtype == torch.float32 else 1e-3)


def test_attention_dispatcher(device, triton_on_cpu):
    q, k, v = _qkv(1, 4, 2, 6, 70, 16, torch.float32, device, seed=2)
    n = torch.tensor(50, device=device)
    torch.testing.assert_close(attention(q, k, v, n), attention_ref(q, k, v, n), atol=1e-5, rtol=1e-5)
    # a prefill-sized block takes the SDPA path, same numbers
    q2, k2, v2 = _qkv(1, 4, 2, 200, 200, 16, torch.float32, device, seed=3)
    torch.testing.assert_close(attention(q2, k2, v2), attention_ref(q2, k2, v2), atol=1e-5, rtol=1e-5)


def test_sdpa_path_masks_keys():
    q, k, v = _qkv(1, 4, 2, 200, 300, 16, torch.float32, "cpu", seed=4)
    n = torch.tensor(120)
    torch.testing.assert_close(attention(q, k, v, n), attention_ref(q, k, v, n), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hq,hkv,lq", [(9, 3, 1), (9, 3, 7), (4, 2, 128), (4, 4, 5), (6, 2, 129)])
def test_grouped_sdpa_folds_head_groups(hq, hkv, lq):
    """The folded call (query heads of one key/value head as extra rows) computes what SDPA with
    `enable_gqa` does, unmasked, with a bool mask that differs per row, and with a float mask;
    beyond the folding length it is SDPA's own path."""
    import torch.nn.functional as F

    q, k, v = _qkv(1, hq, hkv, lq, 200, 16, torch.float32, "cpu", seed=5)
    gqa = hq != hkv
    rows = torch.randint(0, 200, (lq,), generator=torch.Generator().manual_seed(6))
    bool_mask = torch.arange(200)[None, :] <= rows[:, None]  # a different visible span per row
    float_mask = torch.randn(lq, 200, generator=torch.Generator().manual_seed(7))
    for mask in (None, bool_mask, float_mask):
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        torch.testing.assert_close(grouped_sdpa(q, k, v, mask), want, atol=1e-6, rtol=1e-5)
    # the callers that fold: a causal step and the speculative rows' attention, against the reference
    pos = torch.sort(torch.randperm(200, generator=torch.Generator().manual_seed(8))[:lq]).values
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.arange(200)[None, :] <= pos[:, None],
                                          enable_gqa=gqa)
    torch.testing.assert_close(causal_attention(q, k, v, pos), want, atol=1e-6, rtol=1e-5)
    k_old, v_old = torch.randn(1, hkv, lq, 16), torch.randn(1, hkv, lq, 16)
    later = pos[None, :] > pos[:, None]
    fresh = torch.ones(lq, 200, dtype=torch.bool)
    fresh[:, pos] = ~later
    want = F.scaled_dot_product_attention(q, torch.cat([k, k_old], 2), torch.cat([v, v_old], 2),
                                          attn_mask=torch.cat([fresh, later], 1), enable_gqa=gqa)
    torch.testing.assert_close(ordered_rows_attention(q, k, v, pos, k_old, v_old), want, atol=1e-6, rtol=1e-5)
