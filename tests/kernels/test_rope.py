"""`apply_rope_triton` and key re-rotation against the references."""

from __future__ import annotations

import pytest
import torch

from kernels.rope import apply_rope, apply_rope_ref, rerotate_keys, rerotate_keys_ref, rope_tables
from tests.kernels.helpers import assert_close3

THETA = 10000.0


def _low_prec(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rot * sin.to(x.dtype)


@pytest.mark.parametrize("shape", [(1, 4, 7, 16), (2, 3, 70, 24), (1, 2, 130, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rope_matches_reference(shape, dtype, device):
    from kernels.rope_triton import apply_rope_triton

    b, h, seq, hd = shape
    x = torch.randn(b, seq, h, hd).transpose(1, 2).to(dtype).to(device)  # the model's strided view
    cos, sin = rope_tables(hd, torch.arange(seq, device=device) * 3 + 11, THETA)
    out = apply_rope_triton(x, cos, sin)
    assert out.dtype == dtype and out.shape == x.shape
    ref32 = apply_rope_ref(x.float(), cos, sin)
    low = ref32 if dtype == torch.float32 else _low_prec(x, cos, sin)
    assert_close3(out, ref32, low, 1e-6 if dtype == torch.float32 else 1e-3)


def _keys_at(raw: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = rope_tables(raw.shape[-1], positions, THETA)
    return apply_rope_ref(raw, cos, sin)


@pytest.mark.parametrize("delta", [0, 1, 37, 500])
def test_rerotate_equals_rotation_at_shifted_position(delta, device):
    from kernels.rope_triton import apply_rope_triton

    raw = torch.randn(1, 2, 20, 32, device=device)  # keys before RoPE
    p = torch.arange(20, device=device) + 100
    k_p = _keys_at(raw, p)
    want = _keys_at(raw, p + delta)
    # fp32 angles of positions ~600 carry ~1e-4 rad of rounding
    torch.testing.assert_close(rerotate_keys_ref(k_p, delta, THETA), want, atol=2e-4, rtol=0)
    cos, sin = rope_tables(32, torch.tensor([delta], device=device), THETA)  # (1, hd): one angle for all
    torch.testing.assert_close(apply_rope_triton(k_p, cos, sin), rerotate_keys_ref(k_p, delta, THETA),
                               atol=1e-6, rtol=1e-6)


def test_rerotate_per_position_delta_in_place(device, triton_on_cpu):
    raw = torch.randn(2, 2, 12, 16, device=device)
    p = torch.arange(12, device=device)
    delta = torch.where(p >= 5, 4, 0)  # a hole at 3..4 grew by 4: only the suffix shifts
    k = _keys_at(raw, p)
    want = _keys_at(raw, p + delta)
    torch.testing.assert_close(rerotate_keys_ref(k, delta, THETA), want, atol=1e-5, rtol=0)
    out = rerotate_keys(k, delta, THETA, out=k)  # dispatcher, Triton under the override, in place
    assert out.data_ptr() == k.data_ptr()
    torch.testing.assert_close(k, want, atol=1e-5, rtol=0)


def test_apply_rope_dispatcher(device, triton_on_cpu):
    x = torch.randn(1, 3, 9, 16, device=device)
    cos, sin = rope_tables(16, torch.arange(9, device=device), THETA)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope_ref(x, cos, sin), atol=1e-6, rtol=1e-6)
