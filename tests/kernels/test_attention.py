"""`attention_triton` (split-KV, grouped-query) against `attention_ref`."""

from __future__ import annotations

import math

import pytest
import torch

from kernels.attention import attention, attention_ref
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
