"""Text-level Engine API: bad input is handled, clipping keeps the cursor's neighbourhood."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from engine import CheckpointError, Engine, InfillRequest, InvalidRequestError, SamplingConfig
from engine.engine import split_budget


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cpu")


def test_infill_reports_timings_and_counts(engine):
    res = engine.infill(InfillRequest(prefix="def f(x):\n    ", suffix="\n", hole_tokens=6, max_new_tokens=6))
    assert set(res.timings_ms) == {"tokenize", "prefill", "steps", "detokenize", "rerank", "total"}
    assert res.forward_passes >= 1 and sum(res.tokens_per_step) >= 1
    assert isinstance(res.text, str) and not res.cancelled


@pytest.mark.parametrize("prefix,suffix", [("", "x = 1\n"), ("x = ", ""), ("", "")])
def test_empty_prefix_or_suffix(engine, prefix, suffix):
    res = engine.infill(InfillRequest(prefix=prefix, suffix=suffix, hole_tokens=4, max_new_tokens=4))
    assert res.forward_passes >= 1


def test_long_context_is_clipped_from_the_cursor_outwards(engine):
    prefix = "".join(f"a{i} = {i}\n" for i in range(2000))
    suffix = "".join(f"b{i} = {i}\n" for i in range(2000))
    res = engine.infill(InfillRequest(prefix=prefix, suffix=suffix, hole_tokens=4, max_new_tokens=8))
    p, s = res.context_tokens
    assert p + s + 8 + 2 <= engine.args.max_positions
    assert p > s > 0  # the prefix gets the larger share


def test_max_context_tokens_is_respected(engine):
    res = engine.infill(InfillRequest(prefix="x = 1\n" * 200, suffix="y\n" * 200, hole_tokens=4,
                                      max_new_tokens=4, max_context_tokens=40))
    assert sum(res.context_tokens) <= 40


def test_non_utf8_text_is_accepted(engine):
    bad = b"x = '\xff\xfe'\n".decode("utf-8", "surrogateescape")
    res = engine.infill(InfillRequest(prefix=bad, suffix="\ud800", hole_tokens=4, max_new_tokens=4))
    assert res.forward_passes >= 1


def test_zero_budget_returns_empty(engine):
    res = engine.infill(InfillRequest(prefix="x", suffix="y", hole_tokens=0, max_new_tokens=0))
    assert res.texts == ("",) and res.forward_passes == 0


def test_invalid_settings_raise_clear_errors(engine):
    with pytest.raises(InvalidRequestError, match="sampler"):
        engine.infill(InfillRequest(prefix="x", sampling=SamplingConfig(sampler="magic")))
    with pytest.raises(InvalidRequestError, match="confidence"):
        engine.infill(InfillRequest(prefix="x", sampling=SamplingConfig(confidence="vibes")))
    with pytest.raises(InvalidRequestError, match=">= 0"):
        engine.infill(InfillRequest(prefix="x", max_new_tokens=-1))
    with pytest.raises(InvalidRequestError, match="min_per_step"):
        engine.infill(InfillRequest(prefix="x", sampling=SamplingConfig(min_per_step=0)))
    with pytest.raises(InvalidRequestError, match="factor"):
        engine.infill(InfillRequest(prefix="x", sampling=SamplingConfig(factor=1.0, confidence="neg_entropy")))
    with pytest.raises(InvalidRequestError, match="avoid"):
        engine.infill(InfillRequest(prefix="x", middles=("y",), avoid=("return x",)))  # two holes, one line


def test_avoid_runs_through_the_engine(engine):
    """`avoid` per hole: a blank entry bans nothing, so the fill is the plain one; a line is
    turned into its tokens' ban (`Healer.starting`) and the run still fills the hole."""
    req = InfillRequest(prefix="def f():\n    ", suffix="\n", hole_tokens=4, max_new_tokens=4)
    plain = engine.infill(req)
    assert engine.infill(InfillRequest(**{**req.__dict__, "avoid": ("",)})).texts == plain.texts
    first = plain.texts[0].strip()
    assert first  # the tiny model's own start, avoided: the fill no longer starts with its code
    other = engine.infill(InfillRequest(**{**req.__dict__, "avoid": (first,)})).texts[0].strip()
    assert not other.startswith(first[:1])


