"""The base's reading as a training prior (`engine.training.prior`, `dlsp train --base-mix`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.config import CONFIGS, ModelArgs
from engine.model import Transformer
from engine.training.objective import DiffusionLoss, ObjectiveConfig, corrupt
from engine.training.prior import BasePrior
from engine.training.train import parse

A = ModelArgs(**{**CONFIGS["tiny"], "vocab_size": 50, "mask_id": 0, "eos_id": 1, "pad_id": 1, "bos_id": 2,
                 "family": "dream"})


def _base(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(**{**A.__dict__, "causal_layers": A.n_layers}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.normal_(1.0, 0.1)
    return model.eval()


def _batch(rows: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    is_nl = torch.zeros(50, dtype=torch.bool)
    is_nl[10] = True
    row = torch.tensor([2] + [5, 6, 10, 7, 8, 10, 9, 9, 10, 11, 12, 10, 13] * 5)
    return row.repeat(rows, 1), is_nl


def test_frontiers_name_each_left_to_right_hole_and_change_nothing_else():
    batch, is_nl = _batch()
    cfg = ObjectiveConfig(fim_rate=1.0, ltr_rate=1.0, holes_per_row=2, max_pad=4)
    plain = corrupt(batch, A, is_nl, cfg, torch.Generator().manual_seed(5))
    frontiers: list[tuple[int, int, int]] = []
    drawn = corrupt(batch, A, is_nl, cfg, torch.Generator().manual_seed(5), frontiers=frontiers)
    assert all(torch.equal(x, y) for x, y in zip(plain, drawn))
    noisy, clean, mask, _ = drawn
    assert len(frontiers) == 2 * len(batch)  # every hole is left to right here
    for b, f, s in frontiers:
        lo, hi = (0, 33) if f < 33 else (33, 66)
        assert mask[b, f] and not mask[b, f - 1] and f - 1 >= lo  # the first masked slot of its hole
        if s >= 0:  # the suffix's first token: right after the hole's masked tail
            assert lo < s < hi and mask[b, s - 1] and not mask[b, s] and clean[b, s] != A.eos_id
        else:  # the hole's tail runs to the chunk's end
            assert mask[b, f:hi].all()


def test_prior_reads_the_text_without_pads_and_scores_ending_as_the_suffix():
    """At a frontier the prior is the base's causal next-token distribution over the text as
    written (no EOS pads), with the EOS column set to the suffix's first token."""
    base = _base()
    prior = BasePrior(base, weight=0.5)
    text = [2, 5, 6, 10, 7, 8, 10, 9, 9, 10, 11, 12]
    # prefix 5 6 10 | middle 7 8 10 (decoded: 7) | 3 pads | suffix 9 9 10 11 12
    clean = torch.tensor([[2, 5, 6, 10, 7, 8, 10, 1, 1, 1, 9, 9, 10, 11, 12]])
    at, lp = prior(clean, [(0, 5, 10)])  # frontier at slot 5 (the token 8), suffix from 10
    assert at.nonzero().tolist() == [[0, 5]]
    with torch.no_grad():
        hidden, _ = base.prefill(torch.tensor([text]), keep_cache=False)
        want = F.log_softmax(base.logits(hidden[0, 4]).float(), -1)  # row 4 (the token 7) reads slot 5
    assert torch.allclose(lp[0, 2:], 0.5 * want[2:], atol=1e-5)
    assert lp[0, A.eos_id] == pytest.approx(0.5 * float(want[9]), abs=1e-5)  # ending: 9 comes next
    # a frontier whose suffix is cut off by the chunk's end, or that sits after an EOS, is not read
    assert prior(clean, [(0, 5, -1)]) is None
    assert prior(torch.tensor([[2, 5, 1, 7, 0, 9]]), [(0, 3, 5)]) is None


def test_mixed_loss_is_the_product_of_experts_at_the_frontier_only():
    """With a prior at the frontier slots the loss there is the CE of softmax(log p + prior);
    elsewhere it is unchanged, and a zero prior changes nothing."""
    torch.manual_seed(1)
    model = Transformer(A).eval()
    loss_mod = DiffusionLoss(model, shifted=True)
    batch, is_nl = _batch(4)
    frontiers: list[tuple[int, int, int]] = []
    noisy, clean, mask, w = corrupt(batch, A, is_nl, ObjectiveConfig(fim_rate=1.0, ltr_rate=1.0, holes_per_row=2,
                                                                     max_pad=4), torch.Generator().manual_seed(2),
                                    frontiers=frontiers)
    at = torch.zeros_like(mask)
    for b, f, _ in frontiers:
        at[b, f] = True
    n = int(at.sum())
    plain = loss_mod(noisy, clean, mask, w)[0].detach()
    zero = loss_mod(noisy, clean, mask, w, mix=(at, torch.zeros(n, A.vocab_size)))[0].detach()
    assert float(zero) == pytest.approx(float(plain), rel=1e-5)
    # a prior sure of every frontier's target: those slots cost nothing, the rest as before
    sure = torch.full((n, A.vocab_size), -1e4)
    targets = [int(clean[b, f]) for b, f in sorted((b, f) for b, f, _ in frontiers)]
    sure[torch.arange(n), targets] = 0.0
    mixed = loss_mod(noisy, clean, mask, w, mix=(at, sure))[0].detach()
    with torch.no_grad():
        hidden, _ = model.prefill(noisy, keep_cache=False)
        hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        ce = F.cross_entropy(model.logits(hidden[mask]), clean[mask], reduction="none")
    rest = ~at[mask]
    want = float((ce[rest] * w[mask][rest]).sum()) / len(batch)
    assert float(mixed) == pytest.approx(want, rel=1e-3, abs=1e-4)
    assert float(mixed) < float(plain)
    # gradients reach the model through the mixed slots too
    model.train()
    only = torch.zeros_like(w)
    only[at] = 1.0
    loss, _ = loss_mod(noisy, clean, mask, only, mix=(at, torch.zeros(n, A.vocab_size)))
    loss.backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0


def test_base_mix_needs_the_pretrained_base():
    assert parse(["--base-mix", "1"]).base_mix == 1.0
    assert parse([]).base_mix == 0.0
    for bad in ("-1", "nan", "inf", "x"):  # a weight below 0 would train the product away from the base
        with pytest.raises(SystemExit):
            parse(["--base-mix", bad])
    with pytest.raises(ValueError, match="causal"):
        BasePrior(Transformer(A), 1.0)
