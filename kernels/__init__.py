"""Kernels: one module per op, `<op>.py` holds the PyTorch reference and the dispatcher,
`<op>_triton.py` the Triton kernel and its launcher. Imports only torch (and triton inside
the `*_triton.py` files)."""

from kernels.capabilities import HAS_CUDA, HAS_FLASH_ATTN, HAS_TRITON

__all__ = ["HAS_CUDA", "HAS_FLASH_ATTN", "HAS_TRITON"]
