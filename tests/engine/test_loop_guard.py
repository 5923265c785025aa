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


# token texts for the line-level tests: 3 "if not arg:", 4 "return", 5 "# parse it", 6 a line
# break with 4 more spaces of indentation each time the model re-emits the block, 8 "x = 1"
TEXTS = ["", "", "", "if not arg:", "return", "# parse it", "\n    ", "\n", "x = 1", "\n        "]


def test_line_loop_start_finds_a_block_repeated_one_level_deeper():
    from engine.samplers import line_loop_start

    block = [5, 6, 3, 9, 4, 6]  # "# parse it" / "if not arg:" / "return", deeper each line
    head = [8, 7] + block + block + [5]  # the second copy ends its last line, then the third starts
    at = line_loop_start(head, TEXTS)
    assert at == 2 + len(block) - 1  # the line break that ends the first copy
    text = "".join(TEXTS[t] for t in head[:at])
    assert text == "x = 1\n# parse it\n    if not arg:\n        return"
    assert line_loop_start([8, 7] + block + [5], TEXTS) is None  # one copy
    assert line_loop_start([8, 7, 8, 7], TEXTS) is None  # one short line twice: code
    assert line_loop_start([3, 7] * 3, TEXTS) == 1  # one line three times: keep one
    assert line_loop_start([8, 7, 3, 7, 3, 7], TEXTS) == 3  # a line of 8+ characters twice: keep one
    assert line_loop_start([3, 7, 3], TEXTS) is None  # the second copy's line is unfinished
    assert line_loop_start([3, 7, 3], TEXTS, ended=True) == 1  # unless the fill ended there
    assert line_loop_start([3, 7, 4, 7, 3, 9, 4], TEXTS) is None  # the repeat's last line is unfinished
    assert line_loop_start([3, 7, 4, 7, 3, 9, 4], TEXTS, ended=True) == 3  # unless the fill ended there


def test_a_multi_line_fill_repeating_its_lines_one_level_deeper_is_cut():
    # canvas: bos, 3, hole at 2..: "x = 1", then the 3-line block forever, each copy one level
    # deeper (ids 10 + j: a line break and 4 * j spaces), so no span of tokens repeats
    texts = TEXTS + ["\n" + " " * 4 * j for j in range(10)]
    tokens = [8, 7] + [t for k in range(8) for t in (5, 10 + k, 3, 11 + k, 4, 10 + k)]
    script = lambda p: tokens[p - 2] if 2 <= p < 2 + len(tokens) else 1  # noqa: E731
    from engine.config import ModelArgs
    from tests.engine.test_generate import A

    args = ModelArgs(**{**A.__dict__, "vocab_size": len(texts)})
    cfg = SamplingConfig(block=1, nonempty=False, eos_frontier=False, loop_guard=3)
    on = _run(ScriptedModel(script, args), [[3], [9]], cfg, hole_tokens=16, max_new_tokens=40, texts=texts)
    assert on.fills[0] == [8, 7, 5, 10, 3, 11, 4]  # "x = 1" and the block once, up to "return"
    plain = _run(ScriptedModel(script, args), [[3], [9]], cfg, hole_tokens=16, max_new_tokens=40)  # no texts
    assert len(plain.fills[0]) == 40  # the token-level guard alone runs to the budget


# token texts for the phrase tests: a docstring loop wrapped over lines, its break at another
# place in each copy (3 "the function", 4 " that tests", 5 " the", 6 " function that", 7 a line
# break and indentation, 8 " tests", 9 "x = [0, 0, 0, 0, 0, 0]", 10 "# " + a rule of "=")
PHRASES = ["", "", "", "the function", " that tests", " the", " function that", "\n    ", " tests",
           "x = [0, 0, 0, 0, 0, 0]", "# " + "=" * 40]


def test_phrase_loop_start_finds_a_phrase_repeated_across_line_breaks():
    from engine.samplers import loop_start, phrase_loop_start

    head = [3, 4, 5, 6, 7, 8, 5, 6, 8, 5, 6]  # "the function that tests the function that\n    tests the ..."
    text = "".join(PHRASES[t] for t in head)
    assert " ".join(text.split()).endswith("tests the function that " * 2 + "tests the function that")
    assert loop_start(head, 3) is None  # no span of tokens repeats three times
    at = phrase_loop_start(head, PHRASES, 3)
    assert at is not None
    kept = " ".join("".join(PHRASES[t] for t in head[:at]).split())
    assert kept.count("the function that") == 2 and not kept.endswith("tests")  # up to one copy of the loop
    assert phrase_loop_start(head[:-3], PHRASES, 3) is None  # two copies of a short phrase: not yet a loop
    assert phrase_loop_start([9, 7, 9, 7, 9], PHRASES, 3) is not None  # a 22-character line three times
    assert phrase_loop_start([9, 7, 9], PHRASES, 3) is None  # twice: code
    assert phrase_loop_start([10, 7, 10, 7, 10], PHRASES, 3) is None  # a rule of one character is not a loop


def test_a_long_phrase_twice_is_a_loop():
    from engine.samplers import phrase_loop_start

    texts = ["", "", "", "raise ValueError('Invalid literal for Fraction: %r' % numerator)", "\n        "]
    at = phrase_loop_start([3, 4, 3], texts, 3)
    assert at == 1  # the second copy goes, the line break after the first with it
    assert phrase_loop_start([4, 3, 4, 3], texts, 3) == 2  # indented the same
    assert phrase_loop_start([3, 4, 3], texts, 3, long_chars=200) is None
