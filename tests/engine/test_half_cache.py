"""Keys/values kept in half precision (`Transformer.cache_dtype`, on for the int8 CPU engine):
attention widens what it reads, steps write into the cache as it is, the base's reading keeps
its cache the same way, speculation stays the one-row decode, and a session's cache stays half
across keystrokes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine import Engine, InfillRequest
from engine.checkpoint import load_model, load_tokenizer
from engine.generate import generate
from engine.reuse import Session
from engine.types import SamplingConfig
from kernels.attention import attention_ref, grouped_sdpa

CFG = SamplingConfig(block=1, lazy_rows=True, eos_fill=False, eos_frontier=False, nonempty=False)


def test_grouped_attention_reads_half_keys_in_the_queries_dtype():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 6, 2, 16, generator=g)
    k, v = torch.randn(1, 2, 40, 16, generator=g), torch.randn(1, 2, 40, 16, generator=g)
    got = grouped_sdpa(q, k.half(), v.half())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, attention_ref(q, k.half().float(), v.half().float()), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, attention_ref(q, k, v), atol=3e-3, rtol=3e-3)  # fp16 rounding only


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from engine.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("half"), family="dream", causal_layers=1, seed=3)
    model, _ = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    segs = [tok.encode("def area(w, h):\n    return "), tok.encode("\n\nprint(area(2, 3))\n")]
    return model, segs


def test_a_half_cache_step_is_the_float_step_within_rounding(mixed):
    model, segs = mixed
    ids = torch.tensor([[2, *segs[0], 0, 0, 0, *segs[1]]])
    rows = torch.tensor([len(segs[0]) + 1, len(segs[0]) + 2])
    out = {}
    try:
        for dt in (None, torch.float16):
            model.cache_dtype = dt
            with torch.no_grad():
                _, cache = model.prefill(ids)
                assert cache.dtype == (dt or torch.float32)
                out[dt] = model.step(torch.tensor([[17, 23]]), rows, cache)
                assert cache.dtype == (dt or torch.float32)  # the step wrote into it as it is
    finally:
        model.cache_dtype = None
    torch.testing.assert_close(out[torch.float16], out[None], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("draft", [0, 4])
def test_decoding_on_a_half_cache_keeps_speculation_exact(mixed, draft):
    """With the cache in half precision, speculative decoding still gives the one-row decode's
    fill (the rows a wrong draft wrote are put back bit for bit), and the session's cache stays
    half through growth rounds."""
    model, segs = mixed
    model.cache_dtype = torch.float16
    try:
        lazy = generate(model, segs, replace(CFG, grow_tokens=4), True, hole_tokens=4, max_new_tokens=12)
        session = Session()
        spec = generate(model, segs, replace(CFG, draft=draft, grow_tokens=4), True, hole_tokens=4,
                        max_new_tokens=12, session=session)
    finally:
        model.cache_dtype = None
    assert spec.fills == lazy.fills and spec.fills[0]
    assert session.cache.dtype == torch.float16


def test_the_int8_engine_keeps_half_caches_unless_told_not_to(tiny_ckpt, monkeypatch):
    monkeypatch.delenv("DLSP_HALF_CACHE", raising=False)
    eng = Engine.from_pretrained(tiny_ckpt, device="cpu", int8=True)
    assert eng.model.cache_dtype == torch.float16
    req = dict(prefix="def f(x):\n    return ", suffix="\n", hole_tokens=4, max_new_tokens=4, session="a")
    first = eng.infill(InfillRequest(**req))
    assert eng._sessions["a"].cache.dtype == torch.float16
    again = eng.infill(InfillRequest(**req))  # the next keystroke reuses the half cache
    assert again.text == first.text and eng._sessions["a"].cache.dtype == torch.float16
    assert Engine.from_pretrained(tiny_ckpt, device="cpu", int8=False).model.cache_dtype is None
    monkeypatch.setenv("DLSP_HALF_CACHE", "0")
    assert Engine.from_pretrained(tiny_ckpt, device="cpu", int8=True).model.cache_dtype is None


def test_the_bases_reading_keeps_its_cache_half_too(mixed):
    """The base's upper layers (`engine.expert`) keep their keys/values in the model's cache dtype,
    and what they read matches a float cache's reading within rounding."""
    from engine.expert import build_base_reading

    model, segs = mixed
    torch.manual_seed(7)
    upper = {k: v.clone().normal_(1.0, 0.1) if v.dim() == 1 else v.clone().normal_(0.0, 0.2)
             for k, v in model.state_dict().items() if k.startswith("layers.1.")}
    reading = build_base_reading(model, upper)
    cfg = replace(CFG, base_weight=1.0, draft=4)
    out = {}
    try:
        for dt in (None, torch.float16):
            model.cache_dtype = dt
            session = Session()
            out[dt] = generate(model, segs, cfg, True, hole_tokens=4, max_new_tokens=8, session=session, base=reading)
            assert session.base.cache.dtype == (dt or torch.float32)
            assert session.cache.dtype == (dt or torch.float32)
    finally:
        model.cache_dtype = None
    assert out[None].fills[0] and out[torch.float16].fills[0]
