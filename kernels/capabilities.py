"""Capability detection, done once at import."""

from __future__ import annotations

import importlib.util
import os

import torch

HAS_CUDA: bool = torch.cuda.is_available()

# whether they are installed, without importing them: importing triton maps ~70 MB of
# libraries into every process (the language server's resident set on a CPU machine); the
# kernel modules import it when a kernel first runs
HAS_TRITON: bool = importlib.util.find_spec("triton") is not None
HAS_FLASH_ATTN: bool = HAS_CUDA and importlib.util.find_spec("flash_attn") is not None

# TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (tests only). Read at call time, not
# import time: test packages set it after other packages may already have imported `kernels`.
CPU_OVERRIDE_ENV = "DLSP_TRITON_ON_CPU"


def triton_on_cpu() -> bool:
    """The test/debug override: route CPU tensors to the Triton kernels through the interpreter.

    Needs both TRITON_INTERPRET=1 (set before the `*_triton.py` modules are imported) and
    DLSP_TRITON_ON_CPU=1.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1" and os.environ.get(CPU_OVERRIDE_ENV) == "1"


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will track an op on these tensors (the Triton kernels have no backward)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def use_triton(t: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether a Triton kernel should run for an op on `t` (and `others`): on a device it serves,
    and only when no gradient is needed: the kernels are forward-only, so a training step must
    take the differentiable reference (else the final norm would cut the gradient to every layer)."""
    if not HAS_TRITON or needs_grad(t, *others):
        return False
    return t.is_cuda or (t.device.type == "cpu" and triton_on_cpu())
