"""`end_penalty`: a prior against ending a fill, on EOS and on single-line stop tokens."""

from __future__ import annotations

import torch

from tests.engine.test_generate import A, ScriptedModel, _run

CFG = dict(block=1, nonempty=False, eos_frontier=False)


class EndsEarly(ScriptedModel):
    """Token 5 (logit 0.5) everywhere; from canvas position 5 on the ending token `end` scores 1.0
    (it wins by 0.5); from position 8 on, token 5 is out of the running."""

    def __init__(self, end: int) -> None:
        super().__init__(lambda p: 5)
        self.end = end

    def logits(self, h):
        out = torch.full((h.shape[0], self.args.vocab_size), -20.0)
        for i, p in enumerate(h[:, 0].long().tolist()):
            out[i, 5] = 0.5 if p < 8 else -20.0
            out[i, self.end] = 1.0 if p >= 5 else -20.0
        return out


def test_a_penalty_outweighing_the_margin_delays_the_end():
    from engine.types import SamplingConfig

    # canvas: bos, 3, hole from position 2 (a row predicts its own slot)
    plain = _run(EndsEarly(A.eos_id), [[3], [9]], SamplingConfig(**CFG), hole_tokens=12, max_new_tokens=12)
    assert plain.fills == [[5, 5, 5]]
    late = _run(EndsEarly(A.eos_id), [[3], [9]], SamplingConfig(end_penalty=1.0, **CFG), hole_tokens=12,
                max_new_tokens=12)
    assert late.fills == [[5] * 6]
    small = _run(EndsEarly(A.eos_id), [[3], [9]], SamplingConfig(end_penalty=0.25, **CFG), hole_tokens=12,
                 max_new_tokens=12)
    assert small.fills == [[5, 5, 5]]  # less than the margin: no change


def test_the_penalty_applies_to_single_line_stop_tokens():
    from engine.types import SamplingConfig

    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True  # a token holding a line break
    plain = _run(EndsEarly(7), [[3], [9]], SamplingConfig(**CFG), hole_tokens=12, max_new_tokens=12, stop_ids=stop)
    assert plain.fills == [[5, 5, 5, 7]]  # the stop token stays in the fill
    late = _run(EndsEarly(7), [[3], [9]], SamplingConfig(end_penalty=1.0, **CFG), hole_tokens=12,
                max_new_tokens=12, stop_ids=stop)
    assert late.fills == [[5] * 6 + [7]]


def test_end_penalty_is_validated():
    import pytest

    from engine.engine import Engine
    from engine.errors import InvalidRequestError
    from engine.types import SamplingConfig

    for bad in (-1.0, 25.0, float("nan")):
        with pytest.raises(InvalidRequestError, match="end_penalty"):
            Engine._check_sampling(SamplingConfig(end_penalty=bad))
    Engine._check_sampling(SamplingConfig(end_penalty=1.5))


class EndsFirst(ScriptedModel):
    """At the first slot (canvas position 2) token 7 scores 1.0 and token 5 0.5; after it, token 5
    until position 4, then EOS."""

    def __init__(self) -> None:
        super().__init__(lambda p: 5)

    def logits(self, h):
        out = torch.full((h.shape[0], self.args.vocab_size), -20.0)
        for i, p in enumerate(h[:, 0].long().tolist()):
            if p == 2:
                out[i, 7], out[i, 5] = 1.0, 0.5
            elif p < 5:
                out[i, 5] = 1.0
            else:
                out[i, A.eos_id] = 1.0
        return out


def test_the_first_slot_is_penalized_by_its_own_stop_rule():
    """Token healing's first slot: its own stop set rules there (here: nothing stops, so token 7
    is no ending and keeps its lead); without one, the general stop set does."""
    from engine.generate import FirstSlot
    from engine.types import SamplingConfig

    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True
    allowed = torch.ones(A.vocab_size, dtype=torch.bool)
    cfg = SamplingConfig(end_penalty=1.0, **CFG)
    own = _run(EndsFirst(), [[3], [9]], cfg, hole_tokens=6, max_new_tokens=6, stop_ids=stop,
               first=FirstSlot(allowed, torch.zeros(A.vocab_size, dtype=torch.bool)))
    assert own.fills == [[7, 5, 5]]
    general = _run(EndsFirst(), [[3], [9]], cfg, hole_tokens=6, max_new_tokens=6, stop_ids=stop,
                   first=FirstSlot(allowed, None))
    assert general.fills == [[5, 5, 5]]
