"""The denoising loop: naive/fast agreement, commit rule, length handling, holes, cancellation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.checkpoint import load_model, load_tokenizer
from engine.config import ModelArgs
from engine.generate import FirstSlot, generate
from engine.samplers import copy_prior, factor_commits, frontier_run, in_block, min_commits
from engine.types import SamplingConfig

A = ModelArgs(vocab_size=16, dim=2, mask_id=0, eos_id=1, pad_id=1, bos_id=2)


class ScriptedModel(torch.nn.Module):
    """Hidden state = canvas position; logits = a scripted token per position (confidence 1)."""

    def __init__(self, script, args: ModelArgs = A) -> None:
        super().__init__()
        self.args = args
        self.script = script
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def prefill(self, ids, keep_cache=True, drafts=None):
        self.calls += 1
        pos = torch.arange(ids.shape[1], dtype=torch.float32)
        return torch.stack([pos, torch.ones_like(pos)], -1)[None], [] if not keep_cache else [None]

    def step(self, ids, index, cache, drafts=None):
        self.calls += 1
        return torch.stack([index.float(), torch.ones(len(index))], -1)[None]

    def logits(self, h):
        out = torch.full((h.shape[0], self.args.vocab_size), -20.0)
        for i, p in enumerate(h[:, 0].long().tolist()):
            out[i, self.script(p)] = 20.0
        return out


def _run(model, segments, cfg=SamplingConfig(), **kw):
    return generate(model, segments, cfg, shifted=False, **kw)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cached_sampler_equals_naive_when_refreshing_every_step(family, request):
    ckpt = request.getfixturevalue("tiny_ckpt" if family == "llada" else "tiny_dream_ckpt")
    model, a = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    shifted = family == "dream"
    segs = [tok.encode("def add(a, b):\n    return "), tok.encode("\n\nclass Point:\n")]
    naive = generate(model, segs, SamplingConfig(sampler="naive"), shifted, hole_tokens=10, max_new_tokens=10)
    fast = generate(model, segs, SamplingConfig(refresh_every=1, threshold=2.0), shifted, hole_tokens=10,
                    max_new_tokens=10)
    assert naive.fills == fast.fills
    assert naive.tokens_per_step == fast.tokens_per_step == [1] * 10


def test_fast_sampler_runs_cached_steps_on_a_real_model(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    tok = load_tokenizer(tiny_ckpt)
    segs = [tok.encode("for i in range(10):\n    "), tok.encode("\n")]
    out = generate(model, segs, SamplingConfig(steps=4, eos_fill=False), False, hole_tokens=12, max_new_tokens=12)
    assert len(out.tokens_per_step) == 4  # all committed by the last step
    assert sum(out.tokens_per_step) == 12
    assert out.forward_passes == 4  # one prefill + three cached steps


def test_threshold_commits_many_per_step_and_eos_shortens():
    script = lambda p: 5 if p < 4 else 1  # noqa: E731  positions 1..3 (after bos) get 5, then EOS
    model = ScriptedModel(script)
    out = _run(model, [[], [7, 7]], SamplingConfig(eos_frontier=False), hole_tokens=8, max_new_tokens=32)
    assert out.fills == [[5, 5, 5]]
    assert out.forward_passes == 1 and out.tokens_per_step == [8]  # every slot confident: one step
    # with EOS allowed only at the first masked slot: the text first, then the EOS that ends it
    out = _run(ScriptedModel(script), [[], [7, 7]], hole_tokens=8, max_new_tokens=32)
    assert out.fills == [[5, 5, 5]] and out.tokens_per_step == [3, 5]


def test_hole_grows_until_eos_or_budget():
    model = ScriptedModel(lambda p: 5)
    out = _run(model, [[3], [7]], SamplingConfig(grow_tokens=4), hole_tokens=4, max_new_tokens=12)
    assert out.fills == [[5] * 12]
    assert model.calls == 3  # one prefill per block: 4 -> 8 -> 12

    model = ScriptedModel(lambda p: 5 if p < 8 else 1)
    out = _run(model, [[3], [7]], SamplingConfig(grow_tokens=4), hole_tokens=4, max_new_tokens=40)
    assert out.fills == [[5] * 6]  # canvas: bos, 3, then slots 2..7 -> six 5s before the EOS


def test_stop_token_ends_the_fill_and_stops_growth():
    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True
    model = ScriptedModel(lambda p: 7 if p == 4 else 5)  # canvas: bos, 3, slots 2.. -> the 3rd slot is a stop
    out = _run(model, [[3], [9]], SamplingConfig(grow_tokens=4), hole_tokens=4, max_new_tokens=32, stop_ids=stop)
    assert out.fills == [[5, 5, 7]]  # cut after the stop token, no growth past the first block
    assert model.calls == 1
    plain = _run(ScriptedModel(lambda p: 7 if p == 4 else 5), [[3], [9]], SamplingConfig(grow_tokens=4),
                 hole_tokens=4, max_new_tokens=12)
    assert plain.fills == [[5, 5, 7] + [5] * 9]  # without stop ids the hole grows to its budget


def test_stop_token_turns_the_rest_of_the_hole_into_eos(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    cfg = SamplingConfig(threshold=2.0, eos_fill=False)  # one commit per step, by confidence
    free = generate(model, [[5, 6, 7], [8]], cfg, False, hole_tokens=8, max_new_tokens=8)
    first = free.fills[0][0] if free.fills[0] else None
    assert first is not None
    stop = torch.zeros(model.args.vocab_size, dtype=torch.bool)
    stop[torch.tensor(free.fills[0])] = True  # every token it would write is a stop token
    out = generate(model, [[5, 6, 7], [8]], cfg, False, hole_tokens=8, max_new_tokens=8, stop_ids=stop)
    assert len(out.fills[0]) < 8 and len(out.tokens_per_step) < 8
    assert sum(out.tokens_per_step) == 8  # the slots after the stop were filled with EOS at once


def test_first_slot_constraint_and_its_own_stop_rule():
    allowed = torch.zeros(A.vocab_size, dtype=torch.bool)
    allowed[[6, 7]] = True
    model = ScriptedModel(lambda p: 7 if p == 2 else 5)  # canvas: bos, 3, slots 2.. (slot 0 wants 7)
    out = _run(model, [[3], [9]], hole_tokens=4, max_new_tokens=4, first=FirstSlot(allowed))
    assert out.fills == [[7, 5, 5, 5]]
    only6 = torch.zeros(A.vocab_size, dtype=torch.bool)
    only6[6] = True
    out = _run(ScriptedModel(lambda p: 7 if p == 2 else 5), [[3], [9]], hole_tokens=4, max_new_tokens=4,
               first=FirstSlot(only6))
    assert out.fills[0][0] == 6  # the scripted favourite is not allowed there
    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[7] = True  # 7 ends a fill anywhere, except in the first slot, whose own rule says no
    out = _run(ScriptedModel(lambda p: 7 if p in (2, 4) else 5), [[3], [9]], SamplingConfig(grow_tokens=4),
               hole_tokens=4, max_new_tokens=12, stop_ids=stop,
               first=FirstSlot(allowed, stop=torch.zeros(A.vocab_size, dtype=torch.bool)))
    assert out.fills == [[7, 5, 7]]


def test_eos_only_at_the_frontier_keeps_a_confident_far_end_from_emptying_the_fill():
    # the model is sure of EOS at the far end of the hole and only fairly sure of the text
    class Model(ScriptedModel):
        def logits(self, h):
            out = torch.full((h.shape[0], self.args.vocab_size), -20.0)
            for i, p in enumerate(h[:, 0].long().tolist()):
                if p >= 5:
                    out[i, 1] = 20.0  # EOS, confidence ~1
                else:
                    out[i, 5], out[i, 1] = 2.0, 1.6  # text, EOS close behind
            return out

    cfg = SamplingConfig(threshold=0.9, eos_fill=True)
    spread = _run(Model(None), [[3], [9]], replace(cfg, eos_frontier=False), hole_tokens=8, max_new_tokens=8)
    front = _run(Model(None), [[3], [9]], cfg, hole_tokens=8, max_new_tokens=8)
    assert spread.fills == [[5, 5, 5]] and front.fills == [[5, 5, 5]]
    # canvas: bos, 3, slots 2..9: slots 2-4 carry text, 5-9 EOS
    assert spread.tokens_per_step[0] == 5  # the far end's EOS first: the fill shrinks from the right
    # EOS only at the first masked slot: slots 3-4 lose their EOS option and commit text at once,
    # slot 2 follows, and the end comes when the frontier reaches slot 5 (the rest is EOS-filled)
    assert front.tokens_per_step == [2, 1, 5]


def test_several_holes_are_denoised_jointly():
    model = ScriptedModel(lambda p: 5 if p < 5 else (6 if 7 <= p < 9 else 1))
    out = _run(model, [[3], [9], [8]], SamplingConfig(eos_frontier=False), hole_tokens=4, max_new_tokens=4)
    # canvas: bos 3 [2..5] 9 [7..10] 8 eos
    assert out.fills == [[5, 5, 5], [6, 6]]
    assert out.forward_passes == 1


def test_min_one_commit_per_step_when_nothing_is_confident(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    out = generate(model, [[5, 6, 7], [8]], SamplingConfig(threshold=2.0, eos_fill=False), False,
                   hole_tokens=6, max_new_tokens=6)
    assert out.tokens_per_step == [1] * 6


def test_min_commits_schedule():
    got = min_commits(torch.tensor([10, 3, 0, 5]), torch.tensor([4, 5, 2, 1]))
    assert got.tolist() == [3, 1, 0, 5]


def test_min_per_step_floors_parallelism_when_nothing_is_confident(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    out = generate(model, [[5, 6, 7], [8]], SamplingConfig(threshold=2.0, eos_fill=False, min_per_step=4), False,
                   hole_tokens=10, max_new_tokens=10)
    assert out.tokens_per_step == [4, 4, 2]


def _usable(canvas):
    return (canvas > 2)  # not mask / eos / bos


def test_copy_prior_favours_what_followed_the_same_token_and_longer_matches():
    # canvas: 9 4 5 | 8 4 6 | 8 4 [M]: after "4", 5 and 6 both followed once, but "8 4" was
    # followed by 6: the longer match (2 tokens) counts double
    canvas = torch.tensor([2, 9, 4, 5, 8, 4, 6, 8, 4, 0, 1])
    flat = torch.zeros(1, 16)
    p = copy_prior(flat, canvas, torch.tensor([9]), _usable(canvas), 0.5).exp()[0]
    assert p[6] > p[5] > p[7]
    assert torch.allclose(p[[5, 6]], torch.tensor([0.5 / 16 + 0.5 / 3, 0.5 / 16 + 0.5 * 2 / 3]))
    assert torch.isclose(p.sum(), torch.tensor(1.0))
    # order 1: single tokens only, the two followers tie
    p1 = copy_prior(flat, canvas, torch.tensor([9]), _usable(canvas), 0.5, order=1).exp()[0]
    assert torch.isclose(p1[5], p1[6])


def test_copy_prior_looks_right_too_and_leaves_slots_without_evidence_alone():
    canvas = torch.tensor([2, 7, 3, 0, 0, 3, 1])  # "7 3" earlier: the slot before 3 favours 7
    logits = torch.randn(2, 16)
    out = copy_prior(logits, canvas, torch.tensor([3, 4]), _usable(canvas), 0.4)
    assert torch.allclose(out[0], torch.log_softmax(logits[0], -1), atol=1e-5)  # "3" was followed only by EOS
    assert out[1].exp()[7] > torch.softmax(logits[1], -1)[7] + 0.3
    same = copy_prior(logits, canvas, torch.tensor([3, 4]), _usable(canvas), 0.0)
    assert torch.allclose(same, torch.log_softmax(logits, -1), atol=1e-5)


def test_copy_weight_in_the_loop_copies_a_repeated_sequence(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    ctx = [5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5]
    cfg = SamplingConfig(eos_fill=False, eos_frontier=False)
    plain = generate(model, [ctx, []], cfg, False, hole_tokens=4, max_new_tokens=4)
    copied = generate(model, [ctx, []], replace(cfg, copy_weight=1.0), False, hole_tokens=4, max_new_tokens=4)
    assert copied.fills == [[6, 7, 8, 9]]
    assert plain.fills != copied.fills


def test_block_window_commits_from_the_frontier_only():
    # every slot is confident: without a window the whole hole goes in one step, with block=2
    # two slots per step, leftmost first (the far slots' text is the same, the order is not)
    model = ScriptedModel(lambda p: 5)
    cfg = SamplingConfig(eos_fill=False, eos_frontier=False)
    assert _run(model, [[3], [9]], cfg, hole_tokens=6, max_new_tokens=6).tokens_per_step == [6]
    out = _run(model, [[3], [9], [8]], replace(cfg, block=2, min_per_step=4), hole_tokens=5, max_new_tokens=5)
    assert out.tokens_per_step == [4, 4, 2]  # two per hole and step, both holes at once
    assert in_block(torch.tensor([0, 0, 0, 1, 1]), 2, 2).tolist() == [True, True, False, True, True]
    assert in_block(torch.tensor([0, 1]), 2, None).all()


class UnsureAt(ScriptedModel):
    """Token 5 everywhere; confident (p ~ 1) except at the positions in `weak` (p ~ 0.15)."""

    def __init__(self, weak: set[int]) -> None:
        super().__init__(lambda p: 5)
        self.weak = weak

    def logits(self, h):
        out = super().logits(h)
        for i, p in enumerate(h[:, 0].long().tolist()):
            if p in self.weak:
                out[i] = 0.0
                out[i, 5] = 1.0
        return out


def test_contiguous_rule_commits_runs_from_the_frontier_only():
    # hole slots at canvas positions 2..7; position 4 is unsure. The threshold rule commits every
    # confident slot, leaving a gap at 4; the contiguous rule stops the run there, then forces 4
    # and commits the confident rest behind it
    cfg = SamplingConfig(eos_fill=False, eos_frontier=False)
    gap = _run(UnsureAt({4}), [[3], [9]], cfg, hole_tokens=6, max_new_tokens=6)
    assert gap.tokens_per_step == [5, 1]
    run = _run(UnsureAt({4}), [[3], [9]], replace(cfg, contiguous=True), hole_tokens=6, max_new_tokens=6)
    assert run.tokens_per_step == [2, 4] and run.fills == [[5] * 6]
    # with a window, the run stops at the window's edge
    win = _run(UnsureAt(set()), [[3], [9]], replace(cfg, contiguous=True, block=4), hole_tokens=6, max_new_tokens=6)
    assert win.tokens_per_step == [4, 2]
    conf = torch.tensor([0.95, 0.5, 0.99, 0.2, 0.95])
    hole = torch.tensor([0, 0, 0, 1, 1])
    assert frontier_run(conf, hole, 2, 0.9, torch.tensor([1, 1])).tolist() == [True, False, False, True, True]
    assert frontier_run(conf, hole, 2, 0.9, torch.tensor([2, 1])).tolist() == [True, True, True, True, True]


def test_factor_rule_commits_the_confident_leaders():
    # hole 0: 0.99 (always), 0.9 >= 1 - 1/3, 0.5 < 1 - 1/4 -> 2; hole 1: 0.3 alone -> 1
    conf = torch.tensor([0.5, 0.99, 0.3, 0.9])
    hole = torch.tensor([0, 0, 1, 0])
    assert factor_commits(conf, hole, 3, 1.0).tolist() == [2, 1, 0]
    assert factor_commits(conf, hole, 3, 2.5).tolist() == [3, 1, 0]  # 0.5 >= 1 - 2.5/4


def test_factor_rule_in_the_loop_commits_more_than_the_threshold_alone(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    cfg = SamplingConfig(threshold=2.0, eos_fill=False)
    plain = generate(model, [[5, 6, 7], [8]], cfg, False, hole_tokens=8, max_new_tokens=8)
    wide = generate(model, [[5, 6, 7], [8]], replace(cfg, factor=1e6), False, hole_tokens=8, max_new_tokens=8)
    assert plain.tokens_per_step == [1] * 8
    assert wide.tokens_per_step == [8] and wide.forward_passes == 1  # a huge factor admits every row


def test_cancellation_between_steps(tiny_ckpt):
    model, _ = load_model(tiny_ckpt)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    out = generate(model, [[5, 6], [8]], SamplingConfig(threshold=2.0), False, hole_tokens=8,
                   max_new_tokens=8, should_stop=stop)
    assert out.cancelled and out.fills == [[]]
    assert len(out.tokens_per_step) == 2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_temperature_sampling_is_seeded(tiny_ckpt, device):
    """On CUDA the generator must live on the model's device (a CPU generator with CUDA
    probabilities makes torch.multinomial fail)."""
    model, _ = load_model(tiny_ckpt, device=device)
    cfg = SamplingConfig(temperature=1.0, seed=7, threshold=2.0)
    run = lambda c: generate(model, [[5, 6], [8]], c, False, hole_tokens=8, max_new_tokens=8).fills  # noqa: E731
    assert run(cfg) == run(cfg)
    assert any(run(replace(cfg, seed=s)) != run(cfg) for s in range(8, 12))


def test_zero_budget_makes_no_forward_pass():
    model = ScriptedModel(lambda p: 5)
    out = _run(model, [[3], [4]], hole_tokens=8, max_new_tokens=0)
    assert out.fills == [[]] and out.forward_passes == 0 and model.calls == 0


def test_factor_rule_without_a_sync_matches_the_loop():
    from engine.samplers import factor_commits_ref, min_commit

    g = torch.Generator().manual_seed(3)
    for _ in range(50):
        m = int(torch.randint(1, 30, (1,), generator=g))
        conf = torch.rand(m, generator=g) ** 0.3
        hole = torch.randint(0, 4, (m,), generator=g)
        for f in (0.5, 1.0, 2.0):
            assert factor_commits(conf, hole, 5, f).tolist() == factor_commits_ref(conf, hole, 5, f).tolist()
    assert [min_commit(r, s) for r, s in ((10, 4), (3, 5), (0, 2), (5, 1), (4, 0))] == [3, 1, 0, 5, 4]


class RankedModel(ScriptedModel):
    """Logits per position from a script of {token: score} (everything else -20)."""

    def logits(self, h):
        out = torch.full((h.shape[0], self.args.vocab_size), -20.0)
        for i, p in enumerate(h[:, 0].long().tolist()):
            for t, score in self.script(p).items():
                out[i, t] = score
        return out


def test_nonempty_fill_may_not_end_on_whitespace_alone():
    blank = torch.zeros(A.vocab_size, dtype=torch.bool)
    blank[[4, 6]] = True  # 4: indentation, 6: a blank line break
    # one slot per step, left to right (the shipped decoding); canvas: bos, 3, slots 2..: slot 2 is sure of indentation, slot 3 prefers EOS over text 5
    script = lambda p: {4: 20.0} if p == 2 else ({1: 20.0, 5: 10.0} if p == 3 else {1: 20.0})  # noqa: E731
    off = _run(RankedModel(script), [[3], [9]], SamplingConfig(block=1, nonempty=False), hole_tokens=4, max_new_tokens=4,
               blank_ids=blank)
    assert off.fills == [[4]]  # indentation, then the end: a suggestion of nothing
    on = _run(RankedModel(script), [[3], [9]], SamplingConfig(block=1), hole_tokens=4, max_new_tokens=4, blank_ids=blank)
    assert on.fills == [[4, 5]]  # the end is barred until the fill holds text; after it, EOS is fine
    # single-line: a whitespace-only line break would stop the fill just the same
    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[[6, 7]] = True  # 7: text with a line break (it may stop an empty fill: it is not blank)
    script = lambda p: {4: 20.0} if p == 2 else ({6: 20.0, 5: 10.0} if p == 3 else {1: 20.0})  # noqa: E731
    off = _run(RankedModel(script), [[3], [9]], SamplingConfig(block=1, nonempty=False), hole_tokens=4, max_new_tokens=4,
               blank_ids=blank, stop_ids=stop)
    assert off.fills == [[4, 6]]
    on = _run(RankedModel(script), [[3], [9]], SamplingConfig(block=1), hole_tokens=4, max_new_tokens=4,
               blank_ids=blank, stop_ids=stop)
    assert on.fills == [[4, 5]]
    script = lambda p: {4: 20.0} if p == 2 else ({7: 20.0, 5: 10.0} if p == 3 else {1: 20.0})  # noqa: E731
    on = _run(RankedModel(script), [[3], [9]], SamplingConfig(block=1), hole_tokens=4, max_new_tokens=4,
               blank_ids=blank, stop_ids=stop)
    assert on.fills == [[4, 7]]


def test_nonempty_keeps_a_slot_whose_only_allowed_tokens_are_blank_stops():
    blank = torch.zeros(A.vocab_size, dtype=torch.bool)
    blank[6] = True
    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[6] = True
    only6 = torch.zeros(A.vocab_size, dtype=torch.bool)
    only6[6] = True  # token healing allows only the blank stop in the first slot
    out = _run(RankedModel(lambda p: {6: 20.0, 5: 10.0}), [[3], [9]], hole_tokens=4, max_new_tokens=4,
               blank_ids=blank, stop_ids=stop, first=FirstSlot(only6, stop=only6))
    assert out.fills == [[6]]  # not a masked-out row committing an arbitrary token


def _chain():
    """A lead split into two tokens: slot 0 takes 6 (the whole lead) or 7 (its first line, a
    partial lead), and after 7 the next slot must take 8 or 9 (the rest of it); 9 ends a fill
    elsewhere but not there."""
    whole = torch.zeros(A.vocab_size, dtype=torch.bool)
    whole[[6, 7]] = True
    after = torch.zeros(A.vocab_size, dtype=torch.bool)
    after[[8, 9]] = True
    rest = FirstSlot(after, stop=torch.zeros(A.vocab_size, dtype=torch.bool), lead="r")
    return FirstSlot(whole, stop=torch.zeros(A.vocab_size, dtype=torch.bool), lead="wr", partial=(7,),
                     rest=lambda tok: rest if tok == 7 else None)


def test_a_partial_lead_constrains_the_slot_after_it():
    stop = torch.zeros(A.vocab_size, dtype=torch.bool)
    stop[9] = True
    # canvas: bos, 3, slots 2..: slot 0 wants 7 (the partial lead), slot 1 wants 5, slot 2 wants 9
    script = lambda p: {2: 7, 3: 5, 4: 9}.get(p, 5)  # noqa: E731
    ltr = SamplingConfig(block=1)
    out = _run(ScriptedModel(script), [[3], [12]], ltr, hole_tokens=6, max_new_tokens=6, stop_ids=stop,
               first=_chain())
    assert out.fills == [[7, 8, 9]]  # slot 1 had to take the rest of the lead; 9 ends the fill after it
    # 9 where the rest of the lead is: its own stop rule says it does not end the fill there
    out = _run(ScriptedModel(lambda p: {2: 7, 3: 9}.get(p, 5)), [[3], [12]], ltr, hole_tokens=4, max_new_tokens=4,
               stop_ids=stop, first=_chain())
    assert out.fills == [[7, 9, 5, 5]]
    # the whole lead at once: nothing more is constrained
    out = _run(ScriptedModel(lambda p: 6 if p == 2 else 5), [[3], [12]], ltr, hole_tokens=4, max_new_tokens=4,
               first=_chain())
    assert out.fills == [[6, 5, 5, 5]]


def test_a_partial_lead_is_offered_to_left_to_right_decodes_only():
    """With slots committed in any order the slot after a partial lead could commit first,
    unconstrained: there the lead must come whole."""
    script = lambda p: 7 if p == 2 else 5  # noqa: E731
    out = _run(ScriptedModel(script), [[3], [12]], SamplingConfig(), hole_tokens=4, max_new_tokens=4,
               first=_chain())
    assert out.fills[0][0] == 6
    out = _run(ScriptedModel(script), [[3], [12]], SamplingConfig(sampler="naive"), hole_tokens=4,
               max_new_tokens=4, first=_chain())
    assert out.fills[0][0] == 6


def test_the_canvas_leads_with_bos_else_eos():
    """Inference canvases and training rows start with one lead id (`ModelArgs.lead_id`): BOS, or
    EOS for a vocabulary without BOS (SmolLM2's), so a shifted family's first slot has a row."""
    from engine.fills import canvas

    with_bos, without = ModelArgs(bos_id=2, eos_id=1), ModelArgs(bos_id=None, eos_id=7)
    assert (with_bos.lead_id, without.lead_id) == (2, 7)
    ids, starts = canvas(without, [[10, 11], [12]], [[0, 0]])
    assert ids == [7, 10, 11, 0, 0, 12, 7] and starts == [3]
    assert canvas(with_bos, [[10], [12]], [[0]])[0][0] == 2


class SpreadModel(ScriptedModel):
    """Like ScriptedModel, but each position has a distribution: `script(p)` -> {token: prob}."""

    def logits(self, h):
        out = torch.full((h.shape[0], self.args.vocab_size), -1e4)
        for i, p in enumerate(h[:, 0].long().tolist()):
            for t, prob in self.script(p).items():
                out[i, t] = float(torch.log(torch.tensor(prob)))
        return out


def test_scores_are_the_mean_log_probability_of_each_holes_committed_tokens():
    """Per hole: the committed tokens' log-probabilities under the distribution the decode chose
    them from (after its rules: forbidden ids out, EOS only at the frontier), averaged; growth
    rounds and the token that ends the fill count, the slots an end fills do not."""
    import math

    # hole 0 at canvas 2..: three slots where 5 has 0.5 and 6 has 0.25, then EOS 0.9 / 5 0.1
    # (EOS ends the fill; the slots after it are filled without being chosen)
    def script(p):
        if p < 5:
            return {5: 0.5, 6: 0.25}
        if p == 5:
            return {1: 0.9, 5: 0.1}
        return {6: 0.4, 7: 0.4, A.mask_id: 0.2}  # hole 1's slots: the mask id is forbidden

    for cfg in (SamplingConfig(block=1), SamplingConfig(block=1, draft=0, lazy_rows=False),
                SamplingConfig(block=1, grow_tokens=2)):
        hole = 2 if cfg.grow_tokens == 2 else 8
        out = _run(SpreadModel(script), [[3], [9, 9], [9]], cfg, hole_tokens=hole, max_new_tokens=16)
        assert out.fills[0] == [5, 5, 5]
        assert out.scores[0] == pytest.approx((3 * math.log(0.5 / 0.75) + math.log(0.9)) / 4, abs=1e-4)
        # hole 1: 6 and 7 tie at 0.4 each of the 0.8 left once the mask id is barred; no EOS
        # there, so it grows to the budget
        assert len(out.fills[1]) == 16 and set(out.fills[1]) <= {6, 7}
        assert out.scores[1] == pytest.approx(math.log(0.5), abs=1e-4)
    # nothing to fill: no scores
    assert _run(SpreadModel(script), [[3], [9]], hole_tokens=0).scores == []
