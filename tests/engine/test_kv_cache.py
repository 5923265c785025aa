"""`KVCache`: splicing for an edited canvas, and graph replay keyed by the cache object itself."""

from __future__ import annotations

import gc

import pytest
import torch

from engine import Engine, InfillRequest, SamplingConfig
from engine.checkpoint import load_model
from engine.cuda_graphs import StepGraphs
from engine.kv_cache import HEADROOM, KVCache, splice, splice_in_place
from kernels.rope import apply_rope_ref, rope_tables


def _rotated(raw: torch.Tensor, start: int, theta: float = 10000.0) -> torch.Tensor:
    pos = torch.arange(start, start + raw.shape[2])
    cos, sin = rope_tables(raw.shape[-1], pos, theta)
    return apply_rope_ref(raw, cos, sin)


def test_splice_copies_the_head_and_re_rotates_the_moved_tail():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 2, 12, 8, generator=g)  # keys before RoPE, old canvas of 12 rows
    vals = torch.randn(1, 2, 12, 8, generator=g)
    old = KVCache([_rotated(raw, 0)], [vals])
    new = splice(old, new_length=15, head=5, tail=4, theta=10000.0)  # 3 rows inserted after row 4
    k, v = new[0]
    assert new.length == 15 and old.length == 12
    torch.testing.assert_close(k[:, :, :5], old.keys[0][:, :, :5])
    torch.testing.assert_close(k[:, :, 11:], _rotated(raw[:, :, 8:], 11), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v[:, :, 11:], vals[:, :, 8:])
    assert not k[:, :, 5:11].any()
    shorter = splice(old, new_length=10, head=3, tail=6, theta=10000.0)  # text deleted: the tail moves left
    torch.testing.assert_close(shorter.keys[0][:, :, 4:], _rotated(raw[:, :, 6:], 4), atol=1e-5, rtol=1e-5)


def test_a_prefilled_cache_owns_its_rows_and_grows_in_place():
    """Values sliced out of a fused q/k/v output are copied out of it (the view kept the whole
    output alive), into storage with spare rows that the first keystroke's splice grows into."""
    g = torch.Generator().manual_seed(1)
    fused = torch.randn(1, 10, 3 * 8, generator=g)  # (B, L, q + k + v), one head of 8
    _, k, v = (t.view(1, 10, 1, 8).transpose(1, 2) for t in fused.split(8, -1))  # (B, 1, L, 8) views
    cache = KVCache.empty()
    cache.append(k, v)
    kc, vc = cache[0]
    assert torch.equal(kc, k) and torch.equal(vc, v) and cache.length == 10
    assert vc.untyped_storage().nbytes() == (10 + HEADROOM) * 8 * 4  # its own rows, not the fused output
    ptr = vc.untyped_storage().data_ptr()
    splice_in_place(cache, 13, head=6, tail=4, theta=10000.0)  # 3 rows typed after row 5
    assert cache.values[0].untyped_storage().data_ptr() == ptr
    assert torch.equal(cache.values[0][:, :, :6], v[:, :, :6]) and torch.equal(cache.values[0][:, :, 9:], v[:, :, 6:])


def test_a_cache_in_half_precision_and_back_keeps_its_rows():
    g = torch.Generator().manual_seed(2)
    cache = KVCache.empty()
    for _ in range(2):
        cache.append(torch.randn(1, 2, 7, 4, generator=g) * 30, torch.randn(1, 2, 7, 4, generator=g))
    half = cache.to(torch.float16)
    assert half.dtype == torch.float16 and half.length == 7 and len(half) == 2 and cache.dtype == torch.float32
    back = half.to(torch.float32)
    for (k, v), (k2, v2) in zip(cache, back):
        assert k2.dtype == torch.float32 and k2.shape == k.shape
        torch.testing.assert_close(k2, k, rtol=1e-3, atol=0)  # fp16 rounding only
        torch.testing.assert_close(v2, v, rtol=1e-3, atol=0)
    assert back.storage is not None and back.storage[0][0].shape[2] == 7 + HEADROOM  # typing grows it in place


