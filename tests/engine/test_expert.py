"""The base's reading of a fill (`engine.expert`, `SamplingConfig.base_weight`): the base's upper
layers on the adapted model's shared causal lower ones read exactly what the base itself reads,
at every commit, through prefills, lazy and speculative steps, growth rounds and session reuse."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from engine import generate as gen_mod
from engine.engine import Engine
from engine.expert import BaseReading, BaseRun, build_base_reading
from engine.generate import generate
from engine.quantize import Int8Linear
from engine.reuse import Session
from engine.sampling_checks import sampling_problem
from engine.types import InfillRequest, SamplingConfig

CFG = SamplingConfig(block=1, lazy_rows=True, nonempty=False, base_weight=1.0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A shifted tiny model with a causal lower layer (the adapted model's layout) and a fully
    causal "base" sharing that lower layer, with upper weights of its own."""
    from engine.testing import tiny_adapted_pair

    model, base, upper, tok = tiny_adapted_pair(tmp_path_factory.mktemp("mixed"), seed=7)
    segs = [tok.encode("def area(w, h):\n    return "), tok.encode("\n\nprint(area(2, 3))\n")]
    return model, base, upper, tok, segs


def _reference(base, tokens, ends, after):
    """The base's own log-probabilities after `tokens` (a full causal forward), ends as `after`."""
    with torch.no_grad():
        lp = F.log_softmax(base(torch.tensor([tokens]))[0, -1], -1)
    lp[ends] = lp[after].clone()
    return lp


def test_the_reading_is_the_base_itself(pair):
    """Prefill, then a step over the frontier and two drafted rows: each row's log-probabilities
    are the base's full causal forward over the same tokens."""
    model, base, upper, _, segs = pair
    a = model.args
    reading = build_base_reading(model, upper)
    prefix, suffix = segs
    canvas = [a.bos_id, *prefix, *[a.mask_id] * 6, *suffix, a.eos_id]
    start = 1 + len(prefix)
    ends = torch.tensor([a.eos_id])
    run = reading.start(None, canvas, (start, start + 6), 6, suffix[0])
    model.tap = reading.first
    try:
        with torch.no_grad():
            _, cache = model.prefill(torch.tensor([canvas]))
            run.feed(list(range(len(canvas))), canvas)
            torch.testing.assert_close(run.logprobs(start - 1, ends), _reference(base, canvas[:start], ends, suffix[0]),
                                       atol=1e-4, rtol=1e-4)
            drafts = [17, 42]
            rows = [start - 1, start, start + 1]
            fed = [canvas[start - 1], *drafts]
            model.step(torch.tensor([fed]), torch.tensor(rows), cache)
            run.feed(rows, fed)
    finally:
        model.tap = model.tapped = None
    for j, p in enumerate(rows):
        ref = _reference(base, canvas[:start] + drafts[:j], ends, suffix[0])
        torch.testing.assert_close(run.logprobs(p, ends), ref, atol=1e-4, rtol=1e-4)
    assert run.logprobs(start + 2, ends) is None  # a row the last forward did not run


@pytest.mark.parametrize("draft", [0, 4])
def test_every_commit_reads_the_base_exactly(pair, monkeypatch, draft):
    """Through a whole decode (lazy one-row steps or speculative ones, growth rounds) and a second
    request of the same session after an edit, each mixed commit used the base's own reading."""
    model, base, upper, _, segs = pair
    a = model.args
    reading = build_base_reading(model, upper)
    cfg = replace(CFG, draft=draft, grow_tokens=4)
    session = Session()
    seen_all = []
    for prefix in (segs[0], segs[0][:-2] + segs[0][-1:]):  # the second: a token deleted near the end
        orig = gen_mod._Run.commit_once
        log = []

        def commit_once(self, slots, _orig=orig, _log=log):
            _log.append(self.canvas[0].tolist())
            return _orig(self, slots)

        monkeypatch.setattr(gen_mod._Run, "commit_once", commit_once)
        lps = []
        orig_lp = BaseRun.logprobs

        def logprobs(self, position, ends, never=None, logits=None, _orig=orig_lp, _lps=lps, _log=log):
            lp = _orig(self, position, ends, never, logits)
            _lps.append((position, _log[-1], lp))
            return lp

        monkeypatch.setattr(BaseRun, "logprobs", logprobs)
        heads = []
        hook = model.lm_head.register_forward_hook(lambda mod, args, out, _heads=heads: _heads.append(args[0].shape[0]))
        try:
            out = generate(model, [prefix, segs[1]], cfg, True, hole_tokens=4, max_new_tokens=12,
                           session=session, base=reading)
        finally:
            hook.remove()
        monkeypatch.undo()
        assert out.fills[0]
        # the base's row rides in the model's head call: one call per commit, of 2 rows
        assert len(heads) == len(log) and heads.count(2) == len(lps)
        seen_all.append(lps)
        ends = torch.tensor(sorted({a.eos_id, a.pad_id}))
        assert lps and all(lp is not None for _, _, lp in lps)
        for position, canvas, lp in lps:
            ref = _reference(base, canvas[:position + 1], ends, segs[1][0])
            torch.testing.assert_close(lp, ref, atol=1e-4, rtol=1e-4)
    assert model.tap is None and model.tapped is None  # nothing left hooked on the shared model
    assert session.base is not None and len(session.base.fed) > len(segs[0])