def test_several_holes(engine):
    res = engine.infill(InfillRequest(prefix="def f():\n    ", middles=("\n\ndef g():\n    ",), suffix="\n",
                                      hole_tokens=4, max_new_tokens=4))
    assert len(res.texts) == 2
    # one confidence per hole: a mean log-probability (<= 0) of what the decode committed there
    assert len(res.scores) == 2 and all(x is not None and x <= 0 for x in res.scores)
    assert res.score == res.scores[0] and 0 < res.confidence <= 1
    none = engine.infill(InfillRequest(prefix="x = ", suffix="\n", hole_tokens=4, max_new_tokens=0))
    assert none.scores == (None,) and none.score is None and none.confidence is None


def test_split_budget():
    assert split_budget(100, 100, 40) == (30, 10)
    assert split_budget(5, 100, 40) == (5, 35)
    assert split_budget(100, 2, 40) == (38, 2)
    assert split_budget(10, 10, -3) == (0, 0)


# ---- checkpoint errors name the file and what is wrong

def _copy(tiny_ckpt, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, d)
    return d


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine.from_pretrained(tmp_path / "nope")


@pytest.mark.parametrize("name,match", [("config.json", "config.json is missing"),
                                        ("tokenizer.json", "tokenizer.json is missing"),
                                        ("model.safetensors", "no model.safetensors")])
def test_missing_files(tiny_ckpt, tmp_path, name, match):
    d = _copy(tiny_ckpt, tmp_path)
    (d / name).unlink()
    with pytest.raises(CheckpointError, match=match) as err:
        Engine.from_pretrained(d)
    assert str(d) in str(err.value)


