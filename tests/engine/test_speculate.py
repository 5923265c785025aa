"""Self-speculative decoding (`SamplingConfig.draft`): the fill and the cache are the one-row
decode's (`lazy_rows`, `block=1`), in fewer forwards when the drafts hold."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine import speculate
from engine.checkpoint import load_model, load_tokenizer
from engine.generate import generate
from engine.reuse import Session
from engine.types import SamplingConfig
from kernels.attention import attention_ref, ordered_rows_attention

# the checks after the encoding forward; the opening's own tests turn `draft_opening` on
CFG = SamplingConfig(block=1, lazy_rows=True, eos_fill=False, eos_frontier=False, nonempty=False,
                     draft_opening=False)
HOLE = 12


@pytest.mark.parametrize("spare", [False, True])
def test_ordered_rows_attention_is_one_row_at_a_time(spare):
    """Row i sees the fresh keys of rows <= i and the old keys of the rows after it; with `spare`
    the old ones are written to the storage's spare rows after the cache instead of a copy."""
    torch.manual_seed(0)
    b, hq, hkv, lk, d = 1, 4, 2, 20, 8
    pos = torch.tensor([5, 6, 7, 9])
    q = torch.randn(b, hq, len(pos), d)
    k, v = torch.randn(b, hkv, lk, d), torch.randn(b, hkv, lk, d)
    k_old, v_old = k[:, :, pos].clone(), v[:, :, pos].clone()
    k_new, v_new = torch.randn(b, hkv, len(pos), d), torch.randn(b, hkv, len(pos), d)
    sk, sv = torch.full((b, hkv, lk + 6, d), float("nan")), torch.full((b, hkv, lk + 6, d), float("nan"))
    kc, vc = sk[:, :, :lk], sv[:, :, :lk]
    kc[:], vc[:] = k, v
    kc[:, :, pos], vc[:, :, pos] = k_new, v_new
    out = ordered_rows_attention(q, kc, vc, pos, k_old, v_old, spare=(sk, sv) if spare else None)
    assert not out.isnan().any()
    for i in range(len(pos)):
        ki, vi = k.clone(), v.clone()
        ki[:, :, pos[:i + 1]], vi[:, :, pos[:i + 1]] = k_new[:, :, :i + 1], v_new[:, :, :i + 1]
        ref = attention_ref(q[:, :, i:i + 1], ki, vi)
        torch.testing.assert_close(out[:, :, i:i + 1], ref, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A shifted (Dream-family) tiny model with one causal and one bidirectional layer: the
    embedded model's layout (causal lower layers, bidirectional upper ones)."""
    from engine.testing import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path_factory.mktemp("mixed"), family="dream", causal_layers=1, seed=3)
    model, _ = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    segs = [tok.encode("def area(w, h):\n    return "), tok.encode("\n\nprint(area(2, 3))\n")]
    return model, segs


def _run(model, segs, cfg, drafts=None, monkeypatch=None):
    """generate() with a session (to read its cache back); `drafts`: a function of the canvas
    position giving the draft there, replacing the lookup's."""
    if drafts is not None:
        def fixed(self, slots):
            mask = self.run.a.mask_id
            first = slots.index(mask)
            for p in self.run.pos_host[first:first + self.width]:
                self.drafts[p] = drafts(p)
        monkeypatch.setattr(speculate.Speculator, "_draft", fixed)
    session = Session()
    out = generate(model, segs, cfg, True, hole_tokens=HOLE, max_new_tokens=HOLE, session=session)
    return out, session


