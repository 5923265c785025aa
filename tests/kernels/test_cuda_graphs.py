"""Bucketing, padding and the padded step of `engine.cuda_graphs` (CPU); graph replay (GPU)."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint import load_model
from engine.cuda_graphs import Bucket, StepGraph, bucket_for, pad_cache, pad_rows, padded_step
from engine.kv_cache import KVCache


@pytest.mark.parametrize("n_rows,cache_len,want", [
    (1, 1, Bucket(8, 256)), (8, 255, Bucket(8, 256)), (9, 256, Bucket(16, 512)),
    (17, 300, Bucket(32, 512)), (64, 8000, Bucket(64, 8192)), (33, 511, Bucket(64, 512)),
])
def test_bucket_for(n_rows, cache_len, want):
    got = bucket_for(n_rows, cache_len)
    assert got == want
    assert got.rows >= n_rows and got.cache > cache_len and got.cache % 256 == 0 and got.scratch >= cache_len


def test_bucket_for_too_large_and_invalid():
    assert bucket_for(65, 10) is None
    assert bucket_for(100, 10, buckets=(128,), multiple=64) == Bucket(128, 64)
    with pytest.raises(ValueError):
        bucket_for(0, 10)


def test_pad_rows_and_cache():
    bucket = Bucket(8, 16)
    ids, index = torch.tensor([[5, 6, 7]]), torch.tensor([3, 4, 5])
    ids_p, index_p, valid = pad_rows(ids, index, bucket, pad_id=9)
    assert ids_p.tolist() == [[5, 6, 7] + [9] * 5]
    assert index_p.tolist() == [3, 4, 5] + [15] * 5
    assert valid.tolist() == [True] * 3 + [False] * 5
    with pytest.raises(ValueError):
        pad_rows(torch.zeros(1, 9, dtype=torch.long), torch.arange(9), bucket)
    cache = KVCache([torch.randn(1, 2, 10, 4)], [torch.randn(1, 2, 10, 4)])
    padded, kv_len = pad_cache(cache, bucket)
    assert padded[0][0].shape == (1, 2, 16, 4) and int(kv_len) == 10
    assert torch.equal(padded[0][1][:, :, :10], cache[0][1]) and not padded[0][0][:, :, 10:].any()
    with pytest.raises(ValueError):
        pad_cache(KVCache([torch.zeros(1, 1, 16, 4)], [torch.zeros(1, 1, 16, 4)]), bucket)


def _model(ckpt, device="cpu"):
    model, _ = load_model(ckpt, device=device, dtype=torch.float32)
    return model.eval()


def _step_inputs(model, device, length=40, hole=(12, 22)):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.args.vocab_size, (1, length), generator=g).to(device)
    ids[0, hole[0]:hole[1]] = model.args.mask_id
    index = torch.arange(hole[0] - 1, hole[1], device=device)  # hole plus its shift neighbour
    return ids, index


@pytest.mark.parametrize("use_triton", [False, True])
def test_padded_step_equals_model_step(tiny_ckpt, use_triton, request):
    if use_triton:
        request.getfixturevalue("triton_on_cpu")
    model = _model(tiny_ckpt)
    ids, index = _step_inputs(model, "cpu")
    with torch.inference_mode():
        _, cache = model.prefill(ids)
        bucket = bucket_for(len(index), ids.shape[1])
        padded, kv_len = pad_cache(cache, bucket)
        ids_p, index_p, valid = pad_rows(ids[:, index], index, bucket)
        want = model.step(ids[:, index], index, cache)
        got = padded_step(model, ids_p, index_p, padded, kv_len)
    torch.testing.assert_close(got[:, valid], want, atol=1e-5, rtol=1e-5)
    for (k, v), (kp, vp) in zip(cache, padded):  # real rows written back like Transformer.step does
        torch.testing.assert_close(kp[:, :, : ids.shape[1]], k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vp[:, :, : ids.shape[1]], v, atol=1e-5, rtol=1e-5)


def _check_step_graph(model, device, use_graph):
    ids, index = _step_inputs(model, device)
    with torch.inference_mode():
        _, cache = model.prefill(ids)
        graph = StepGraph(model, bucket_for(len(index), ids.shape[1]), use_graph=use_graph)
        graph.load_cache(cache)
        for trial in range(2):  # replay twice with different tokens in the hole
            if trial:
                ids[0, index[3:6]] = torch.tensor([5, 6, 7], device=device)
            want = model.step(ids[:, index], index, cache)
            got = graph(ids[:, index], index)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        shorter = index[:5]  # fewer rows in the same bucket
        torch.testing.assert_close(graph(ids[:, shorter], shorter), model.step(ids[:, shorter], shorter, cache),
                                   atol=1e-4, rtol=1e-4)


def test_step_graph_eager_on_cpu(tiny_dream_ckpt):
    _check_step_graph(_model(tiny_dream_ckpt), "cpu", use_graph=False)


def test_step_graph_needs_cuda_for_graphs(tiny_ckpt):
    model = _model(tiny_ckpt)
    with pytest.raises(ValueError):
        StepGraph(model, Bucket(8, 256), use_graph=True)


@pytest.mark.gpu
def test_step_graph_replay_on_cuda(tiny_dream_ckpt):
    _check_step_graph(_model(tiny_dream_ckpt, "cuda"), "cuda", use_graph=True)


@pytest.mark.parametrize("ckpt", ["tiny_ckpt", "tiny_dream_ckpt"])
def test_engine_through_step_graphs_matches_eager(ckpt, request):
    """The fast sampler's cached steps through the bucketed StepGraphs (eager padded steps on
    CPU) give the same text, forward passes and commits as the plain cached steps; a grown hole
    and a refresh load fresh caches into the graphs."""
    from engine import Engine
    from engine.types import InfillRequest, SamplingConfig

    path = request.getfixturevalue(ckpt)
    plain = Engine.from_pretrained(path, device="cpu")
    graphed = Engine(plain.model, plain.tokenizer, cuda_graphs=True)
    assert plain.graphs is None and graphed.graphs is not None
    for cfg in (SamplingConfig(threshold=0.5), SamplingConfig(threshold=0.99, refresh_every=3, grow_tokens=4)):
        req = InfillRequest(prefix="def add(a, b):\n    return", suffix="\n\nprint(add(1, 2))\n", hole_tokens=6,
                            max_new_tokens=14, sampling=cfg)
        a, b = plain.infill(req), graphed.infill(req)
        assert (a.text, a.forward_passes, a.tokens_per_step) == (b.text, b.forward_passes, b.tokens_per_step)
    assert graphed.graphs.captures >= 1
