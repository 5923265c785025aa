"""The int8 model kept on disk (`engine.int8_cache`): a load from the file computes exactly what the
quantized model did, and a file that does not fit is refused, never half-used. The engine's use
of it (adapter checkpoints, a corrupt file) is in `test_pretrained.py`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import int8_cache
from engine.config import ModelArgs
from engine.model import Block, Transformer
from engine.quantize import Int8Linear, ShortlistHead, _quantize_block, int8_available, quantize_int8

pytestmark = pytest.mark.skipif(not int8_available(), reason="this torch build has no fbgemm int8 linear")

ARGS = ModelArgs(family="llama", vocab_size=5000, dim=64, n_layers=3, n_heads=4, n_kv_heads=2,
                 intermediate_size=96, max_positions=128, qkv_bias=True, causal_layers=2)


def _quantized(seed: int = 0) -> tuple[Transformer, nn.ModuleList]:
    torch.manual_seed(seed)
    model = Transformer(ARGS).eval()
    with torch.no_grad():  # norms away from 1, so a lost norm weight would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    quantize_int8(model)
    base = nn.ModuleList(Block(ARGS).eval() for _ in range(1))
    for blk in base:
        _quantize_block(blk)
    return model, base


def test_a_loaded_model_computes_exactly_what_the_saved_one_did(tmp_path):
    model, base = _quantized()
    assert isinstance(model.lm_head, ShortlistHead) and model.tok_emb is model.lm_head.rows
    path = tmp_path / "int8-x.safetensors"
    int8_cache.save(path, model, base)
    loaded, loaded_base = int8_cache.load(path, ARGS)
    assert isinstance(loaded.layers[0].fused_qkv, Int8Linear) and not hasattr(loaded.layers[0], "wq")
    assert loaded.tok_emb is loaded.lm_head.rows  # tied again: one table
    # nothing kept is a view of the file's map (which would keep all of it resident)
    import gc
    import os

    gc.collect()
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            assert path.name not in maps.read()
    assert loaded.layers[1].fused_qkv.bias is not None
    ids = torch.randint(3, ARGS.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want_h, want_cache = model.prefill(ids)
        got_h, got_cache = loaded.prefill(ids)
        assert torch.equal(model.logits(want_h), loaded.logits(got_h))
        rows = torch.tensor([27, 28, 29])
        assert torch.equal(model.step(ids[:, rows], rows, want_cache), loaded.step(ids[:, rows], rows, got_cache))
        from kernels.rope import rope_tables

        x = torch.randn(1, 30, ARGS.dim, generator=torch.Generator().manual_seed(2))
        cos, sin = rope_tables(ARGS.head_dim, torch.arange(30), ARGS.rope_theta)
        for a, b in zip(base, loaded_base):
            assert torch.equal(a.qkv(x, cos, sin)[0], b.qkv(x, cos, sin)[0])
            o = torch.randn(1, ARGS.n_heads, 30, ARGS.head_dim)
            assert torch.equal(a.finish(x, o), b.finish(x, o))
    # without the base's layers the file holds none
    int8_cache.save(path, model, None)
    assert int8_cache.load(path, ARGS)[1] is None


def test_a_file_that_does_not_fit_is_refused(tmp_path):
    model, _ = _quantized()
    path = tmp_path / "int8-x.safetensors"
    int8_cache.save(path, model, None)
    from dataclasses import replace

    with pytest.raises((ValueError, KeyError, RuntimeError)):
        int8_cache.load(path, replace(ARGS, n_layers=4))  # a layer the file does not hold
    with pytest.raises((ValueError, RuntimeError)):
        int8_cache.load(path, replace(ARGS, vocab_size=6000))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # cut short
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError):
        int8_cache.load(path, ARGS)
    # a float model has nothing to keep
    with pytest.raises(ValueError, match="not quantized"):
        int8_cache.save(tmp_path / "f.safetensors", Transformer(ARGS), None)


def test_keys_follow_every_input_and_old_files_are_pruned(tmp_path):
    import os
    import time

    weights = tmp_path / "assembled"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"w" * 10)
    base_file = weights / "base_layers.safetensors"
    base_file.write_bytes(b"b" * 10)
    calib = [torch.tensor([[1, 2, 3]])]
    k = int8_cache.cache_key(weights, calib, base_file)
    assert k == int8_cache.cache_key(weights, calib, base_file)
    assert k != int8_cache.cache_key(weights, calib, None)
    assert k != int8_cache.cache_key(weights, [torch.tensor([[1, 2, 4]])], base_file)
    (weights / f"{int8_cache.PREFIX}{k}.safetensors").write_bytes(b"x")  # its own files do not count
    assert k == int8_cache.cache_key(weights, calib, base_file)
    (weights / f"{int8_cache.PREFIX}{k}.safetensors").unlink()
    (weights / "model.safetensors").write_bytes(b"w" * 11)  # new weights
    assert k != int8_cache.cache_key(weights, calib, base_file)
    now = time.time()
    files = []
    for i in range(4):
        f = weights / f"{int8_cache.PREFIX}{i}.safetensors"
        f.write_bytes(b"x")
        os.utime(f, (now - 100 * (4 - i), now - 100 * (4 - i)))
        files.append(f)
    int8_cache.touch_and_prune(files[0], keep=2)  # used now: kept with the newest other
    left = sorted(p.name for p in weights.glob(f"{int8_cache.PREFIX}*"))
    assert left == [files[0].name, files[3].name]
    assert (weights / "model.safetensors").is_file() and base_file.is_file()