def test_a_prefill_checking_right_opening_drafts_reads_the_base_exactly(pair, monkeypatch):
    """The prefill checks the opening drafts (`draft_opening`) and the base reads the drafted rows
    with the canvas: with drafts that hold, the commits read from those rows use the base's own
    reading of the fill, and the prefill commits several tokens."""
    from engine import speculate

    model, base, upper, _, segs = pair
    a = model.args
    reading = build_base_reading(model, upper)
    cfg = replace(CFG, draft=4)
    one = generate(model, segs, replace(cfg, draft=0), True, hole_tokens=8, max_new_tokens=8, base=reading)
    truth = dict(enumerate(one.fills[0], 1 + len(segs[0])))
    monkeypatch.setattr(speculate.Speculator, "_first_draft", lambda self, before, after, i: truth[len(before)])
    monkeypatch.setattr(speculate.Speculator, "_guess", lambda self, before, after, n: [
        truth.get(p, a.eos_id) for p in range(len(before), len(before) + n)])
    lps = []
    orig = BaseRun.logprobs

    def logprobs(self, position, ends, never=None, logits=None):
        lp = orig(self, position, ends, never, logits)
        lps.append((position, lp))
        return lp

    monkeypatch.setattr(BaseRun, "logprobs", logprobs)
    out = generate(model, segs, cfg, True, hole_tokens=8, max_new_tokens=8, base=reading)
    assert out.fills == one.fills
    assert out.forward_passes < one.forward_passes and out.forward_passes <= 2
    canvas = [a.bos_id, *segs[0], *one.fills[0]]
    ends = torch.tensor(sorted({a.eos_id, a.pad_id}))
    assert len(lps) >= 5
    for position, lp in lps:
        torch.testing.assert_close(lp, _reference(base, canvas[:position + 1], ends, segs[1][0]), atol=1e-4, rtol=1e-4)


def test_weight_zero_is_the_model_alone(pair):
    model, _, upper, _, segs = pair
    reading = build_base_reading(model, upper)
    plain = generate(model, segs, replace(CFG, base_weight=0.0), True, hole_tokens=8, max_new_tokens=8)
    off = generate(model, segs, replace(CFG, base_weight=0.0), True, hole_tokens=8, max_new_tokens=8, base=reading)
    mixed = generate(model, segs, replace(CFG, base_weight=4.0), True, hole_tokens=8, max_new_tokens=8, base=reading)
    assert off.fills == plain.fills
    assert mixed.fills != plain.fills  # the base's reading decides something here
    # not for several holes: those decode without it (no error)
    two = generate(model, [segs[0], [5, 6], segs[1]], replace(CFG, base_weight=4.0), True, hole_tokens=4,
                   max_new_tokens=4, base=reading)
    assert len(two.fills) == 2


def test_a_gap_turns_the_reading_off_never_guesses(pair):
    model, _, upper, _, segs = pair
    a = model.args
    reading = build_base_reading(model, upper)
    canvas = [a.bos_id, *segs[0], *[a.mask_id] * 4, *segs[1], a.eos_id]
    start = 1 + len(segs[0])
    run = reading.start(None, canvas, (start, start + 4), 4, None)
    model.tap = reading.first
    try:
        with torch.no_grad():
            _, cache = model.prefill(torch.tensor([canvas]))
            run.feed(list(range(start - 3)), canvas[:start - 3])  # the prefix but its last 3 rows
            model.step(torch.tensor([[canvas[start - 1]]]), torch.tensor([start - 1]), cache)
            run.feed([start - 1], [canvas[start - 1]])  # rows start-3, start-2 were never read
    finally:
        model.tap = model.tapped = None
    assert run.broken and run.logprobs(start - 1, torch.tensor([a.eos_id])) is None


