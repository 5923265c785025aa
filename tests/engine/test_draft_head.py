"""The learned drafter (`engine.draft_head`): its chain, its file, where the decode feeds it from
(the base's hidden state at the row before the frontier), and its training (`engine.training.
draft_head`). Drafts only propose: the fill is the one-row decode's."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import speculate
from engine.draft_head import DRAFT_HEAD_FILE, DraftHead, load_draft_head
from engine.expert import build_base_reading
from engine.generate import generate
from engine.gguf_import import sha256_file
from engine.training import draft_head as training
from engine.types import SamplingConfig

CFG = SamplingConfig(block=1, lazy_rows=True, eos_fill=False, eos_frontier=False, nonempty=False, base_weight=1.0)


def _head(dim=8, hidden=16, seed=0):
    torch.manual_seed(seed)
    head = DraftHead(dim, hidden)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0.0, 0.5)
    return head.eval()


def test_the_chain_feeds_its_own_guesses_back():
    """Each guess is the LM head's argmax of the predicted feature, which is the next input with
    the guess's embedding: the same as the step-by-step reference; `n` caps it."""
    head = _head()
    emb = torch.randn(20, 8)
    embed = lambda ids: emb[ids]  # noqa: E731
    logits = lambda f: f @ emb.T  # noqa: E731
    f0 = torch.randn(1, 8)
    got = head.chain(f0, 3, 5, embed, logits)
    want, f, tok = [], f0, 3
    with torch.no_grad():
        for _ in range(5):
            f = head(f, emb[tok][None])
            tok = int((f @ emb.T).argmax())
            want.append(tok)
    assert got == want
    assert head.chain(f0, 3, 2, embed, logits) == want[:2]
    assert head.chain(f0, 3, 0, embed, logits) == []


def test_the_chain_stops_at_the_mask_and_at_an_unlikely_guess():
    head = _head()
    emb = torch.randn(20, 8)
    embed = lambda ids: emb[ids]  # noqa: E731
    calls = []

    def mask_second(f):
        calls.append(1)
        z = torch.zeros(1, 20)
        z[0, 0 if len(calls) == 2 else 5] = 10.0  # id 0 is the mask at the second guess
        return z

    assert head.chain(torch.randn(1, 8), 3, 6, embed, mask_second, mask_id=0) == [5]
    flat = lambda f: torch.zeros(1, 20)  # noqa: E731 - every id at 1/20
    assert head.chain(torch.randn(1, 8), 3, 6, embed, flat, min_prob=0.1) == []
    assert len(head.chain(torch.randn(1, 8), 3, 6, embed, flat, min_prob=0.01)) == 6


def _ckpt(tmp_path, head):
    (tmp_path / "tokenizer.json").write_text('{"model": "tiny"}', encoding="utf-8")
    head.save(tmp_path / DRAFT_HEAD_FILE, sha256_file(tmp_path / "tokenizer.json"))
    return tmp_path


