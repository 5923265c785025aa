"""The Triton kernels are forward-only: the dispatchers must take the differentiable references
whenever autograd is recording, and the kernels otherwise. On CPU the kernels run through the
interpreter (the `triton_on_cpu` override); with a GPU, on CUDA tensors."""

from __future__ import annotations

import pytest
import torch

from kernels import attention as attention_mod
from kernels import norm as norm_mod
from kernels import rope as rope_mod
from kernels.capabilities import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")


@pytest.fixture
def kernel_device(request, device):
    if device == "cpu":
        request.getfixturevalue("triton_on_cpu")
    return device


def _spy(monkeypatch, module_name: str, fn_name: str) -> list[int]:
    """Count calls of a Triton launcher (imported lazily by the dispatcher from its module)."""
    import importlib

    mod = importlib.import_module(module_name)
    real, calls = getattr(mod, fn_name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, fn_name, wrapper)
    return calls


def _rope_inputs(device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 5, 8, generator=g).to(device)
    cos, sin = rope_mod.rope_tables(8, torch.arange(5, device=device), 10000.0)
    return x, cos, sin


CASES = {
    "rms_norm": ("kernels.norm_triton", "rms_norm_triton",
                 lambda d: (torch.randn(3, 4, 32, device=d), torch.rand(32, device=d) + 0.5),
                 lambda x, w: norm_mod.rms_norm(x, w, 1e-5)[0], lambda x, w: norm_mod.rms_norm_ref(x, w, 1e-5)[0]),
    "apply_rope": ("kernels.rope_triton", "apply_rope_triton", lambda d: _rope_inputs(d)[:1],
                   lambda x: rope_mod.apply_rope(x, *_rope_inputs(x.device)[1:]),
                   lambda x: rope_mod.apply_rope_ref(x, *_rope_inputs(x.device)[1:])),
    "attention": ("kernels.attention_triton", "attention_triton",
                  lambda d: (torch.randn(1, 4, 3, 16, device=d), torch.randn(1, 2, 9, 16, device=d),
                             torch.randn(1, 2, 9, 16, device=d)),
                  lambda q, k, v: attention_mod.attention(q, k, v), lambda q, k, v: attention_mod.attention_ref(q, k, v)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_flow_through_the_reference_and_match_it(name, kernel_device, monkeypatch):
    module, launcher, make, fast, ref = CASES[name]
    calls = _spy(monkeypatch, module, launcher)
    inputs = [t.requires_grad_() for t in make(kernel_device)]
    out = fast(*inputs)
    assert out.grad_fn is not None and not calls  # a Triton output would have no graph
    grads = torch.autograd.grad(out.square().sum(), inputs)
    copies = [t.detach().clone().requires_grad_() for t in inputs]
    want = torch.autograd.grad(ref(*copies).square().sum(), copies)
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # inference still takes the kernel
        fast(*inputs)
    assert calls


def test_a_training_step_reaches_every_layer(tiny_ckpt, kernel_device):
    """The final norm dispatched to Triton used to cut the gradient: nothing below it trained."""
    from engine.checkpoint import load_model

    model, a = load_model(tiny_ckpt, device=kernel_device)
    model.train()
    ids = torch.randint(3, a.vocab_size, (2, 24), device=kernel_device)
    loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_importing_the_server_does_not_import_triton():
    """Triton maps ~70 MB of libraries into a process: the server (CPU) must not pay for it;
    the kernel modules import it when a kernel first runs."""
    import subprocess
    import sys

    code = "import sys, lsp_server.server, engine.engine; print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