def test_corrupt_safetensors_header(tiny_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt safetensors") as err:
        Engine.from_pretrained(d)
    assert "model.safetensors" in str(err.value)


def test_wrong_shapes(tiny_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["mlp_hidden_size"] += 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        Engine.from_pretrained(d)


def test_unknown_family(tiny_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model family"):
        Engine.from_pretrained(d)


def test_bad_json_config(tiny_ckpt, tmp_path):
    d = _copy(tiny_ckpt, tmp_path)
    (d / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Engine.from_pretrained(d)


def test_sharded_checkpoint_with_index(tiny_ckpt, tmp_path):
    from safetensors.torch import load_file, save_file

    d = _copy(tiny_ckpt, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, str(d / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[half:]}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors").unlink()
    wm = {n: ("model-00001-of-00002.safetensors" if i < half else "model-00002-of-00002.safetensors")
          for i, n in enumerate(names)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    eng = Engine.from_pretrained(d)
    assert eng.info()["params"] > 0
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        Engine.from_pretrained(d)


def test_parse_sampling_specs():
    from engine.types import parse_sampling

    base = SamplingConfig(threshold=0.8)
    assert parse_sampling("naive", base) == SamplingConfig(sampler="naive", threshold=0.8)
    cfg = parse_sampling("fast:min_per_step=4, factor=1,steps=none,eos_fill=false", base)
    assert (cfg.min_per_step, cfg.factor, cfg.steps, cfg.eos_fill, cfg.threshold) == (4, 1.0, None, False, 0.8)
    for bad in ("fast:bogus=1", "fast:steps=x", "fast:threshold", "fast:sampler=naive"):
        with pytest.raises(ValueError, match="bad sampling spec"):
            parse_sampling(bad)


def test_single_line_fills_stop_at_the_first_line_break(engine, monkeypatch):
    nl = engine.tokenizer.newline_ids()
    assert len(nl) == engine.tokenizer.vocab_size and any(nl) and not all(nl)
    assert nl[engine.tokenizer.encode("\n")[0]] and not nl[engine.tokenizer.encode("x")[0]]
    assert len(engine.tokenizer.newline_ids(engine.tokenizer.vocab_size + 5)) == engine.tokenizer.vocab_size + 5
    req = InfillRequest(prefix="def f(x):\n    return x\n\ndef g(", suffix="\n", hole_tokens=8, max_new_tokens=24)
    free = engine.infill(req)
    one = engine.infill(replace(req, single_line=True))
    assert "\n" not in one.text
    assert one.forward_passes <= free.forward_passes
    # the random model writes no line break; pretend its favourite tokens hold one
    stops = torch.zeros(engine.args.vocab_size, dtype=torch.bool)
    stops[torch.tensor(engine.tokenizer.encode(free.text))] = True
    monkeypatch.setattr(engine, "_newlines", stops)
    cut = engine.infill(replace(req, single_line=True))
    assert cut.generated_tokens < free.generated_tokens and cut.forward_passes < free.forward_passes


def test_token_healing_constrains_the_first_slot_to_the_last_prefix_token(engine):
    ids = engine.tokenizer.encode("def f(x):\n    return x\n")
    text, first = engine.healer().first_slot(ids[-1], single_line=True)
    texts = engine.tokenizer.token_texts()
    assert text == texts[ids[-1]] and bool(first.allowed[ids[-1]])
    allowed = torch.nonzero(first.allowed).flatten().tolist()
    assert all(texts[i].startswith(text) for i in allowed)
    assert not any(first.allowed[i] for i in (engine.args.mask_id, engine.args.eos_id, engine.args.bos_id))
    for i in allowed:  # a line break counts only after the healed text
        assert bool(first.stop[i]) == ("\n" in texts[i][len(text):])
    assert engine.healer().first_slot(engine.args.eos_id, single_line=False) is None
    req = InfillRequest(prefix="def f(x):\n    ret", suffix="\n", hole_tokens=6, max_new_tokens=6)
    healed, plain = engine.infill(req), engine.infill(replace(req, token_healing=False))
    assert healed.context_tokens == plain.context_tokens  # the healed token still counts as context
    assert healed.forward_passes >= 1 and plain.forward_passes >= 1


def test_checkpoint_recommends_sampling_defaults(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["dlsp_sampling"] = {"min_per_step": 4, "threshold": 0.8, "sampler": "naive", "bogus": 1}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    eng = Engine.from_pretrained(ckpt)
    assert eng.default_sampling == SamplingConfig(min_per_step=4, threshold=0.8)  # unknown/sampler ignored
    assert Engine.from_pretrained(tiny_ckpt).default_sampling == SamplingConfig()


@pytest.mark.parametrize("single_line", [False, True])
def test_vectorized_healing_matches_the_vocabulary_loop(engine, single_line):
    from engine.healing import first_slot_ref

    texts, a = engine.tokenizer.token_texts(), engine.args
    healer = engine.healer()
    for last in range(len(texts)):
        got, want = healer.first_slot(last, single_line), first_slot_ref(texts, a.vocab_size, a.special_ids, last,
                                                                        single_line)
        assert (got is None) == (want is None), last
        if got is not None:
            assert got[0] == want[0] and torch.equal(got[1].allowed, want[1].allowed), last
            assert (got[1].stop is None) == (want[1].stop is None)
            if single_line:
                assert torch.equal(got[1].stop, want[1].stop), last


def test_engine_is_an_infill_backend(engine):
    from engine import InfillBackend

    assert isinstance(engine, InfillBackend)


def test_thread_policy_for_an_editor_beside_other_work(monkeypatch):
    from engine.runtime import configure_threads, default_threads

    assert [default_threads(c) for c in (1, 2, 3, 4, 16, 64)] == [1, 2, 2, 3, 8, 8]
    before = torch.get_num_threads()
    monkeypatch.setenv("DLSP_THREADS", "1")
    try:
        assert configure_threads() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_thread_tuner_prefers_the_faster_count_and_keeps_exploring():
    from engine.runtime import ThreadTuner

    t = ThreadTuner((1, 2), explore=4)
    assert [t.pick(), t.pick()] == [2, 2]  # nothing measured yet: the untried ones, most threads first
    t.record(2, 100.0)
    assert t.pick() == 1
    t.record(1, 300.0)
    picks = [t.pick() for _ in range(8)]
    assert picks.count(2) == 6 and picks.count(1) == 2
    for _ in range(10):
        t.record(1, 10.0)
    assert t.pick() == 1 or t.pick() == 1
    assert ThreadTuner.for_machine(1).choices == (1,) and ThreadTuner.for_machine(2).choices == (1, 2)


def test_thread_tuner_keeps_cold_and_warm_requests_apart():
    """Cheap warm steps measured on one count must not make it look faster for cold prefills."""
    from engine.runtime import ThreadTuner

    t = ThreadTuner((1, 2), explore=1000)
    t.record(2, 900.0, "cold")  # a prefill: ~1 s per forward, on 2 threads
    t.record(1, 1500.0, "cold")
    t.record(1, 30.0, "warm")  # steps: ~30 ms per forward
    t.record(2, 35.0, "warm")
    assert t.pick("cold") == 2 and t.pick("warm") == 1
    assert t.pick("other") == 2  # a kind never measured starts with the most threads
    t = ThreadTuner((1, 2), explore=2)
    t.record(1, 10.0, "warm"), t.record(2, 20.0, "warm"), t.record(1, 20.0, "cold"), t.record(2, 10.0, "cold")
    assert [t.pick("warm") for _ in range(8)].count(2) == 4  # warm: every 2nd tries the other
    assert [t.pick("cold") for _ in range(8)].count(1) == 1  # cold: every 8th


def test_engine_uses_the_tuner(engine):
    from engine.runtime import ThreadTuner

    before = torch.get_num_threads()
    engine.threads = ThreadTuner((1,))
    try:
        engine.infill(InfillRequest(prefix="x = ", suffix="\n", hole_tokens=3, max_new_tokens=3))
        engine.infill(InfillRequest(prefix="x = ", suffix="\n", hole_tokens=3, max_new_tokens=3, session="d"))
        engine.infill(InfillRequest(prefix="x = ", suffix="\n", hole_tokens=3, max_new_tokens=3, session="d"))
        assert 1 in engine.threads.ms["cold"] and 1 in engine.threads.ms["warm"]
    finally:
        engine.threads = None
        torch.set_num_threads(before)


def test_the_server_loader_builds_vocabulary_tables_before_the_first_request(tiny_ckpt):
    """Built lazily, the healing index and the line-break/blank masks held the GIL for a whole
    vocabulary decode inside the first request; the server's loader builds them at load."""
    from lsp_server.model_host import default_loader

    fresh = Engine.from_pretrained(tiny_ckpt, device="cpu")
    assert fresh._healer is None and fresh._newlines is None and fresh._blank is None
    loaded = default_loader(str(tiny_ckpt), "cpu")
    assert loaded._healer is not None and loaded._newlines is not None and loaded._blank is not None
    texts = loaded.tokenizer.token_texts()
    assert [bool(b) for b in loaded._blank[:len(texts)]] == [t != "" and t.strip() == "" for t in texts]


def test_loading_a_checkpoint_imports_neither_dynamo_nor_triton(tmp_path):
    """Module initialisers on the meta device route through torch._refs, whose first use imports
    torch._dynamo (and triton): ~140 MB resident. `skeleton` builds the model without them."""
    import subprocess
    import sys

    code = (f"import sys; from engine.testing import make_tiny_checkpoint; from engine import Engine; "
            f"e = Engine.from_pretrained(make_tiny_checkpoint({str(tmp_path)!r}), device='cpu'); "
            f"print('torch._dynamo' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]
