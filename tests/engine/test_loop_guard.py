"""`loop_guard`: a fill that falls into a loop ends after the loop's first copy."""

from __future__ import annotations

import pytest

from engine.engine import Engine
from engine.errors import InvalidRequestError
from engine.samplers import loop_start
from engine.types import SamplingConfig
from tests.engine.test_generate import ScriptedModel, _run


def test_loop_start_finds_the_first_copy_of_a_repeated_tail():
    assert loop_start([9, 5] + [1, 2] * 8, 3) == 4  # "1 2" eight times: keep one copy
    assert loop_start([7] + [1, 2, 3, 4] * 4, 3) == 5
    assert loop_start([1, 2, 3] * 3, 3) is None  # 9 tokens: short runs are code, not loops
    assert loop_start([1, 2] * 8 + [5], 3) is None  # the tail no longer repeats
    assert loop_start(list(range(40)), 3) is None
    assert loop_start([4] * 12, 3) == 1
    assert loop_start([4] * 12, 13) is None  # fewer copies than asked for


def test_a_looping_fill_is_cut_after_one_copy_and_does_not_grow():
    # canvas: bos, 3, hole at 2..: the script writes 5 then "6 7" forever (LLaDA layout: a row
    # predicts its own slot)
    script = lambda p: 5 if p == 2 else (6 if p % 2 else 7)  # noqa: E731
    cfg = SamplingConfig(block=1, nonempty=False, eos_frontier=False)
    off = _run(ScriptedModel(script), [[3], [9]], cfg, hole_tokens=16, max_new_tokens=48)
    assert off.fills[0] == [5] + [6, 7] * 23 + [6]  # to the budget
    model = ScriptedModel(script)
    on = _run(model, [[3], [9]], SamplingConfig(block=1, nonempty=False, eos_frontier=False, loop_guard=3),
              hole_tokens=16, max_new_tokens=48)
    assert on.fills[0] == [5, 6, 7]
    assert len(on.tokens_per_step) == 1 + 12  # ended at the 12th looping token, before growing


def test_loop_guard_is_validated():
    with pytest.raises(InvalidRequestError, match="loop_guard"):
        Engine._check_sampling(SamplingConfig(loop_guard=1))
    Engine._check_sampling(SamplingConfig(loop_guard=3))
