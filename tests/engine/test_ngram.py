"""The trigram drafts table (`engine.ngram`): what it counts, how it is shipped and loaded, and
that its drafts change the forwards of a fill, never its text."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from engine import speculate
from engine.generate import generate
from engine.gguf_import import sha256_file
from engine.ngram import DRAFTS_FILE, NgramDrafts, load_drafts
from engine.types import SamplingConfig


def test_the_most_common_next_token_of_each_frequent_pair():
    stream = [1, 2, 3] * 6 + [1, 2, 4] * 2 + [5, 6, 7] * 2 + [8, 9, 1, 8, 9, 2, 8, 9, 3]
    table = NgramDrafts.count(np.array(stream), vocab=10, min_count=3, min_share=0.5)
    assert table.draft([0, 1, 2], 1) == [3]  # 6 of 8 times
    assert table.draft([1, 2], 3) == [3, 1, 2]  # chained through (2, 3) and (3, 1)
    assert table.draft([5, 6], 2) == []  # seen twice: below min_count
    assert table.draft([8, 9], 2) == []  # three next tokens, none with half of the pair's count
    assert table.draft([2], 2) == [] and table.draft([1, 2], 0) == []
    assert table.draft([1, 12], 2) == []  # an id past the counted vocabulary pairs with nothing
    loose = NgramDrafts.count(np.array(stream), vocab=10, min_count=1, min_share=0.0)
    assert loose.draft([5, 6], 1) == [7] and len(loose) > len(table)


def _ckpt(tmp_path, table):
    (tmp_path / "tokenizer.json").write_text('{"model": "tiny"}', encoding="utf-8")
    table.save(tmp_path / DRAFTS_FILE, sha256_file(tmp_path / "tokenizer.json"))
    return tmp_path


def test_shipped_beside_its_tokenizer_and_checked_against_it(tmp_path, caplog):
    table = NgramDrafts.count(np.array([1, 2, 3] * 10), vocab=10, min_count=1)
    ckpt = _ckpt(tmp_path, table)
    loaded = load_drafts(ckpt)
    assert loaded is not None and loaded.draft([1, 2], 4) == [3, 1, 2, 3]
    assert load_drafts(tmp_path / "nowhere") is None  # no table: decoding without it, silently
    (ckpt / "tokenizer.json").write_text('{"model": "another"}', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="engine.ngram"):
        assert load_drafts(ckpt) is None
    assert "another tokenizer" in caplog.text
    (ckpt / DRAFTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.ngram"):
        assert load_drafts(ckpt) is None
    assert "unreadable drafts table" in caplog.text


def test_the_embedded_model_ships_a_table_of_its_own_tokenizer():
    from engine.engine import DEFAULT_MODEL_DIR

    table = load_drafts(DEFAULT_MODEL_DIR)
    assert table is not None and len(table) > 100_000


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    from engine.checkpoint import load_model, load_tokenizer
    from engine.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("mixed"), family="dream", causal_layers=1, seed=3)
    model, _ = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    return model, [tok.encode("def area(w, h):\n    return "), tok.encode("\n\nprint(area(2, 3))\n")]


def test_table_drafts_cut_forwards_and_keep_the_fill(mixed, monkeypatch):
    """With the prompt lookup finding nothing, a table that knows the fill's trigrams drafts it:
    the same fill (fp32) in fewer forwards than the one-row decode; a table that knows nothing
    costs nothing."""
    model, segs = mixed
    cfg = SamplingConfig(block=1, lazy_rows=True, eos_fill=False, eos_frontier=False, nonempty=False)
    one = generate(model, segs, cfg, True, hole_tokens=12, max_new_tokens=12)
    monkeypatch.setattr(speculate, "lookup", lambda before, after, n, orders=(3, 2, 1): [])
    vocab = model.args.vocab_size
    knows = NgramDrafts.count(np.array((segs[0] + one.fills[0]) * 3), vocab, min_count=1, min_share=0.0)
    spec = generate(model, segs, replace(cfg, draft=4), True, hole_tokens=12, max_new_tokens=12, drafts=knows)
    assert spec.fills == one.fills
    assert spec.forward_passes < one.forward_passes
    empty = NgramDrafts.count(np.array([0, 0]), vocab)
    none = generate(model, segs, replace(cfg, draft=4), True, hole_tokens=12, max_new_tokens=12, drafts=empty)
    assert none.fills == one.fills and none.forward_passes == one.forward_passes
