"""`close_brackets`: a fill does not end with a bracket it opened still open."""

from __future__ import annotations

import pytest
import torch

from engine.end_rules import open_depth
from engine.types import SamplingConfig
from tests.engine.test_end_mass import Scripted
from tests.engine.test_generate import A, _run

CFG = dict(block=1, nonempty=False, eos_frontier=False)
# token texts: 5 opens a call, 8 closes it, 7 is a line break (the single-line stop token)
TEXTS = ["<m>", "<e>", "<b>", "x = ", "y", "f(", "a", "\n", ")", "z"] + ["?"] * (A.vocab_size - 10)
STOP = torch.zeros(A.vocab_size, dtype=torch.bool)
STOP[7] = True


@pytest.mark.parametrize("text, depth", [
    ("foo(", 1), ("foo(a)", 0), ("d[k](x, {", 2), ("a) + (b", 0), ("x)", -1),
    ("s = '('", 0), ('print("(", x', 1), ('"""doc (', 0), ("# call(", 0), ("f(a)  # (", 0),
    ('s = "\\"(" + f(', 1), ("''' ( ''' + (", 1),
])
def test_open_depth_counts_code_brackets_only(text, depth):
    assert open_depth(text) == depth


@pytest.mark.parametrize("text, depth", [
    ("# note\nf(", 1), ("x = 1  # (\ny = [", 1), ("# don't\ng(", 1), ("s = 'a\nh(", 1), ('"""a\n(\n"""(', 1),
])
def test_open_depth_over_several_lines(text, depth):
    """A comment hides the rest of its line only; a one-quote literal ends with its line."""
    assert open_depth(text) == depth


def test_the_line_before_the_fill_says_whether_it_starts_in_a_literal_or_comment():
    assert open_depth('x = "call(' + "a, b", start=10) == 0  # inside the literal
    assert open_depth('x = "call(" + f(' + "a, b", start=15) == 1
    assert open_depth("y = g(  # note (" + "x", start=16) == 0  # a comment
    assert open_depth("y = g(" + "x, h(1)", start=6) == 0  # the line's own open bracket is not the fill's


def call_then_break(p: int) -> dict[int, float]:
    """The hole's first slot (position 2, after the lead token and the prefix): `f(`; after it a
    line break is likelier than `)`; after `)` the line ends."""
    if p == 2:
        return {5: 0.9, A.eos_id: 0.1}
    if p == 3:
        return {7: 0.6, 8: 0.3, A.eos_id: 0.1}
    return {7: 0.6, A.eos_id: 0.4}


def test_the_line_goes_on_until_the_call_is_closed():
    def fill(**kw):
        return _run(Scripted(call_then_break), [[3], [9]], SamplingConfig(**CFG, **kw), hole_tokens=8,
                    max_new_tokens=8, stop_ids=STOP, texts=TEXTS).fills

    assert fill() == [[5, 7]]  # off: the line breaks after `f(`
    assert fill(close_brackets=8) == [[5, 8, 7]]  # held open until `)`, then the line ends
    assert fill(close_brackets=1) == [[5, 7]]  # past its token cap the rule lets go
    # without token texts there is nothing to read: off
    off = _run(Scripted(call_then_break), [[3], [9]], SamplingConfig(**CFG, close_brackets=8), hole_tokens=8,
               max_new_tokens=8, stop_ids=STOP)
    assert off.fills == [[5, 7]]


def call_then_end(p: int) -> dict[int, float]:
    """A multi-line fill: `f(`, then ending (EOS) is likelier than `)`; after `)`, EOS."""
    if p == 2:
        return {5: 0.9, A.eos_id: 0.1}
    if p == 3:
        return {A.eos_id: 0.6, 8: 0.3, 7: 0.1}
    return {A.eos_id: 0.9, 9: 0.1}


def test_a_multi_line_fill_does_not_end_inside_a_call():
    """The demo's `Complete body` wrote `return line.split(` and ended: without stop tokens (a
    multi-line fill) the rule bars EOS/pad while the call is open."""
    def fill(**kw):
        return _run(Scripted(call_then_end), [[3], [9]], SamplingConfig(**CFG, **kw), hole_tokens=8,
                    max_new_tokens=8, texts=TEXTS).fills

    assert fill() == [[5]]  # off: it ends after `f(`
    assert fill(close_brackets=8) == [[5, 8]]  # held until `)`, then it ends
    assert fill(close_brackets=1) == [[5]]


