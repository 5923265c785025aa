"""Shared fixtures. Keep torch polite on 2 shared cores."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Without CUDA, Triton kernels can only run through the interpreter, and `@triton.jit` reads this
# when a `kernels/*_triton.py` module is imported, which may happen in any test package first.
# The engine's dispatchers still use the references on CPU (see tests/kernels/conftest.py).
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """A tiny random llada-layout checkpoint (real loading path, garbage text)."""
    from engine.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llada"), family="llada")


@pytest.fixture(scope="session")
def tiny_dream_ckpt(tmp_path_factory):
    from engine.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_dream"), family="dream")
