"""`InfillRequest.avoid`: a hole may not start by copying a given line (the Fill holes retry)."""

from __future__ import annotations

import torch

from engine.healing import Healer
from engine.types import SamplingConfig
from tests.engine.test_end_mass import Scripted
from tests.engine.test_generate import A, _run

CFG = dict(block=1, nonempty=False, eos_frontier=False)
# 10 is whitespace only; 4 begins the line to avoid (`y = 1`), 6 does not
TEXTS = ["<m>", "<e>", "<b>", "x", "y", "z", "a", "\n", ")", "w", "  "] + ["?"] * (A.vocab_size - 11)
BLANK = torch.tensor([t.strip() == "" and not t.startswith("<") for t in TEXTS])


def indent_then_copy(p: int) -> dict[int, float]:
    """Slot 2: indentation; slot 3: the copied line's first token, else 6; slot 4: 4 again; then EOS."""
    if p == 2:
        return {10: 0.6, 4: 0.3, 6: 0.1}
    if p == 3:
        return {4: 0.7, 6: 0.2, A.eos_id: 0.1}
    if p == 4:
        return {4: 0.8, A.eos_id: 0.2}
    return {A.eos_id: 1.0}


def _fills(avoid=None, **kw):
    return _run(Scripted(indent_then_copy), [[3], [9]], SamplingConfig(**CFG), hole_tokens=6, max_new_tokens=6,
                blank_ids=BLANK, avoid=avoid, **kw).fills


def test_a_hole_holding_only_whitespace_does_not_take_the_avoided_lines_start():
    ban = torch.zeros(A.vocab_size, dtype=torch.bool)
    ban[4] = True
    assert _fills() == [[10, 4, 4]]
    # barred while the hole is blank (after the indentation too); once it holds code, allowed
    assert _fills([ban]) == [[10, 6, 4]]
    assert _fills([None]) == [[10, 4, 4]]
    # a ban that would leave a row nothing lets go of that row
    everything = torch.ones(A.vocab_size, dtype=torch.bool)
    assert _fills([everything]) == [[10, 4, 4]]


def test_the_healer_names_every_token_that_begins_the_lines_code():
    h = Healer(["<e>", "if", " if", "        if", "i", "item", " x", "\n    if", "  ", "if_"], 10, special=[0])
    got = h.starting("        if item.quantity <= 0:")
    assert torch.nonzero(got).flatten().tolist() == [1, 2, 3, 4, 7]
    assert h.starting("   \n") is None
