"""Steps that run fewer rows: the LM head on the `block` window only, and `lazy_rows` (cached
steps over the rows that changed and the window's logit rows)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.checkpoint import load_model, load_tokenizer
from engine.generate import generate
from engine.types import SamplingConfig


def test_lm_head_runs_on_the_block_window_only(tiny_ckpt):
    """With `block`, only the window's rows reach the LM head (per hole and step), and the fill is
    the one a left-to-right greedy decode of the same model gives (block=1: argmax at the first
    masked slot, a full forward per token, no cache)."""
    model, a = load_model(tiny_ckpt)
    tok = load_tokenizer(tiny_ckpt)
    segs = [tok.encode("def add(a, b):\n    return "), tok.encode("\n"), tok.encode("\n\nx = 1\n")]
    rows = []
    head = model.logits
    model.logits = lambda h: (rows.append(h.shape[0]), head(h))[1]
    cfg = SamplingConfig(block=1, eos_fill=False, eos_frontier=False, nonempty=False)
    out = generate(model, segs, replace(cfg, refresh_every=1), False, hole_tokens=6, max_new_tokens=6)
    assert rows and max(rows) <= 2  # one row per hole, two holes
    model.logits = head
    # the reference: one full forward per step, argmax of hole 0's then hole 1's first masked slot
    fills = [[a.mask_id] * 6, [a.mask_id] * 6]
    banned = {a.mask_id, a.bos_id}
    for _ in range(6):
        ids = [a.bos_id, *segs[0], *fills[0], *segs[1], *fills[1], *segs[2], a.eos_id]
        with torch.inference_mode():
            logits = model(torch.tensor([ids]))[0]
        starts = [1 + len(segs[0]), 1 + len(segs[0]) + 6 + len(segs[1])]
        for h in range(2):
            j = fills[h].index(a.mask_id)
            row = logits[starts[h] + j].clone()
            row[list(banned)] = float("-inf")
            fills[h][j] = int(row.argmax())
    ends = {a.eos_id, a.pad_id}
    expected = [f[:min([i for i, t in enumerate(f) if t in ends], default=len(f))] for f in fills]
    assert out.fills == expected


@pytest.mark.parametrize("shifted", [False, True])
def test_lazy_rows_are_exact_on_a_causal_model_and_run_one_row_per_step(tmp_path, shifted):
    """Every layer causal: a row sees only rows before it, none of which changed, so running just
    the committed row and the logit row gives the full steps' fill (block=1: one row per step)."""
    from engine.config import CONFIGS
    from engine.testing import make_tiny_checkpoint

    family = "dream" if shifted else "llada"
    ckpt = make_tiny_checkpoint(tmp_path / family, family=family, causal_layers=CONFIGS["tiny"]["n_layers"])
    model, a = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    segs = [tok.encode("def add(a, b):\n    return "), tok.encode("\n\nclass Point:\n")]
    cfg = SamplingConfig(block=1, eos_fill=False, eos_frontier=False, nonempty=False)
    full = generate(model, segs, cfg, shifted, hole_tokens=8, max_new_tokens=8)
    rows = []
    step = model.step
    model.step = lambda ids, index, cache, kv_len=None: (rows.append(len(index)), step(ids, index, cache, kv_len))[1]
    lazy = generate(model, segs, replace(cfg, lazy_rows=True), shifted, hole_tokens=8, max_new_tokens=8)
    assert lazy.fills == full.fills and lazy.forward_passes == full.forward_passes
    # shifted: the committed slot is the next slot's logit row (one row); unshifted: the
    # committed slot and the next masked slot (two)
    assert rows == [1 if shifted else 2] * (8 - 1)


def test_lazy_rows_run_fewer_rows_in_a_bidirectional_model(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    tok = load_tokenizer(tiny_ckpt)
    segs = [tok.encode("x = [1, 2, "), tok.encode("]\n")]
    rows = []
    step = model.step
    model.step = lambda ids, index, cache, kv_len=None: (rows.append(len(index)), step(ids, index, cache, kv_len))[1]
    cfg = SamplingConfig(block=2, min_per_step=2, eos_fill=False, eos_frontier=False, nonempty=False)
    out = generate(model, segs, replace(cfg, lazy_rows=True), False, hole_tokens=8, max_new_tokens=8)
    assert len(out.fills[0]) == 8 and out.tokens_per_step == [2, 2, 2, 2]
    assert rows == [4, 4, 4]  # the two just committed and the next window of two (a full step: all 8)
