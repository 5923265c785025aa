"""Rotary position embeddings (rotate-half convention of Llama/Qwen2/LLaDA): reference and dispatcher."""

from __future__ import annotations

import torch

from kernels.capabilities import use_triton


def rope_tables(head_dim: int, positions: torch.Tensor, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer positions.

    Args:
        positions: (L,) int64.
    Returns:
        cos, sin: (L, head_dim) float32.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (L, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (L, hd)
    return emb.cos(), emb.sin()


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x by the angles in cos/sin.

    Args:
        x: (B, H, L, hd); cos, sin: (L, hd).
    Returns:
        (B, H, L, hd) in x.dtype.
    """
    xf = x.float()
    half = xf.shape[-1] // 2
    rot = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rot * sin).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Dispatcher: Triton on CUDA without autograd, reference elsewhere. Same contract as `apply_rope_ref`."""
    if use_triton(x, cos, sin):
        from kernels.rope_triton import apply_rope_triton

        return apply_rope_triton(x, cos, sin)
    return apply_rope_ref(x, cos, sin)


def _delta_tables(head_dim: int, delta: int | torch.Tensor, theta: float,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.as_tensor(delta, dtype=torch.long, device=device).reshape(-1)  # (1,) or (L,)
    return rope_tables(head_dim, d, theta)


def rerotate_keys_ref(k: torch.Tensor, delta: int | torch.Tensor, theta: float) -> torch.Tensor:
    """Keys rotated at positions p, re-rotated to p + delta (R(p + d) = R(d) R(p)).

    Needed when a hole grows and the suffix after it shifts right: its cached keys move by the
    number of added slots without recomputing them.

    Args:
        k: (B, H, L, hd) keys after RoPE; delta: an int for every position, or (L,) int64 per position.
    Returns:
        (B, H, L, hd) in k.dtype.
    """
    cos, sin = _delta_tables(k.shape[-1], delta, theta, k.device)  # (1 or L, hd)
    return apply_rope_ref(k, cos, sin)


def rerotate_keys(k: torch.Tensor, delta: int | torch.Tensor, theta: float,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatcher: Triton on CUDA (in place when `out` is k), reference elsewhere.
    Same contract as `rerotate_keys_ref`."""
    cos, sin = _delta_tables(k.shape[-1], delta, theta, k.device)
    if use_triton(k):
        from kernels.rope_triton import apply_rope_triton

        return apply_rope_triton(k, cos, sin, out=out)
    res = apply_rope_ref(k, cos, sin)
    return res if out is None else out.copy_(res)
