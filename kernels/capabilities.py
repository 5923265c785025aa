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

# TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (tests only). Read at call time, not
# import time: test packages set it after other packages may already have imported `kernels`.
CPU_OVERRIDE_ENV = "DLSP_TRITON_ON_CPU"


def triton_on_cpu() -> bool:
    """The test/debug override: route CPU tensors to the Triton kernels through the interpreter.

    Needs both TRITON_INTERPRET=1 (set before the `*_triton.py` modules are imported) and
    DLSP_TRITON_ON_CPU=1.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and os.environ.get(CPU_OVERRIDE_ENV) == "1"


def use_triton(t: torch.Tensor) -> bool:
    """Whether a Triton kernel should run for a tensor on this device."""
    if not HAS_TRITON:
        return False
    return t.is_cuda or (t.device.type == "cpu" and triton_on_cpu())