def _assert_same_cache(a, b):
    """Same keys/values at every row but the hole's last slot, which the one-row decode never
    runs (nothing is read from it) and a forward checking a right draft there does."""
    last = a.holes[1] - 1
    keep = torch.ones(a.cache.length, dtype=torch.bool)
    keep[last] = False
    for (ka, va), (kb, vb) in zip(a.cache, b.cache):
        torch.testing.assert_close(ka[:, :, keep], kb[:, :, keep], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(va[:, :, keep], vb[:, :, keep], atol=1e-4, rtol=1e-4)


def test_lookup_drafts_give_the_one_row_decode(mixed):
    model, segs = mixed
    lazy, s_lazy = _run(model, segs, CFG)
    spec, s_spec = _run(model, segs, replace(CFG, draft=3))
    assert spec.fills == lazy.fills
    assert len(spec.fills[0]) == HOLE and lazy.forward_passes == HOLE
    assert spec.forward_passes <= lazy.forward_passes
    _assert_same_cache(s_lazy, s_spec)


def test_right_drafts_commit_several_tokens_per_forward(mixed, monkeypatch):
    """Drafts equal to what the decode commits: every forward checks all of them, so 12 tokens
    take the prefill and ceil(11 / 4) forwards of 4 rows; fill and cache stay the one-row decode's."""
    model, segs = mixed
    lazy, s_lazy = _run(model, segs, CFG)
    a = model.args
    start = 1 + len(segs[0])  # the hole's first canvas position (after the lead token)
    truth = dict(enumerate(lazy.fills[0], start))
    spec, s_spec = _run(model, segs, replace(CFG, draft=3), drafts=lambda p: truth.get(p, a.eos_id),
                        monkeypatch=monkeypatch)
    assert spec.fills == lazy.fills
    assert spec.forward_passes == 1 + -(-(HOLE - 1) // 4)
    assert max(spec.tokens_per_step) == 1 and len(spec.tokens_per_step) == HOLE  # one commit at a time
    _assert_same_cache(s_lazy, s_spec)


def test_wrong_drafts_cost_nothing_but_rows(mixed, monkeypatch):
    """Drafts that never hold: one token per forward, as without drafts, and the rows they
    wrote are put back (the cache equals the one-row decode's)."""
    model, segs = mixed
    lazy, s_lazy = _run(model, segs, CFG)
    a = model.args
    wrong = next(t for t in range(3, a.vocab_size) if t not in lazy.fills[0])
    spec, s_spec = _run(model, segs, replace(CFG, draft=3), drafts=lambda p: wrong, monkeypatch=monkeypatch)
    assert spec.fills == lazy.fills
    assert spec.forward_passes == lazy.forward_passes
    _assert_same_cache(s_lazy, s_spec)


def test_half_right_drafts(mixed, monkeypatch):
    """Drafts right at every other slot: the fill is still the one-row decode's."""
    model, segs = mixed
    lazy, s_lazy = _run(model, segs, CFG)
    a = model.args
    start = 1 + len(segs[0])
    truth = dict(enumerate(lazy.fills[0], start))
    wrong = next(t for t in range(3, a.vocab_size) if t not in lazy.fills[0])
    spec, s_spec = _run(model, segs, replace(CFG, draft=4),
                        drafts=lambda p: truth.get(p) if p % 2 else wrong, monkeypatch=monkeypatch)
    assert spec.fills == lazy.fills
    assert spec.forward_passes < lazy.forward_passes
    _assert_same_cache(s_lazy, s_spec)


def test_speculation_only_where_it_is_exact(mixed):
    from engine.fills import Holes as _Holes
    from engine.generate import _Run

    model, segs = mixed

    def run(cfg, n_holes=1):
        holes = _Holes([[0] * 4 for _ in range(n_holes)], [4] * n_holes, [0] * n_holes)
        return _Run(model, True, cfg, holes, segs[:1] + segs[1:] * n_holes, torch.device("cpu"))

    assert speculate.applies(run(replace(CFG, draft=2)))
    assert not speculate.applies(run(CFG))  # draft 0
    assert not speculate.applies(run(replace(CFG, draft=2, block=2)))
    assert not speculate.applies(run(replace(CFG, draft=2, temperature=0.5)))
    assert not speculate.applies(run(replace(CFG, draft=2), n_holes=2))


def test_lookup_drafts_what_followed_the_tail_nearest_first():
    before = [5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 0, 1, 2, 3]
    assert speculate.lookup(before, [], 3) == [7, 8, 0]  # the nearest earlier "1 2 3"
    assert speculate.lookup([4, 6, 1, 2], [3, 1, 2, 8, 8], 4) == [8, 8]  # only in the text after the hole
    assert speculate.lookup([4, 6, 1, 2], [], 4) == []  # nowhere else
    assert speculate.lookup([1, 2, 5, 2], [], 2) == [5, 2]  # order 1 when no longer tail occurs
    assert speculate.lookup([1, 2, 9, 1, 2], [], 2, orders=(2,)) == [9, 1]


def test_engine_text_is_the_same_with_and_without_drafts(tmp_path):
    """Through `Engine.infill` (token healing, single-line stop, non-empty rule, reuse of the
    session across a keystroke): drafts change the forwards, never the text (fp32)."""
    from engine.engine import Engine
    from engine.testing import make_tiny_checkpoint
    from engine.types import InfillRequest

    ckpt = make_tiny_checkpoint(tmp_path / "m", family="dream", causal_layers=1, seed=5)
    engine = Engine.from_pretrained(str(ckpt), device="cpu", int8=False)
    text = "def area(w, h):\n    return w * h\n\n\ndef volume(w, h, d):\n    return area(w, h) * d\n\n\ndef perimeter(w, h):\n    return "
    runs = {}
    for draft, opening in ((0, False), (4, False), (4, True)):
        cfg = replace(engine.default_sampling, block=1, lazy_rows=True, draft=draft, draft_opening=opening)
        outs = []
        for typed in ("", "2", "2 * (w"):  # keystrokes in one session: the cache is reused
            req = InfillRequest(prefix=text + typed, suffix="\n", hole_tokens=8, max_new_tokens=16,
                                sampling=cfg, single_line=bool(typed), session=f"doc{draft}{opening}")
            outs.append(engine.infill(req))
        runs[draft, opening] = outs
    texts = {k: [o.text for o in v] for k, v in runs.items()}
    assert texts[4, False] == texts[0, False] and texts[4, True] == texts[0, False]
    passes = {k: sum(o.forward_passes for o in v) for k, v in runs.items()}
    assert passes[4, True] <= passes[4, False] < passes[0, False]  # drafts held


def test_a_prefill_cache_lends_its_spare_rows_to_the_check(mixed):
    from engine.kv_cache import HEADROOM, KVCache
    from engine.model import _spare_rows

    model, segs = mixed[0], mixed[1]
    ids = torch.tensor([[1] + segs[0] + segs[1]])
    with torch.no_grad():
        _, cache = model.prefill(ids)
    sk, _ = _spare_rows(cache, 0, 4)
    assert sk.shape[2] == ids.shape[1] + HEADROOM
    assert _spare_rows(cache, 0, HEADROOM + 1) is None  # not enough room: the copy path
    padded = KVCache.zeros(2, (1, 1, 8, 4), torch.float32, torch.device("cpu"), length=5)
    assert _spare_rows(padded, 0, 2) is None  # no storage behind it


@pytest.mark.parametrize("lookahead", [8, 16])
def test_drafts_keep_the_one_row_decode_with_lookahead(mixed, lookahead):
    """The speculative follow-through stops where the one-row decode would stop for a top-up
    (fewer than lookahead/2 masks ahead): the fill is the one-row decode's, in fewer forwards."""
    from dataclasses import replace

    model, segs = mixed[0], mixed[1]
    cfg = replace(CFG, lookahead=lookahead)
    one = generate(model, segs, cfg, True, hole_tokens=6, max_new_tokens=40)
    spec = generate(model, segs, replace(cfg, draft=4), True, hole_tokens=6, max_new_tokens=40)
    assert spec.fills == one.fills and len(one.fills[0]) > 20
    assert spec.forward_passes < one.forward_passes


# ---- the opening: drafts checked by the forward that encodes the canvas ---------------------

def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_prefill_checks_draft_rows_as_a_check_of_their_own_would(mixed):
    """`DraftRows`: the prefill's own rows come out as without them; the draft rows' hidden
    states, keys/values and layer inputs are those of a `step(prior=...)` of them run after it,
    and `prior` is what they overwrote."""
    from engine.model import DraftRows

    model, segs = mixed
    a = model.args
    s = 1 + len(segs[0])
    ids = torch.tensor([[a.bos_id, *segs[0], *[a.mask_id] * 6, *segs[1]]])
    index = torch.tensor([s, s + 1, s + 2])
    dr = torch.tensor([[5, 9, 7]])
    model.tap = 1
    try:
        with torch.no_grad():
            h_ref, cache = model.prefill(ids)
            tapped_ref = model.tapped.clone()
            prior = [(k[:, :, index].clone(), v[:, :, index].clone()) for k, v in cache]
            h_step = model.step(dr, index, cache, prior=prior)
            tapped_step = model.tapped.clone()
            d = DraftRows(dr, index)
            h, cache_d = model.prefill(ids, drafts=d)
            with pytest.raises(ValueError, match="keep_cache"):
                model.prefill(ids, keep_cache=False, drafts=DraftRows(dr, index))
    finally:
        model.tap = None
    keep = torch.ones(h.shape[1], dtype=torch.bool)
    keep[index] = False
    _close(h[:, keep], h_ref[:, keep])
    _close(h[:, index], h_step)
    assert model.tapped is not None
    _close(model.tapped[:, index], tapped_step)
    _close(model.tapped[:, keep], tapped_ref[:, keep])
    model.tapped = None
    for (k, v), (k_ref, v_ref), (k_old, v_old), (pk, pv) in zip(cache_d, cache, prior, d.prior):
        _close(k, k_ref)
        _close(v, v_ref)
        _close(pk, k_old)
        _close(pv, v_old)


def _run_open(model, segs, cfg, first, rest, monkeypatch, session=None, opening=True):
    """generate() with the opening on; `first(p)` / `rest(p)`: the draft at canvas position p
    for the first masked slot / any other (replacing the lookup's, the line rule's and the table's)."""
    monkeypatch.setattr(speculate.Speculator, "_first_draft", lambda self, before, after, i: first(len(before)))
    monkeypatch.setattr(speculate.Speculator, "_guess",
                        lambda self, before, after, n: [rest(p) for p in range(len(before), len(before) + n)])
    session = session or Session()
    out = generate(model, segs, replace(cfg, draft_opening=opening), True, hole_tokens=HOLE,
                   max_new_tokens=HOLE, session=session)
    return out, session


def test_a_right_opening_saves_the_first_check(mixed, monkeypatch):
    """Right drafts from the first slot: the prefill commits the first slot and goes on through
    the `draft` slots after it (5 tokens with draft=3), then 4 per forward: 12 tokens in
    1 + ceil(7 / 4) forwards instead of 1 + ceil(11 / 4). Fill and cache are the one-row decode's."""
    model, segs = mixed
    lazy, s_lazy = _run(model, segs, CFG)
    truth = dict(enumerate(lazy.fills[0], 1 + len(segs[0])))
    eos = model.args.eos_id
    spec, s_spec = _run_open(model, segs, replace(CFG, draft=3), lambda p: truth.get(p, eos),
                             lambda p: truth.get(p, eos), monkeypatch)
    assert spec.fills == lazy.fills
    assert spec.forward_passes == 1 + -(-(HOLE - 5) // 4)
    _assert_same_cache(s_lazy, s_spec)


def test_a_wrong_opening_costs_nothing_but_rows(mixed, monkeypatch):
    """A wrong first draft: the forwards of the checks without the opening, the same fill, and
    the draft rows' keys/values put back (the cache is the one-row decode's)."""
    model, segs = mixed
    lazy, s_lazy = _run(model, segs, CFG)
    truth = dict(enumerate(lazy.fills[0], 1 + len(segs[0])))
    eos = model.args.eos_id
    wrong = next(t for t in range(3, model.args.vocab_size) if t not in lazy.fills[0])
    cfg = replace(CFG, draft=3)
    shut, _ = _run(model, segs, cfg, drafts=lambda p: truth.get(p, eos), monkeypatch=monkeypatch)
    spec, s_spec = _run_open(model, segs, cfg, lambda p: wrong, lambda p: truth.get(p, eos), monkeypatch)
    assert spec.fills == lazy.fills
    assert spec.forward_passes == shut.forward_passes == 1 + -(-(HOLE - 1) // 4)
    _assert_same_cache(s_lazy, s_spec)


def test_a_reuse_step_checks_no_opening(mixed, monkeypatch):
    """A keystroke later (the session's cache reused: one step over the edited rows and the
    hole) the opening is not checked: on a CPU the draft rows cost that step more than the
    check they save (measured with `benchmarks/latency.py`). Same forwards and fill as without."""
    model, segs = mixed
    typed = [segs[0] + segs[0][-2:], segs[1]]  # two more tokens typed before the hole
    eos = model.args.eos_id

    def primed() -> Session:
        session = Session()
        generate(model, segs, CFG, True, hole_tokens=HOLE, max_new_tokens=HOLE, session=session)
        return session

    lazy = generate(model, typed, CFG, True, hole_tokens=HOLE, max_new_tokens=HOLE, session=primed())
    truth = dict(enumerate(lazy.fills[0], 1 + len(typed[0])))
    outs = [_run_open(model, typed, replace(CFG, draft=3), lambda p: truth.get(p, eos),
                      lambda p: truth.get(p, eos), monkeypatch, session=primed(), opening=opening)[0]
            for opening in (False, True)]
    assert all(o.reused_tokens > 0 for o in outs)
    assert outs[1].fills == outs[0].fills == lazy.fills
    assert outs[1].forward_passes == outs[0].forward_passes == 1 + -(-(HOLE - 1) // 4)


def test_line_start_drafts_the_indentation_of_the_line_above():
    """The token that opens a line indented like the last non-blank line above (one unit deeper
    after a `:`), BPE-style: the line break's token holds all but the indentation's last space."""
    texts = ["<mask>", "    def f(x):", "\n", "\n       ", "\n   ", "        y = 1", "\n\n   ", "\t", "\n\t\t",
             "\tif x:", "\n\n"]
    ids = {t: i for i, t in enumerate(texts)}

    def draft(before, lead, vocab=texts):
        return speculate.line_start(before, lead, vocab, {t: i for i, t in enumerate(vocab)})

    assert draft([1], "\n") == [ids["\n       "]]  # "def" at 4 columns, ":" -> 8: "\n" + 7 spaces
    assert draft([5], "\n") == [ids["\n       "]]  # the same depth as "        y = 1"
    assert draft([5, 2, 2], "\n") == [ids["\n       "]]  # blank lines above are skipped
    assert draft([1], "\n\n") == []  # no "\n\n" + 7 spaces in this vocabulary
    assert draft([9], "\n") == [ids["\n\t\t"]]  # tabs: the whole indentation
    assert draft([1], "") == []  # not a line's start
    assert draft([1], "\n", ["<mask>", "    def f(x):"]) == []  # no such token


def test_the_first_draft_is_the_lookups_else_the_line_rules_else_the_tables_that_healing_allows():
    from types import SimpleNamespace

    from engine.healing import FirstSlot

    texts = ["<m>", "    if x:", "\n", "\n       ", "a", "b", "c", "\n\n"]

    class Table:
        out = [4]

        def draft(self, before, n):
            return self.out[:n]

    run = SimpleNamespace(first=None, first_at=0, texts=texts, text_ids={t: i for i, t in enumerate(texts)})
    table = Table()
    spec = speculate.Speculator(run, 4, table)
    assert spec._first_draft([2, 1, 7, 2, 1], [], 0) == 7  # the lookup: a blank line followed the same two tokens
    assert spec._first_draft([1, 7, 1], [], 0) == 4  # one token matched says less than the table
    assert spec._first_draft([1], [], 0) == 4  # nothing to look up, no healing: the table
    table.out = []
    assert spec._first_draft([1, 7, 1], [], 0) == 7  # no table draft: the one-token lookup
    table.out = [4]
    starts = torch.tensor([t.startswith("\n") for t in texts])
    run.first = FirstSlot(allowed=starts, lead="\n")
    assert spec._first_draft([2, 1, 7, 2, 1], [], 0) == 7  # allowed
    assert spec._first_draft([1], [], 0) == 3  # the table's "a" is not: the line above, one level in
    run.first = FirstSlot(allowed=starts & (torch.arange(len(texts)) != 7), lead="\n")
    assert spec._first_draft([2, 1, 7, 2, 1], [], 0) == 3
    assert spec._first_draft([2, 1, 7, 2, 1], [], 1) == 7  # another slot than the constrained one
    run.first = FirstSlot(allowed=torch.zeros(len(texts), dtype=torch.bool), lead="\n")
    assert spec._first_draft([1], [], 0) is None  # nothing it allows


def test_drafts_after_the_first_are_the_long_lookups_else_the_tables_else_the_one_token_lookups():
    """`_guess`: a lookup that matched the last two or three tokens beats the trigram table, which
    beats a lookup that matched the last token alone (simulated on 200 held-out fills: 1,028 ->
    1,015 forwards, the same fills)."""
    from types import SimpleNamespace

    class Table:
        out = [9, 9]

        def draft(self, before, n):
            return self.out[:n]

    table = Table()
    spec = speculate.Speculator(SimpleNamespace(), 4, table)
    assert spec._guess([5, 6, 7, 8, 5, 6], [], 2) == [7, 8]  # two tokens matched
    assert spec._guess([5, 7, 8, 6], [3, 6, 4, 1], 2) == [9, 9]  # one token matched: the table
    table.out = []
    assert spec._guess([5, 7, 8, 6], [3, 6, 4, 1], 2) == [4, 1]  # no table draft: the one-token lookup
    assert spec._guess([5, 7, 8, 6], [], 2) == []
    assert spec._guess([5, 6, 7, 8, 5, 6], [], 0) == []
