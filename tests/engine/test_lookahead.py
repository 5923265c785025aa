"""`lookahead`: a fill keeps enough masks ahead of its decoded head that the model is never told,
by a hole emptying as it is decoded, that its line must end soon."""

from __future__ import annotations

import pytest
import torch

from engine.engine import Engine
from engine.errors import InvalidRequestError
from engine.types import SamplingConfig
from tests.engine.test_generate import A, ScriptedModel, _run


class CountingModel(ScriptedModel):
    """Records how many masks each full forward's canvas holds (every growth round prefills here:
    the scripted cache cannot be spliced)."""

    def __init__(self, script) -> None:
        super().__init__(script)
        self.masks_seen: list[int] = []

    def prefill(self, ids, keep_cache=True, drafts=None):
        self.masks_seen.append(int((ids == A.mask_id).sum()))
        return super().prefill(ids, keep_cache)


CFG = SamplingConfig(block=1, nonempty=False, eos_frontier=False)


def test_the_hole_is_topped_up_before_it_runs_low():
    endless = lambda p: 5  # noqa: E731
    plain = CountingModel(endless)
    off = _run(plain, [[3], [9]], CFG, hole_tokens=16, max_new_tokens=40)
    assert plain.masks_seen == [16, 8, 8, 8]  # grows only when full: 7, 6, ... 1 masks left seen
    model = CountingModel(endless)
    on = _run(model, [[3], [9]], SamplingConfig(block=1, nonempty=False, eos_frontier=False, lookahead=16),
              hole_tokens=16, max_new_tokens=40)
    # topped up to 16 once 7 are left (9 committed), until the budget of 40 caps the last round
    assert model.masks_seen == [16, 16, 16, 13]
    assert on.fills == off.fills == [[5] * 40]  # the same decode: only the canvas ahead differs


def test_a_fill_that_ends_is_not_topped_up():
    ends = lambda p: 5 if p < 2 + 11 else A.eos_id  # noqa: E731  (hole starts at canvas position 2)
    model = CountingModel(ends)
    out = _run(model, [[3], [9]], SamplingConfig(block=1, nonempty=False, eos_frontier=False, lookahead=16),
               hole_tokens=16, max_new_tokens=64)
    assert out.fills == [[5] * 11]
    assert model.masks_seen == [16, 16]  # one top-up after 9 tokens, none after the EOS


def test_lookahead_is_validated():
    with pytest.raises(InvalidRequestError, match="lookahead"):
        Engine._check_sampling(SamplingConfig(lookahead=1))
    with pytest.raises(InvalidRequestError, match="lookahead"):
        Engine._check_sampling(SamplingConfig(lookahead=-4))
    Engine._check_sampling(SamplingConfig(lookahead=16))


class Graded(ScriptedModel):
    """Token script(p) at canvas position p, sure (logit 20) at position 5 only, so the
    threshold rule commits that slot first."""

    def logits(self, h):
        out = torch.zeros((h.shape[0], self.args.vocab_size))
        for i, p in enumerate(h[:, 0].long().tolist()):
            out[i, self.script(p)] = 20.0 if p == 5 else 1.0
        return out


def test_a_fill_ended_by_a_stop_token_is_decoded_to_its_end():
    """A hole whose stop token (a line break) is committed first, at its last slot, has ended: the
    decode must not leave for a growth round that grows nothing and drop the slots before it."""
    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True
    script = lambda p: 7 if p == 5 else 5  # noqa: E731  (slots at canvas positions 2..5)
    for la in (0, 16):
        out = _run(Graded(script), [[3], [9]], SamplingConfig(lookahead=la), hole_tokens=4, max_new_tokens=32,
                   stop_ids=stop)
        assert out.fills == [[5, 5, 5, 7]], la