def test_shipped_beside_its_tokenizer_and_checked_against_it(tmp_path, caplog):
    head = _head()
    ckpt = _ckpt(tmp_path, head)
    loaded = load_draft_head(ckpt, 8)
    x, e = torch.randn(3, 8), torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, e), head(x, e))
    assert not loaded.training
    assert load_draft_head(tmp_path / "nowhere", 8) is None  # no head: decoding without it, silently
    with caplog.at_level(logging.WARNING, logger="engine.draft_head"):
        assert load_draft_head(ckpt, 16) is None
    assert "width 8" in caplog.text
    (ckpt / "tokenizer.json").write_text('{"model": "another"}', encoding="utf-8")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.draft_head"):
        assert load_draft_head(ckpt, 8) is None
    assert "another tokenizer" in caplog.text
    (ckpt / DRAFT_HEAD_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.draft_head"):
        assert load_draft_head(ckpt, 8) is None
    assert "unreadable draft head" in caplog.text


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from engine.testing import tiny_adapted_pair

    model, base, upper, tok = tiny_adapted_pair(tmp_path_factory.mktemp("pair"), seed=7)
    segs = [tok.encode("def area(w, h):\n    return "), tok.encode("\n\nprint(area(2, 3))\n")]
    return model, base, upper, segs


class _Spy(DraftHead):
    """A head that records what the decode feeds it and drafts from a known token sequence: the
    position is found by matching the feature to the base's own hidden states."""

    def __init__(self, hidden: torch.Tensor, seq: list[int], right: bool) -> None:
        super().__init__(hidden.shape[1], 4)
        self.h, self.seq, self.right, self.calls = hidden, seq, right, []

    def chain(self, feature, token, n, embed, logits, min_prob=0.0, mask_id=None):
        d = (self.h - feature).abs().amax(-1)  # (L,)
        row = int(d.argmin())
        self.calls.append((row, float(d[row]), token, n))
        return self.seq[row + 2:row + 2 + n] if self.right else []


def test_the_head_reads_the_row_before_the_frontier_and_keeps_the_fill(pair, monkeypatch):
    """Every call gets the base's final hidden state at the row before the frontier token and that
    token (checked against the base's own causal forward over the committed text); right drafts
    commit several tokens per forward, and the fill is the one-row decode's either way."""
    model, base, upper, segs = pair
    reading = build_base_reading(model, upper)
    monkeypatch.setattr(speculate, "lookup", lambda before, after, n: [])
    one = generate(model, segs, CFG, True, hole_tokens=8, max_new_tokens=8, base=reading)
    assert len(one.fills[0]) >= 4
    seq = [model.args.bos_id, *segs[0], *one.fills[0]]
    with torch.no_grad():
        hidden = base.prefill(torch.tensor([seq]), keep_cache=False)[0][0]  # (L, D)
    cfg = replace(CFG, draft=4)
    for right in (False, True):
        spy = _Spy(hidden, seq, right)
        out = generate(model, segs, cfg, True, hole_tokens=8, max_new_tokens=8, base=reading, draft_head=spy)
        assert out.fills == one.fills
        assert spy.calls
        for row, dist, token, n in spy.calls:
            assert dist < 1e-4 and token == seq[row + 1] and 1 <= n <= 4  # fewer at the hole's end
        rows = [row for row, *_ in spy.calls]
        assert rows == sorted(set(rows)) and rows[0] >= len(segs[0])  # each call after a commit
        if right:
            assert out.forward_passes < one.forward_passes
        else:
            assert out.forward_passes == one.forward_passes
    # no base reading: the head has nothing to read, and the decode is the one without it
    spy = _Spy(hidden, seq, True)
    plain = generate(model, segs, replace(cfg, base_weight=0.0), True, hole_tokens=8, max_new_tokens=8,
                     base=reading, draft_head=spy)
    assert not spy.calls and plain.fills[0]


def test_training_extracts_resumably_and_learns(pair, tmp_path):
    """Features of the base over a token stream, chunk by chunk (a chunk there is kept); a few
    hundred steps lower the loss and give a saved head the engine can load."""
    _, base, _, segs = pair
    stream = np.array((segs[0] + segs[1]) * 40, dtype=np.uint16)
    feats = tmp_path / "features"
    n = training.extract(base, stream, feats, 2000, seq_len=16, batch=2, log=lambda s: None)
    files = training.chunks(feats)
    assert n >= 2000 and len(files) == 2
    h = np.load(files[0])
    assert h.shape == (training.CHUNK_BATCHES * 2, 16, base.args.dim) and h.dtype == np.float16
    stamp = files[0].stat().st_mtime_ns
    training.extract(base, stream, feats, 2000, seq_len=16, batch=2, log=lambda s: None)
    assert files[0].stat().st_mtime_ns == stamp
    emb = base.tok_emb.weight.detach().float()
    head = DraftHead(base.args.dim, 32)
    held = next(training.batches(feats, 4, seed=1))
    before = training.chain_agreement(head, emb, *held)
    losses = training.train(head, emb, feats, steps=300, batch=4, lr=3e-3, log=lambda s: None)
    assert np.mean(losses[-20:]) < 0.7 * np.mean(losses[:20])
    after = training.chain_agreement(head, emb, *held)
    assert len(after) == 3 and after[0] > before[0] and all(0.0 <= a <= 1.0 for a in after)
    with pytest.raises(ValueError):
        training.train(head, emb, feats, log=lambda s: None)


def test_the_engine_loads_the_head_and_its_text_stays(pair, tmp_path, monkeypatch):
    """`Engine.from_pretrained` reads `draft_head.safetensors` beside the model; through
    `Engine.infill` with the base's reading on, the head drafts and the text is the one without it
    (fp32)."""
    from engine.engine import Engine
    from engine.testing import make_tiny_checkpoint
    from engine.types import InfillRequest

    model, _, upper, _ = pair
    ckpt = make_tiny_checkpoint(tmp_path / "m", family="dream", causal_layers=1, seed=3)
    assert Engine.from_pretrained(str(ckpt), device="cpu", int8=False).draft_head is None
    _head(model.args.dim, 16).save(ckpt / DRAFT_HEAD_FILE, sha256_file(ckpt / "tokenizer.json"))
    engine = Engine.from_pretrained(str(ckpt), device="cpu", int8=False)
    assert isinstance(engine.draft_head, DraftHead)
    engine.base = build_base_reading(engine.model, upper)
    calls = []
    orig = DraftHead.chain

    def chain(self, *args, **kwargs):
        calls.append(1)
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(DraftHead, "chain", chain)
    cfg = replace(engine.default_sampling, block=1, lazy_rows=True, draft=4, base_weight=1.0)
    req = InfillRequest(prefix="def area(w, h):\n    return ", suffix="\n", max_new_tokens=8, sampling=cfg,
                        single_line=True)
    with_head = engine.infill(req).text
    assert calls
    engine.draft_head = None
    assert engine.infill(req).text == with_head