def test_a_bracket_of_the_healed_prefix_token_is_not_the_fills():
    """Token healing moved the prefix's `f(` into the hole: its bracket is the prefix's, closed
    (or not) by the text after the cursor, so the fill may end."""
    from engine.generate import FirstSlot

    first = FirstSlot(torch.ones(A.vocab_size, dtype=torch.bool), None, "f(")
    out = _run(Scripted(call_then_break), [[3], [9]], SamplingConfig(**CFG, close_brackets=8), hole_tokens=8,
               max_new_tokens=8, stop_ids=STOP, texts=TEXTS, first=first)
    assert out.fills == [[5, 7]]


def test_the_cap_bounds_how_long_a_fill_is_held():
    """A model that only ever wants to break the line after `f(`: held for fills shorter than the
    cap (something else is committed), then it ends."""
    out = _run(Scripted(lambda p: {5: 1.0} if p == 2 else {7: 1.0}), [[3], [9]],
               SamplingConfig(**CFG, close_brackets=3), hole_tokens=8, max_new_tokens=8, stop_ids=STOP, texts=TEXTS)
    fill = out.fills[0]
    assert len(fill) == 4 and fill[0] == 5 and fill[-1] == 7 and 7 not in fill[1:3]


def test_the_engine_checks_the_setting(tmp_path):
    from engine.engine import Engine
    from engine.errors import InvalidRequestError
    from engine.testing import make_tiny_checkpoint
    from engine.types import InfillRequest

    engine = Engine.from_pretrained(str(make_tiny_checkpoint(tmp_path / "m", family="dream")), device="cpu")
    for bad in (-1, 257):
        with pytest.raises(InvalidRequestError, match="close_brackets"):
            engine.infill(InfillRequest(prefix="x = f(", suffix="\n", sampling=SamplingConfig(close_brackets=bad)))
    out = engine.infill(InfillRequest(prefix="x = f(", suffix="\n", single_line=True, hole_tokens=6,
                                      max_new_tokens=12, sampling=SamplingConfig(close_brackets=12)))
    assert "\n" not in out.text


def test_dedent_start_finds_the_first_token_of_a_line_left_of_the_block():
    from engine.end_rules import dedent_start

    texts = ["return x", "\n", "    ", "y = 1", "\n\n", "def", " g", "():", "\t", "z"]
    assert dedent_start([0, 1, 2, 3], texts, 4) is None  # `    y = 1` stays in the block
    assert dedent_start([0, 1, 2, 3, 4], texts, 4) is None  # blank lines decide nothing
    assert dedent_start([0, 1, 2, 3, 4, 5, 6], texts, 4) == 5  # `def` at column 0: cut before it
    assert dedent_start([0, 1, 8, 9], texts, 4) is None  # a tab is 4 columns
    assert dedent_start([0, 1, 8, 9], texts, 5) == 2  # the line's first token, its indentation included
    assert dedent_start([5, 6, 7], texts, 4) is None  # the first line is the cursor's: never judged


def test_a_block_fill_ends_where_it_leaves_the_block():
    """`min_indent`: decoding stops at the first token of a dedented line (later slots EOS), so the
    forwards the editor would throw away are not spent."""
    texts = ["<m>", "<e>", "<b>", "x = ", "y", "    ", "\n", "z", "def"] + ["?"] * (A.vocab_size - 9)

    def script(p: int) -> dict[int, float]:  # y, newline, def, y, y, y ... (a block that walks out)
        return {2: {4: 1.0}, 3: {6: 1.0}, 4: {8: 1.0}}.get(p, {4: 1.0})

    def fill(**kw):
        return _run(Scripted(script), [[3], [9]], SamplingConfig(**CFG), hole_tokens=8, max_new_tokens=8,
                    texts=texts, **kw)

    assert fill().fills == [[4, 6, 8, 4, 4, 4, 4, 4]]  # no floor: decoded to the end
    cut = fill(min_indent=4)
    assert cut.fills == [[4, 6]] and cut.forward_passes < fill().forward_passes
    assert fill(min_indent=0).fills == [[4, 6, 8, 4, 4, 4, 4, 4]]  # column 0 is inside a floor of 0
