"""Capability detection, done once at import."""

from __future__ import annotations

import os

import torch

HAS_CUDA: bool = torch.cuda.is_available()

try:  # triton is optional; its import never runs GPU code
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

try:
    import flash_attn  # noqa: F401

    HAS_FLASH_ATTN = HAS_CUDA
except ImportError:
    HAS_FLASH_ATTN = False

# TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (tests only).
TRITON_INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel should run for a tensor on this device."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or (TRITON_INTERPRET and os.environ.get("DLSP_TRITON_ON_CPU") == "1")