def test_graphs_reload_a_different_cache_even_at_the_same_address(tiny_dream_ckpt):
    """The old pool keyed the loaded cache by `id()`; a new request's cache can get the id of a
    freed one, and the step then ran on the previous request's keys/values."""
    model, _ = load_model(tiny_dream_ckpt)
    model.eval()
    graphs = StepGraphs(model, use_graph=False)
    g = torch.Generator().manual_seed(1)
    ids_a = torch.randint(3, model.args.vocab_size, (1, 30), generator=g)
    ids_b = torch.randint(3, model.args.vocab_size, (1, 30), generator=g)
    index = torch.arange(10, 16)
    with torch.inference_mode():
        _, cache_a = model.prefill(ids_a)
        graphs.step(ids_a[:, index], index, cache_a)
        _, cache_b = model.prefill(ids_b)
        got = graphs.step(ids_b[:, index], index, cache_b)
        _, fresh = model.prefill(ids_b)
        want = model.step(ids_b[:, index], index, fresh)
        torch.testing.assert_close(got, want)
        # the same object written outside a step (a splice or refresh) must reload too
        for (kb, vb), (kf, vf) in zip(cache_b, model.prefill(ids_a)[1]):
            kb.copy_(kf)
            vb.copy_(vf)
        cache_b.touch()
        got = graphs.step(ids_a[:, index], index, cache_b)
        torch.testing.assert_close(got, model.step(ids_a[:, index], index, model.prefill(ids_a)[1]))


def test_two_different_prompts_in_a_row_through_step_graphs(tiny_dream_ckpt, monkeypatch):
    """Every object id collides (as when CPython reuses a freed cache's address): the graphs must
    still reload the second prompt's cache."""
    from engine import cuda_graphs

    monkeypatch.setattr(cuda_graphs, "id", lambda obj: 0, raising=False)
    plain = Engine.from_pretrained(tiny_dream_ckpt, device="cpu")
    graphed = Engine(plain.model, plain.tokenizer, cuda_graphs=True)
    cfg = SamplingConfig(threshold=0.5)
    # same token length, so both canvases land in the same bucket with the same cache shape
    reqs = [InfillRequest(prefix="def add(a, b):\n    return", suffix="\n\nprint(add(1, 2))\n", hole_tokens=6,
                          max_new_tokens=6, sampling=cfg, token_healing=False),
            InfillRequest(prefix="class Point:\n    def", suffix="\n        self.x = x\n", hole_tokens=6,
                          max_new_tokens=6, sampling=cfg, token_healing=False)]
    for req in reqs:
        gc.collect()
        assert graphed.infill(req).text == plain.infill(req).text


def test_splice_in_place_of_the_same_length_copies_nothing():
    """A keystroke that leaves the canvas as long as it was (a character joining a token) keeps
    the tail where it is: no copy, no re-rotation, and the rows read as before."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("clone", "copy_", "mul", "cat"):
                self.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    cache = KVCache.empty()
    for _ in range(2):
        cache.append(torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8))
    before = [(k.clone(), v.clone()) for k, v in cache]
    with Copies() as seen:
        splice_in_place(cache, 12, head=5, tail=6, theta=10000.0)
    assert seen.ops == [] and cache.length == 12
    for (k, v), (k0, v0) in zip(cache, before):
        assert torch.equal(k[:, :, :5], k0[:, :, :5]) and torch.equal(k[:, :, 6:], k0[:, :, 6:])
        assert torch.equal(v[:, :, 6:], v0[:, :, 6:])
    with Copies() as seen:  # one token longer: the tail moves and its keys are re-rotated
        splice_in_place(cache, 13, head=5, tail=6, theta=10000.0)
    assert seen.ops


@pytest.mark.parametrize("new_length,head,tail", [(15, 5, 4), (10, 3, 6), (12, 6, 6), (300, 4, 8)])
def test_splice_in_place_equals_the_copying_splice(new_length, head, tail):
    from engine.kv_cache import splice_in_place

    g = torch.Generator().manual_seed(0)
    make = lambda: [_rotated(torch.randn(1, 2, 12, 8, generator=g), 0) for _ in range(2)]  # noqa: E731
    keys, values = make(), make()
    want = splice(KVCache(keys, values), new_length, head, tail, 10000.0)
    cache = KVCache([k.clone() for k in keys], [v.clone() for v in values])
    epoch = cache.epoch
    got = splice_in_place(cache, new_length, head, tail, 10000.0)
    assert got is cache and cache.length == new_length and cache.epoch == epoch + 1
    for (gk, gv), (wk, wv) in zip(got, want):
        assert gk.shape == wk.shape
        for lo, hi in ((0, head), (new_length - tail, new_length)):  # the rows in between are the step's
            torch.testing.assert_close(gk[:, :, lo:hi], wk[:, :, lo:hi], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(gv[:, :, lo:hi], wv[:, :, lo:hi])
    again = splice_in_place(cache, new_length + 3, head, tail, 10000.0)  # typing on: grows within its storage
    assert again.storage[0][0].shape[2] >= new_length + 3 and again.keys[0].shape[2] == new_length + 3
