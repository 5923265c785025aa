"""The base's own line as a second candidate for a single-line fill (`engine.rerank`,
`SamplingConfig.rerank`): the reader after the prefix is the base's full causal forward, the
base's line is its greedy decode from where it disagrees, the choice follows the base's
likelihood of line + suffix head, and agreement costs one forward, none where the decode saw
the base write the fill itself."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from engine.engine import Engine
from engine.expert import build_base_reading
from engine.generate import generate
from engine.rerank import CausalReader, from_run, rerank, suffix_head
from engine.types import InfillRequest, SamplingConfig

CFG = SamplingConfig(block=1, lazy_rows=True, nonempty=False, base_weight=1.0)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A shifted tiny model with a causal lower layer and a fully causal "base" sharing it."""
    from engine.testing import tiny_adapted_pair

    model, base, upper, tok = tiny_adapted_pair(tmp_path_factory.mktemp("rerank"), seed=11)
    return model, base, build_base_reading(model, upper), tok


def _inputs(model, reading, tok, prefix: str, suffix: str):
    """Run the engine's decode once and hand its caches to the check, as `Engine.infill` does."""
    a = model.args
    segs = [tok.encode(prefix), tok.encode(suffix)]
    out = generate(model, segs, CFG, True, hole_tokens=4, max_new_tokens=8, base=reading)
    assert out.cache is not None and out.base_cache is not None
    newline = torch.tensor(tok.newline_ids(a.vocab_size), dtype=torch.bool)
    inp = from_run(out, [a.bos_id, *segs[0]], segs[1], a, tok, reading, [], newline, None, 0)
    assert inp.banned[a.mask_id] and not inp.banned[a.eos_id] and inp.last == segs[0][-1]
    assert inp.start == 1 + len(segs[0])  # the hole's first canvas position
    return inp, segs[0]


def inp_banned(a) -> torch.Tensor:
    never = torch.zeros(a.vocab_size, dtype=torch.bool)
    never[a.mask_id] = True
    return never


