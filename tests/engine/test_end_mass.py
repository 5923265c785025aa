"""`end_mass`: a slot ends the fill by the probability of every ending token together."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine.test_generate import A, ScriptedModel, _run

CFG = dict(block=1, nonempty=False, eos_frontier=False)


class Scripted(ScriptedModel):
    """Per canvas position, a probability table: `table(p)` -> {token: probability}."""

    def __init__(self, table) -> None:
        super().__init__(lambda p: 5)
        self.table = table

    def logits(self, h):
        out = torch.full((h.shape[0], self.args.vocab_size), -30.0)
        for i, p in enumerate(h[:, 0].long().tolist()):
            for tok, prob in self.table(p).items():
                out[i, tok] = math.log(prob)
        return out


def flat_going_on(p: int) -> dict[int, float]:
    """From position 5 EOS is the likeliest single token (0.28) but going on holds 0.72, spread
    over three tokens; from position 8 only EOS is left."""
    if p < 5:
        return {5: 0.9, A.eos_id: 0.1}
    if p < 8:
        return {A.eos_id: 0.28, 5: 0.25, 6: 0.235, 8: 0.235}
    return {A.eos_id: 1.0}


def test_a_spread_continuation_outweighs_the_likeliest_single_end():
    from engine.types import SamplingConfig

    plain = _run(Scripted(flat_going_on), [[3], [9]], SamplingConfig(**CFG), hole_tokens=12, max_new_tokens=12)
    assert plain.fills == [[5, 5, 5]]  # EOS wins the argmax at position 5
    mass = _run(Scripted(flat_going_on), [[3], [9]], SamplingConfig(end_mass=0.5, **CFG), hole_tokens=12,
                max_new_tokens=12)
    assert mass.fills == [[5, 5, 5, 5, 5, 5]]  # goes on (the likeliest going-on token) until only EOS is left


def split_end(p: int) -> dict[int, float]:
    """From position 4 the ending tokens (EOS 0.35, the stop token 7 0.3) hold 0.65, and token 5
    alone (0.35) ties EOS for the argmax, listed first."""
    if p < 4:
        return {5: 0.9, A.eos_id: 0.1}
    return {5: 0.351, A.eos_id: 0.35, 7: 0.299}


def test_endings_that_hold_the_mass_together_end_the_fill():
    from engine.types import SamplingConfig

    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True  # a token holding a line break (single-line fills)
    plain = _run(Scripted(split_end), [[3], [9]], SamplingConfig(**CFG), hole_tokens=8, max_new_tokens=8,
                 stop_ids=stop)
    assert plain.fills[0][:3] == [5, 5, 5]  # the argmax never ends here
    mass = _run(Scripted(split_end), [[3], [9]], SamplingConfig(end_mass=0.5, **CFG), hole_tokens=8,
                max_new_tokens=8, stop_ids=stop)
    assert mass.fills == [[5, 5]]  # ended at position 4 with EOS, the likeliest ending
    # the stop tokens count only when they end a fill: without a stop set, 0.35 < 0.5 goes on
    loose = _run(Scripted(split_end), [[3], [9]], SamplingConfig(end_mass=0.5, **CFG), hole_tokens=8,
                 max_new_tokens=8)
    assert loose.fills[0][:3] == [5, 5, 5]


def test_the_first_slot_counts_its_own_stop_set():
    """Token healing's first slot: a token that ends a fill elsewhere (7) does not end it there
    when the slot's own stop set says so, so its probability is no ending mass."""
    from engine.generate import FirstSlot
    from engine.types import SamplingConfig

    def table(p):
        return {7: 0.6, 5: 0.4} if p == 2 else ({5: 0.9, A.eos_id: 0.1} if p < 4 else {A.eos_id: 1.0})

    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True
    allowed = torch.ones(A.vocab_size, dtype=torch.bool)
    cfg = SamplingConfig(end_mass=0.5, **CFG)
    own = _run(Scripted(table), [[3], [9]], cfg, hole_tokens=6, max_new_tokens=6, stop_ids=stop,
               first=FirstSlot(allowed, torch.zeros(A.vocab_size, dtype=torch.bool)))
    assert own.fills == [[7, 5]]
    general = _run(Scripted(table), [[3], [9]], cfg, hole_tokens=6, max_new_tokens=6, stop_ids=stop,
                   first=FirstSlot(allowed, None))
    assert general.fills == [[7]]  # 7 ends the fill at once: the stop token stays in it


def test_end_mass_is_validated():
    from engine.engine import Engine
    from engine.errors import InvalidRequestError
    from engine.types import SamplingConfig

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidRequestError, match="end_mass"):
            Engine._check_sampling(SamplingConfig(end_mass=bad))
    Engine._check_sampling(SamplingConfig(end_mass=0.5))