def test_bad_base_layers_are_refused(pair):
    model, _, upper, _, _ = pair
    with pytest.raises(ValueError, match="do not fit"):
        build_base_reading(model, {})
    bad = {k: v[..., :-1] if v.dim() == 2 else v for k, v in upper.items()}
    with pytest.raises(ValueError, match="do not fit"):
        build_base_reading(model, bad)
    with pytest.raises(ValueError, match="causal"):  # upper layers over a bidirectional one
        BaseReading(model, torch.nn.ModuleList([model.layers[0], model.layers[1]]))


def test_int8_reading_is_calibrated_and_close(pair):
    model, base, upper, tok, segs = pair
    a = model.args
    calib = [torch.tensor([[a.bos_id, *tok.encode("def f(x):\n    return x + 1\n" * 8)[:64]]])]
    q = build_base_reading(model, upper, calib)
    f = build_base_reading(model, upper)
    assert isinstance(q.layers[0].fused_qkv, Int8Linear)
    canvas = [a.bos_id, *segs[0], *[a.mask_id] * 4, *segs[1], a.eos_id]
    start = 1 + len(segs[0])
    ends = torch.tensor([a.eos_id])
    out = []
    for reading in (q, f):
        run = reading.start(None, canvas, (start, start + 4), 4, segs[1][0])
        model.tap = reading.first
        try:
            with torch.no_grad():
                model.prefill(torch.tensor([canvas]))
                run.feed(list(range(len(canvas))), canvas)
        finally:
            model.tap = model.tapped = None
        out.append(run.logprobs(start - 1, ends).exp())
    assert (out[0] - out[1]).abs().sum() < 0.2  # total variation of int8 against float, small


def test_engine_mixes_the_base_in_across_keystrokes(pair, monkeypatch):
    """Single-line requests read the base (a session's reused caches read as a fresh run);
    multi-line ones only with `base_multiline`."""
    model, _, upper, tok, _ = pair
    engine = Engine(model, tok, default_sampling=CFG)
    engine.base = build_base_reading(model, upper)
    runs = []
    orig = BaseReading.start

    def start(self, *args, **kwargs):
        runs.append(orig(self, *args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(BaseReading, "start", start)
    prefix, suffix = "def area(w, h):\n    return w", "\n\nprint(area(2, 3))\n"

    def ask(text, session=None, single=True):
        return engine.infill(InfillRequest(prefix=text, suffix=suffix, session=session, max_new_tokens=6,
                                           single_line=single))

    ask(prefix, "doc")
    again = ask(prefix + " ", "doc")
    assert len(runs) == 2 and runs[1].forwards and not runs[1].broken
    alone = ask(prefix + " ")
    assert again.text == alone.text  # the reused caches read as a fresh run
    assert engine._sessions["doc"].base is not None
    ask(prefix, "other")  # "doc" goes idle: its base keys/values are let go (its own cache stays)
    assert engine._sessions["doc"].base is None and engine._sessions["other"].base is not None
    runs.pop()
    ask(prefix, single=False)
    assert len(runs) == 3  # the multi-line request never started one
    engine.default_sampling = replace(CFG, base_multiline=True)
    ask(prefix, single=False)
    assert len(runs) == 4 and runs[3].forwards  # unless `base_multiline` says so
    runs.pop()
    engine.default_sampling = replace(CFG, base_weight=0.0)
    ask(prefix)
    assert len(runs) == 3
    assert sampling_problem(replace(CFG, base_weight=-1.0)) == "base_weight must be in 0..16 (0 = off)"
    assert sampling_problem(replace(CFG, base_weight=float("nan"))) is not None


def test_a_half_precision_model_reads_in_its_own_dtype(pair):
    """GPU models run in bf16: the base's layers and keys/values take the model's dtype (a float32
    cache beside bf16 queries would fail in attention)."""
    import copy

    model, _, upper, _, segs = pair
    half = copy.deepcopy(model).to(torch.bfloat16)
    reading = build_base_reading(half, upper)
    assert next(reading.layers.parameters()).dtype == torch.bfloat16
    out = generate(half, segs, CFG, True, hole_tokens=6, max_new_tokens=6, base=reading)
    assert out.fills[0]
