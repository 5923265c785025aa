"""Kernel tests run the Triton kernels through the interpreter on CPU.

TRITON_INTERPRET must be set before any `kernels/*_triton.py` module is imported (the `@triton.jit`
decorator reads it). It only changes how those kernels run; the engine's dispatchers keep using
the references on CPU unless DLSP_TRITON_ON_CPU=1, which tests set only through the
`triton_on_cpu` fixture (monkeypatch, undone after each test). With a GPU the kernels run
compiled on CUDA tensors instead and the interpreter stays off.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """Route the dispatchers' CPU tensors to the Triton kernels (interpreter) for one test.

    Skipped with a GPU: there the kernels were compiled for CUDA (no interpreter) and the other
    tests run them on CUDA tensors through the same dispatchers."""
    if torch.cuda.is_available():
        pytest.skip("the CPU override needs the Triton interpreter; this machine runs the kernels on CUDA")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("DLSP_TRITON_ON_CPU", "1")
    yield
