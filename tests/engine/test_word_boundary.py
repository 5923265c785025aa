"""Token healing at a prefix that ends in whitespace: the canvas holds the prefix as code after
it would be tokenized, and the whitespace the next word's token takes becomes the fill's start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import engine.engine as engine_mod
from engine.engine import Engine
from engine.tokenizer import Tokenizer
from engine.types import InfillRequest

SHIPPED = Path(__file__).resolve().parents[2] / "engine" / "default_model" / "tokenizer.json"

CASES = [  # (prefix, what the user goes on to write): the next word's token takes whitespace
    ("def f(x):\n    ", "return x"),  # the cursor after a new line's indentation
    ("class A:\n    def g(self):\n        ", "pass"),
    ("y = 1 ", "+ 2"),
    ("s = 'a'\n\n    ", "# note"),
]


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    return Tokenizer.from_file(SHIPPED)


@pytest.mark.parametrize("prefix,word", CASES)
def test_the_prefix_is_tokenized_as_code_after_it_has_it(smol, prefix, word):
    ids, starts, rest = smol.encode_before_word(prefix)
    assert smol.decode(ids) + rest == prefix
    whole = smol.encode(prefix + word)
    assert whole[:len(ids)] == ids  # exactly the tokens the prefix has with the word after it
    assert smol.decode([whole[len(ids)]]).startswith(rest)  # `rest` opens the next token
    assert starts == [len(smol.decode(ids[:i])) for i in range(len(ids))]  # each token's offset in `prefix`


def test_the_plain_tokenization_differs_where_it_matters(smol):
    """Alone, a new line's indentation is one token that code never has after it: the old canvas."""
    plain = smol.encode("def f(x):\n    ")
    assert smol.decode([plain[-1]]) == "\n    "
    assert smol.encode("def f(x):\n    return x")[len(plain) - 1:len(plain)] != plain[-1:]
    ids, _, rest = smol.encode_before_word("def f(x):\n    ")
    assert smol.decode([ids[-1]]) == "\n   " and rest == " "


@pytest.mark.parametrize("text", ["def f(x): return x", "a.ite", "", "x(\u00e9", "x = g(b[0])\n\n", "import os\n"])
def test_text_whose_end_no_word_takes_is_tokenized_as_before(smol, text):
    """Not ending in whitespace, or ending in a line break (a word after it is a token of its
    own; after a blank line the two-newline token is kept, so an indented line can follow as
    "\\n\\n   " + " def")."""
    assert smol.encode_before_word(text) == (*smol.encode_offsets(text), "")


@pytest.fixture(scope="module")
def engine(tiny_ckpt):
    return Engine.from_pretrained(tiny_ckpt, device="cpu")


def _capture(monkeypatch):
    seen = {}
    real = engine_mod.generate

    def spy(model, segments, cfg, shifted, **kw):
        seen["segments"], seen["first"] = [list(s) for s in segments], kw.get("first")
        return real(model, segments, cfg, shifted, **kw)

    monkeypatch.setattr(engine_mod, "generate", spy)
    return seen


def test_the_fill_starts_with_the_whitespace_left_off_the_canvas(engine, monkeypatch):
    tok = engine.tokenizer
    prefix = "def add(a, b):\n    "
    ids, _, rest = tok.encode_before_word(prefix)
    assert rest == " "  # the test tokenizer splits whitespace like the shipped one
    seen = _capture(monkeypatch)
    res = engine.infill(InfillRequest(prefix=prefix, suffix="\n", hole_tokens=6, max_new_tokens=6))
    assert seen["segments"][0][-len(ids):] == ids  # nothing moved off the canvas
    texts = tok.token_texts()
    allowed = torch.nonzero(seen["first"].allowed).flatten().tolist()
    assert allowed and all(texts[i].startswith(" ") for i in allowed)
    assert res.context_tokens[0] == len(seen["segments"][0])
    # healing off: the prefix as it tokenizes alone, no constraint
    plain = engine.infill(InfillRequest(prefix=prefix, suffix="\n", hole_tokens=6, max_new_tokens=6,
                                        token_healing=False))
    assert seen["first"] is None and seen["segments"][0][-1] == tok.encode(prefix)[-1]
    assert plain.forward_passes >= 1


def test_a_prefix_ending_in_a_line_break_still_moves_its_last_token(engine, monkeypatch):
    tok = engine.tokenizer
    prefix = "def add(a, b):\n    return a + b\n"
    ids, _, rest = tok.encode_before_word(prefix)
    assert rest == ""
    seen = _capture(monkeypatch)
    res = engine.infill(InfillRequest(prefix=prefix, suffix="\n", hole_tokens=6, max_new_tokens=6))
    assert seen["segments"][0][-len(ids) + 1:] == ids[:-1]  # the last token moved into the hole
    texts = tok.token_texts()
    allowed = torch.nonzero(seen["first"].allowed).flatten().tolist()
    assert all(texts[i].startswith(texts[ids[-1]]) for i in allowed)
    assert res.context_tokens[0] == len(seen["segments"][0]) + 1


def test_a_blank_line_lead_may_end_before_code_at_column_0(smol):
    """A prefix ending at a blank line ends in the token "\\n\\n"; before code at column 0 that
    text is "\\n" + "\\n" + the word, so healing offers "\\n" too, and after it the rest."""
    from engine.healing import Healer

    texts = smol.token_texts()
    healer = Healer(texts, len(texts), [])
    prefix = smol.encode("x = 1\n\n")
    assert texts[prefix[-1]] == "\n\n"
    lead, first = healer.first_slot(prefix[-1], single_line=True)
    nl, nl2 = smol.encode("\n")[0], smol.encode("\n\n")[0]
    assert lead == "\n\n" and bool(first.allowed[nl]) and first.partial == (nl,)
    assert not bool(first.stop[nl])  # the line break is the prefix's: it does not end a line fill
    assert bool(first.allowed[nl2]) and bool(first.allowed[smol.encode("\n\n   ")[0]])
    after = first.rest(nl)
    assert after is not None and after.lead == "\n" and after.partial == () and after.rest is None
    word = smol.encode("x = 1\n\ndef f():")[len(prefix) + 1]  # the tokens there: "\n", "\n", "def"
    assert texts[word] == "def" and not bool(after.allowed[word]) and bool(after.allowed[nl])
    assert first.rest(nl2) is None  # the whole lead: nothing more to constrain
    # one line break alone is never split
    single = healer.for_text("\n", single_line=True)[1]
    assert single.partial == () and single.rest is None


@pytest.mark.parametrize("blank", ["\n\n", "\n\n\n", "\n\n\n\n", "\r\n\r\n"])
def test_every_blank_line_lead_splits_where_code_at_column_0_has_it(smol, blank):
    from engine.healing import Healer

    texts = smol.token_texts()
    healer = Healer(texts, len(texts), [])
    prefix = smol.encode("x = 1" + blank)
    lead, first = healer.first_slot(prefix[-1], single_line=True)
    assert lead == blank  # the blank lines are one token at the end of a prefix
    whole = smol.encode("x = 1" + blank + "def f():")
    head = whole[len(prefix) - 1:len(prefix) + 1]  # how code at column 0 has the same text
    assert "".join(texts[t] for t in head) == blank and len(head) == 2
    assert first.partial == (head[0],) and bool(first.allowed[head[0]])
    after = first.rest(head[0])
    assert after.lead == texts[head[1]] and bool(after.allowed[head[1]])