def _base_lp(base, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return F.log_softmax(base(torch.tensor([ids]))[0].float(), -1)


def test_suffix_head_reads_to_the_next_nonblank_line():
    assert suffix_head("\n    return x\n    y = 1\n") == "\n    return x"
    assert suffix_head(")\n\n\n  foo()\nbar") == ")\n\n\n  foo()"
    assert suffix_head("") == ""
    assert suffix_head("tail only") == "tail only"
    assert suffix_head("\n\n") == "\n\n"
    assert len(suffix_head("\n" + "x" * 500)) == 120


def test_the_reader_is_the_base_itself(pair):
    """Rows appended after the prefix, in one feed and then one by one, read exactly the base's
    full causal forward over the same tokens."""
    model, base, reading, tok = pair
    inp, prefix = _inputs(model, reading, tok, "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n")
    a = model.args
    reader = CausalReader(reading, inp.cache, inp.base_cache, inp.start)
    new = tok.encode("w * h\nprint")
    lp = reader.feed([inp.last, *new[:3]])
    more = reader.feed(new[3:5])
    ref = _base_lp(base, [a.bos_id, *prefix, *new[:5]])
    torch.testing.assert_close(lp, ref[len(prefix):len(prefix) + 4], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(more, ref[len(prefix) + 4:], atol=1e-4, rtol=1e-4)
    assert reader.forwards == 2
    with pytest.raises(ValueError, match="free rows"):
        reader.feed([1] * (reader.room + 1))


def test_the_base_line_is_its_greedy_decode_and_the_likelier_line_wins(pair):
    model, base, reading, tok = pair
    a = model.args
    prefix, suffix = "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"
    inp, pre = _inputs(model, reading, tok, prefix, suffix)
    line = "zz qq"
    # the base's greedy tokens after the prefix; the tiny random base never writes a line break,
    # so its 6th token is made to end the line (as EOS would)
    ids = [a.bos_id, *pre]
    greedy: list[int] = []
    for _ in range(6):
        greedy.append(int(_base_lp(base, ids + greedy)[-1].masked_fill(inp.banned, float("-inf")).argmax()))
    stop = greedy[5]
    out = greedy[:greedy.index(stop)]
    inp = replace(inp, ends=inp.ends | {stop})
    got = rerank(inp, "", line, suffix, max_tokens=12, max_forwards=64)
    base_line = tok.decode(out).split("\n", 1)[0]
    head = suffix_head(suffix)

    def score(text):
        seq = tok.encode(text + head)
        lp = _base_lp(base, [a.bos_id, *pre, *seq])[len(pre):-1]
        return float(lp[torch.arange(len(seq)), torch.tensor(seq)].sum())

    assert base_line and base_line != line and "\n" not in tok.decode(out)
    assert got.scores[0] == pytest.approx(score(line), abs=1e-3)
    assert got.scores[1] == pytest.approx(score(base_line), abs=1e-3)
    want = base_line if score(base_line) > score(line) else line
    assert got.text == want and got.chosen == ("base" if want == base_line else "model")
    # 1 score (its reader goes on into the base's decode) + a forward per decoded token + 1 score
    # of the base's line
    assert got.forwards == 2 + len(out)
    # a base line that has not ended within the cap is no candidate: the fill stays
    capped = rerank(inp, "", line, suffix, max_tokens=len(out) - 1)
    assert capped.text == line and capped.chosen == "model" and len(capped.scores) == 1
    assert rerank(inp, "", line, suffix, max_tokens=12, extra=len(out) - 1 - len(tok.encode(line))).text == line


def _base_written_line(pair):
    """The base's first 5 greedy tokens after a prefix: the line is the first 4, the suffix starts
    with the 5th. Returns (tokens, line, suffix, the check's inputs, the suffix head's ids after
    that token). The tiny byte-level vocabulary does not read such fragments back as the same
    tokens, so the tests' `encode` returns them as they are (the check's logic, not BPE, is under
    test)."""
    model, base, reading, tok = pair
    a = model.args
    prefix = "def area(w, h):\n    return "
    pre = tok.encode(prefix)
    out: list[int] = []
    for _ in range(5):
        out.append(int(_base_lp(base, [a.bos_id, *pre, *out])[-1].masked_fill(inp_banned(a), float("-inf")).argmax()))
    line, suffix = tok.decode(out[:4]), tok.decode(out[4:5]) + "\nx = 1\n"
    inp, _ = _inputs(model, reading, tok, prefix, suffix)
    return out, line, suffix, inp, tok.encode("\nx = 1")


def test_agreement_costs_one_forward(pair):
    """A line the base writes itself, ending where the base goes on into the suffix: only the
    score runs and the line stays."""
    model, base, reading, tok = pair
    a = model.args
    out, line, suffix, inp, tail = _base_written_line(pair)
    head = suffix_head(suffix)

    def encode(text):
        assert text == line + head
        return out[:5] + tail, [0] * 4 + [len(line)] * (1 + len(tail))

    got = rerank(replace(inp, encode=encode), "", line, suffix)
    assert got.text == line and got.chosen == "model" and got.forwards == 1 and len(got.scores) == 1
    # one token changed: the base disagrees there and decodes its own line
    changed = (out[2] + 1) % a.vocab_size
    other = tok.decode([*out[:2], changed, out[3]])

    def encode2(text):
        if text == other + head:
            return [*out[:2], changed, out[3], out[4], *tail], [0] * 4 + [len(other)] * (1 + len(tail))
        return tok.encode_offsets(text)

    # (the suffix's first token read as the end: the tiny base writes no line break of its own)
    got = rerank(replace(inp, encode=encode2, ends=inp.ends | {out[4]}), "", other, suffix, max_tokens=6)
    assert got.forwards > 1 and len(got.scores) == 2


def test_the_engine_counts_the_check_and_keeps_one_of_the_two(pair, monkeypatch):
    """`rerank` on: the engine's answer is what the check chooses for the fill it decoded alone, the
    forwards include the check's, and multi-line requests are left as they are."""
    model, base, reading, tok = pair
    engine = Engine(model, tok, default_sampling=CFG)
    engine.base = reading
    req = InfillRequest(prefix="def area(w, h):\n    return ", suffix="\n\nprint(area(2, 3))\n", max_new_tokens=8,
                        single_line=True)
    alone = engine.infill(req)
    checked = engine.infill(replace(req, sampling=replace(CFG, rerank=True)))
    assert alone.text.strip()
    assert checked.forward_passes >= alone.forward_passes + 1
    inp, _ = _inputs(model, reading, tok, req.prefix, req.suffix)
    assert checked.text == rerank(inp, "", alone.text, req.suffix).text
    # the fill's confidence stays where the check kept it, and is dropped where the base's line
    # took its place (the decode did not score that line)
    assert alone.score is not None and alone.score <= 0
    assert checked.score == (alone.score if checked.text == alone.text else None)
    multi = engine.infill(replace(req, single_line=False, sampling=replace(CFG, rerank=True, base_multiline=True)))
    plain = engine.infill(replace(req, single_line=False, sampling=replace(CFG, base_multiline=True)))
    assert multi.text == plain.text and multi.forward_passes == plain.forward_passes
    # a request cancelled while the check runs keeps the fill it had, and the check's forwards
    # are not counted
    import engine.engine as engine_mod

    flag = []

    def cancelling(*args, **kwargs):
        flag.append(True)
        return real(*args, **kwargs)

    real = engine_mod.rerank
    monkeypatch.setattr(engine_mod, "rerank", cancelling)
    late = engine.infill(replace(req, sampling=replace(CFG, rerank=True), should_stop=lambda: bool(flag)))
    assert flag and late.text == alone.text and late.forward_passes == alone.forward_passes


def test_drafts_change_the_forwards_not_the_base_line(pair):
    """The base's decode checks prompt-lookup drafts in the same forward: where the suffix holds
    what the base writes, the same line comes out in fewer forwards."""
    from engine.rerank import _decode_base

    model, base, reading, tok = pair
    a = model.args
    prefix, suffix = "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"
    inp, pre = _inputs(model, reading, tok, prefix, suffix)
    ref: list[int] = []
    for _ in range(10):
        ref.append(int(_base_lp(base, [a.bos_id, *pre, *ref])[-1].masked_fill(inp.banned, float("-inf")).argmax()))
    def decode(inp, head):
        reader = CausalReader(reading, inp.cache, inp.base_cache, inp.start)
        row = reader.feed([inp.last, *head])[-1]
        return _decode_base(inp, "", reader, head, row, 10, None), reader.forwards - 1  # the decode's forwards

    # the tiny base writes no line break: its 9th token ends the line (as EOS would)
    inp = replace(inp, ends=inp.ends | {ref[8]})
    plain, n_plain = decode(inp, ref[:2])
    assert plain is not None and plain == ref[:ref.index(ref[8])]
    drafted, n_drafted = decode(replace(inp, draft=4, before=[a.bos_id, *pre], after=ref[1:]), ref[:2])
    assert plain == drafted
    assert n_drafted < n_plain
    # drafts that never hold (the wrong tokens) cost nothing but rows
    wrong = [(t + 1) % a.vocab_size for t in ref]
    missed, n_missed = decode(replace(inp, draft=4, before=[a.bos_id, *pre], after=[*ref[:3], *wrong]), ref[:2])
    assert missed == plain and n_missed <= n_plain
    # the fill's own line as a draft source: where the base's line meets it again after parting
    # from it, its tokens are drafted (the same line, fewer forwards)
    fill = [ref[0], (ref[1] + 1) % a.vocab_size, *ref[2:]]
    reader = CausalReader(reading, inp.cache, inp.base_cache, inp.start)
    row = reader.feed([inp.last, ref[0]])[-1]
    met = _decode_base(replace(inp, draft=4), "", reader, ref[:1], row, 10, None, line_ids=fill)
    n_met = reader.forwards - 1
    alone, n_alone = decode(replace(inp, draft=4), ref[:1])
    assert met == alone and n_met < n_alone


def test_a_half_precision_cache_reads_the_same(pair):
    """The int8 engine keeps keys/values in fp16 (`Transformer.cache_dtype`): the reader widens
    what it reads and stays close to the float reading."""
    model, base, reading, tok = pair
    prefix, suffix = "def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"
    new = tok.encode("w * h\nprint")
    inp, pre = _inputs(model, reading, tok, prefix, suffix)
    want = CausalReader(reading, inp.cache, inp.base_cache, inp.start).feed([inp.last, *new])
    model.cache_dtype = torch.float16
    try:
        half, _ = _inputs(model, reading, tok, prefix, suffix)
    finally:
        model.cache_dtype = None
    assert half.cache.keys[0].dtype == torch.float16 and half.base_cache.keys[0].dtype == torch.float16
    got = CausalReader(reading, half.cache, half.base_cache, half.start).feed([half.last, *new])
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-2, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.9


def test_the_decode_records_the_base_own_choice_at_every_slot(pair):
    """With the check on, the decode keeps the base's greedy choice at each slot of the fill
    (special ids barred, as the check bars them): the base's full causal reading of the prefix
    and the fill before that slot."""
    from engine.expert import never_ids

    model, base, reading, tok = pair
    a = model.args
    segs = [tok.encode("def area(w, h):\n    return "), tok.encode("\n\nprint(area(2, 3))\n")]
    never = never_ids(a, [], "cpu")
    for draft in (0, 4):
        cfg = replace(CFG, rerank=True, draft=draft)
        out = generate(model, segs, cfg, True, hole_tokens=4, max_new_tokens=8, base=reading)
        fill = out.fills[0]
        assert out.base_best is not None and len(out.base_best) >= len(fill) > 0
        for j, best in enumerate(out.base_best):
            ref = _base_lp(base, [a.bos_id, *segs[0], *fill[:j]])[-1].masked_fill(never, float("-inf"))
            assert best == int(ref.argmax())
    # nothing recorded (no work) with the check off or without the base
    assert generate(model, segs, CFG, True, hole_tokens=4, max_new_tokens=8, base=reading).base_best is None
    assert generate(model, segs, replace(CFG, rerank=True), True, hole_tokens=4, max_new_tokens=8).base_best is None


def test_a_fill_the_base_wrote_itself_is_not_read_again(pair):
    """Where the base's own choices during the decode were the fill token for token and then its
    end, the check answers what its first forward would have, without it; a record that stops
    short of the line's end or a fill encoded otherwise: it reads first, as without a record."""
    a = pair[0].args
    out, line, suffix, inp, tail = _base_written_line(pair)

    def encode(text):
        return out[:5] + tail, [0] * 4 + [len(line)] * (1 + len(tail))

    inp = replace(inp, encode=encode, fill=out[:4])
    read = rerank(inp, "", line, suffix)
    assert read.forwards == 1 and read.text == line
    record = dict(base_lp=[0.0] * 5, fed=out[:4])
    for end in (out[4], a.eos_id):  # the base's choices: the line, then the suffix's first token or an end
        got = rerank(replace(inp, base_best=[*out[:4], end], **record), "", line, suffix)
        assert got.text == read.text and got.chosen == "model" and got.forwards == 0 and got.scores == ()
    other = (out[2] + 1) % a.vocab_size
    for best, fill in ((out[:4], out[:4]),  # no choice recorded at the line's end
                       (out[:5], [*out[:2], other, out[3]])):  # the fill's ids are not the line's
        got = rerank(replace(inp, base_best=best, fill=fill, **record), "", line, suffix)
        assert got.forwards == 1 and got.text == read.text and got.scores == read.scores


PROMPTS = [("def area(w, h):\n    return ", "\n\nprint(area(2, 3))\n"), ("x = 1\ny = ", "\nz = x + y\n"),
           ("import os\n\ndef f(p):\n    ", "\n    return p\n"), ("class A:\n    def g(self):\n        ", "\n")]


def _both_ways(pair, out, segs: list[list[int]], suffix: str):
    """The check of a run's fill from the decode's reading of the base and by reading the fill
    first (`base_best` withheld), with the fill but its last token as the line: that token starts
    the suffix's head (the tiny vocabulary neither reads its fragments back nor writes line breaks:
    the tests' `encode` maps texts back to the ids they were decoded from, and a quarter of the
    ids end a line)."""
    model, _, reading, tok = pair
    a = model.args
    fill = out.fills[0]
    newline = torch.zeros(a.vocab_size, dtype=torch.bool)
    inp = from_run(out, [a.bos_id, *segs[0]], segs[1], a, tok, reading, [], newline, None, 0)
    assert out.base_best is not None and out.base_fed[:len(fill) - 1] == fill[:-1]
    line, head_ids, head = tok.decode(fill[:-1]), [fill[-1], *tok.encode("\nx")], suffix_head(suffix)
    lines = {line: fill[:-1]}  # text -> the ids it was decoded from

    def decode(ids):
        text = tok.decode(ids)
        lines.setdefault(text, list(ids))
        return text

    def encode(text):
        for known, ids in lines.items():
            if text == known + head:
                return [*ids, *head_ids], [0] * len(ids) + [len(known)] * len(head_ids)
        return tok.encode_offsets(text)

    inp = replace(inp, encode=encode, decode=decode, ends=inp.ends | {t for t in range(a.vocab_size) if t % 4 == 1})
    known = rerank(inp, "", line, suffix, max_tokens=12, max_forwards=64)
    read = rerank(replace(inp, base_best=None), "", line, suffix, max_tokens=12, max_forwards=64)
    # within a budget of forwards: never more, and where the base's line needs more the fill stays
    for budget in (2, 3, 4):
        capped = rerank(inp, "", line, suffix, max_tokens=12, max_forwards=budget)
        assert capped.forwards <= budget
        assert (capped.text, capped.chosen) == ((known.text, known.chosen) if known.forwards <= budget else (line, "model"))
    assert known.text == read.text and known.chosen == read.chosen
    assert known.forwards == read.forwards - 1
    if known.scores:
        assert known.scores == pytest.approx(read.scores, abs=1e-3)
    return known


def test_the_check_from_the_decode_reading_answers_as_the_read_one(pair):
    """With the decode's reading of the base (its choice and log-probability at each slot, the
    rows the caches hold), the check starts the base's decode from the fill's rows in place and
    scores the fill in the same forward: the same line, choice and scores as the check that reads
    the fill first, in one forward fewer."""
    model, base, reading, tok = pair
    seen = {"wrote": 0, "base": 0, "model": 0}
    for weight in (1.0, 4.0, 16.0):
        for prefix, suffix in PROMPTS:
            segs = [tok.encode(prefix), tok.encode(suffix)]
            out = generate(model, segs, replace(CFG, rerank=True, base_weight=weight), True, hole_tokens=4,
                           max_new_tokens=8, base=reading)
            known = _both_ways(pair, out, segs, suffix)
            seen["wrote" if known.forwards == 0 else known.chosen] += 1
    assert seen["base"] and seen["model"] and seen["wrote"]  # each way out of the check ran


@pytest.mark.parametrize("draft", [0, 4])
def test_the_decode_reading_holds_across_keystrokes_and_growth(pair, draft):
    """The rows the caches hold after a session's reuse (an edit near the prefix's end, the old
    fill's rows still in place) and after growth rounds (the suffix moved): the check from the
    decode's reading still answers as the one that reads the fill first."""
    from engine.reuse import Session

    model, base, reading, tok = pair
    cfg = replace(CFG, rerank=True, draft=draft, grow_tokens=2)
    for prefix, suffix in PROMPTS[:3]:
        session = Session()
        pre = tok.encode(prefix)
        for edited in (pre, [*pre[:-2], pre[-1]], [*pre[:-1], 7, pre[-1]]):
            segs = [edited, tok.encode(suffix)]
            out = generate(model, segs, cfg, True, hole_tokens=2, max_new_tokens=8, base=reading, session=session)
            assert len(out.fills[0]) > 2  # grew at least once
            _both_ways(pair, out, segs, suffix)


def test_readers_fed_together_read_as_each_alone(pair):
    """Two readers starting at different rows, fed in one forward: each reads what it reads alone."""
    from engine.rerank import feed_together

    model, base, reading, tok = pair
    inp, _ = _inputs(model, reading, tok, *PROMPTS[0])
    new = tok.encode("w * h\nprint")
    alone = [CausalReader(reading, inp.cache, inp.base_cache, inp.start + c).feed(new[c:]) for c in (0, 2)]
    counter = [0]
    first, second = (CausalReader(reading, inp.cache, inp.base_cache, inp.start + c, counter) for c in (0, 2))
    together = feed_together([(first, new), (second, new[2:])])
    assert counter == [1] and first.forwards == second.forwards == 1
    for got, want in zip(together, alone):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="share"):
        feed_together([(first, new[:1]), (CausalReader(reading, inp.cache, inp.base_cache, inp.start), new[:1])])


def test_the_engine_hands_the_decode_reading_to_the_check(pair, monkeypatch):
    """Through the engine: the decode's reading reaches the check, and the answer is the one the
    check gives without it, in no more forwards."""
    import engine.rerank as rerank_mod

    model, base, reading, tok = pair
    engine = Engine(model, tok, default_sampling=replace(CFG, rerank=True))
    engine.base = reading
    real, asked = rerank_mod._known, []

    def spy(inp, *args):
        asked.append(inp.base_best is not None and inp.base_lp is not None and inp.fed is not None)
        return real(inp, *args)

    for weight in (16.0, 1.0):
        for prefix, suffix in PROMPTS:
            req = InfillRequest(prefix=prefix, suffix=suffix, max_new_tokens=8, single_line=True,
                                sampling=replace(CFG, base_weight=weight, rerank=True))
            monkeypatch.setattr(rerank_mod, "_known", spy)
            with_record = engine.infill(req)
            monkeypatch.setattr(rerank_mod, "_known", lambda *args: False)
            without = engine.infill(req)
            assert with_record.text == without.text
            assert with_record.forward_passes <= without.forward_passes
    assert asked and all(asked)
