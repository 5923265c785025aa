"""LoRA adapters, causal lower layers, gradual attention opening and the shifted objective, on
tiny random models (no base package needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from engine.adapter import (
    AdapterConfig,
    LoRALinear,
    adapter_tensors,
    add_lora,
    load_adapter_tensors,
    merge_into,
    merge_lora,
)
from engine.config import FAMILIES, ModelArgs
from engine.model import Transformer
from engine.training.objective import DiffusionLoss, ObjectiveConfig, corrupt

ARGS = ModelArgs(family="llama", vocab_size=64, dim=32, n_layers=4, n_heads=4, n_kv_heads=2,
                 intermediate_size=48, max_positions=64, mask_id=63, eos_id=0, pad_id=0, bos_id=None,
                 causal_layers=2)


def _model(args: ModelArgs = ARGS, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(args)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(1.0, 0.1) if p.dim() == 1 else p.normal_(0.0, 0.2)
    return m.eval()


def _ids(n: int = 20, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, 62, (1, n), generator=torch.Generator().manual_seed(seed))


def test_lora_starts_as_base_and_merges_exactly():
    m = _model()
    ids = _ids()
    with torch.no_grad():
        want = m(ids)
    acfg = AdapterConfig(first_layer=2, rank=4, alpha=8.0)
    trainable = add_lora(m, acfg)
    assert isinstance(m.layers[3].wq, LoRALinear) and not isinstance(m.layers[1].wq, LoRALinear)
    assert len(trainable) == 2 * 2 * 7 and all(p.requires_grad for p in trainable)
    assert not any(p.requires_grad for n, p in m.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        assert torch.allclose(m(ids), want, atol=1e-6)  # B = 0: exactly the base
        for p in trainable:
            if p.shape[1] == 4:  # lora_B
                p.normal_(0.0, 0.1)
        lora_out = m(ids)
    assert (lora_out - want).abs().max() > 1e-3
    # merging the shipped tensors into a base state dict gives the same function
    base = _model()
    state = dict(base.state_dict())
    merge_into(state, acfg, adapter_tensors(m, acfg))
    base.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(base(ids), lora_out, atol=1e-4)
        assert torch.allclose(merge_lora(m)(ids), lora_out, atol=1e-4)


def test_causal_lower_layers_do_not_see_later_tokens():
    """With every layer causal, the prefix's outputs ignore what follows; with the upper layers
    open they do not."""
    causal = _model(replace(ARGS, causal_layers=ARGS.n_layers))
    mixed = _model(ARGS)
    a, b = _ids(seed=1), _ids(seed=2)
    b[0, :10] = a[0, :10]
    with torch.no_grad():
        assert torch.allclose(causal(a)[0, :10], causal(b)[0, :10], atol=1e-5)
        assert not torch.allclose(mixed(a)[0, :10], mixed(b)[0, :10], atol=1e-3)
        # lower causal layers: their cached keys of the first 10 positions match too
        _, ca = mixed.prefill(a)
        _, cb = mixed.prefill(b)
        for layer in range(ARGS.causal_layers):
            assert torch.allclose(ca[layer][0][:, :, :10], cb[layer][0][:, :, :10], atol=1e-5)
        assert not torch.allclose(ca[-1][0][:, :, :10], cb[-1][0][:, :, :10], atol=1e-3)


def test_cached_step_matches_prefill_with_causal_layers():
    m = _model()
    ids = _ids(24)
    rows = torch.arange(8, 14)
    with torch.no_grad():
        full, cache = m.prefill(ids)
        stepped = m.step(ids[:, rows], rows, cache)
    assert torch.allclose(stepped, full[:, rows], atol=1e-5)


def test_open_frac_ramps_from_causal_to_bidirectional():
    m = _model()
    causal = _model(replace(ARGS, causal_layers=ARGS.n_layers))
    ids = _ids()
    with torch.no_grad():
        assert torch.allclose(m.prefill(ids, keep_cache=False, open_frac=0.0)[0],
                              causal.prefill(ids, keep_cache=False)[0], atol=1e-5)
        assert torch.allclose(m.prefill(ids, keep_cache=False, open_frac=1.0)[0],
                              m.prefill(ids, keep_cache=False)[0], atol=1e-6)
        half = m.prefill(ids, keep_cache=False, open_frac=0.5)[0]
        assert not torch.allclose(half, m.prefill(ids, keep_cache=False)[0], atol=1e-4)


def test_shifted_loss_reads_the_row_before_each_masked_token():
    m = _model()
    clean = _ids(12)
    clean[0, 0] = ARGS.eos_id
    mask = torch.zeros_like(clean, dtype=torch.bool)
    mask[0, [4, 7]] = True
    noisy = torch.where(mask, torch.full_like(clean, ARGS.mask_id), clean)
    loss, _ = DiffusionLoss(m, shifted=FAMILIES["llama"].shifted)(noisy, clean, mask, mask.float())
    with torch.no_grad():
        logits = m(noisy)[0]
    want = F.cross_entropy(logits[[3, 6]], clean[0, [4, 7]], reduction="sum")
    assert torch.allclose(loss, want, atol=1e-4)


def test_adaptation_objective_learns_with_only_the_adapter():
    """A few steps of the FIM objective on a repeated pattern lower the loss; base weights stay fixed."""
    m = _model().train()
    frozen = {k: v.clone() for k, v in m.state_dict().items()}
    acfg = AdapterConfig(first_layer=2, rank=8, alpha=16.0)
    params = add_lora(m, acfg)
    opt = torch.optim.AdamW(params, lr=1e-2)
    row = torch.tensor([0] + [5, 6, 7, 8, 9, 1] * 5)[None].repeat(4, 1)  # (4, 31)
    is_nl = torch.zeros(ARGS.vocab_size, dtype=torch.bool)
    is_nl[1] = True
    g = torch.Generator().manual_seed(0)
    loss_fn = DiffusionLoss(m, shifted=True)
    losses = []
    for step in range(60):
        noisy, clean, mask, w = corrupt(row, ARGS, is_nl, ObjectiveConfig(fim_rate=1.0), g)
        loss, _ = loss_fn(noisy, clean, mask, w, open_frac=min(1.0, step / 20))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    for k, v in m.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k.replace(".base.", ".")])


def test_mask_row_trains_only_the_masked_slots_input_and_merges_exactly():
    """`mask_row`: the mask token's input row is its own parameter. Text without masks reads
    exactly as before; the shipped row merges into the embedding table to the same function."""
    m = _model()
    ids = _ids()
    ids[0, 5:9] = ARGS.mask_id
    plain = _ids(seed=3)
    with torch.no_grad():
        want, want_plain = m(ids), m(plain)
    acfg = AdapterConfig(first_layer=2, rank=4, alpha=8.0, mask_row=True)
    assert AdapterConfig.from_dict(acfg.to_dict()) == acfg
    assert AdapterConfig.from_dict({**acfg.to_dict(), "mask_row": None}).mask_row is False  # older configs
    trainable = add_lora(m, acfg)
    assert any(p is m.tok_emb.row for p in trainable) and m.tok_emb.weight is m.lm_head.weight  # still tied
    with torch.no_grad():
        assert torch.allclose(m(ids), want, atol=1e-6)  # the row starts as the base's
        m.tok_emb.row.normal_(0.0, 1.0)
        emb = m.tok_emb(ids)
        assert torch.equal(emb[0, 5:9], m.tok_emb.row.expand(4, -1))
        assert torch.equal(emb[0, :5], m.tok_emb.base(ids)[0, :5])
        assert torch.allclose(m(plain), want_plain, atol=1e-6)  # no mask in the text: nothing moved
        out = m(ids)
    assert (out - want).abs().max() > 1e-3
    # the gradient reaches the row, never the frozen (tied) table
    m.train()
    m(ids).logsumexp(-1).sum().backward()
    assert m.tok_emb.row.grad is not None and m.tok_emb.row.grad.abs().sum() > 0
    assert m.tok_emb.base.weight.grad is None
    m.eval()
    tensors = adapter_tensors(m, acfg)
    assert tensors["tok_emb.mask_row"].shape == (ARGS.dim,)
    base = _model()
    state = dict(base.state_dict())
    try:
        merge_into(dict(state), acfg, tensors)
        raise AssertionError("a mask row without the mask id must not merge")
    except ValueError:
        pass
    merge_into(state, acfg, tensors, mask_id=ARGS.mask_id)
    base.load_state_dict(state)
    # the merged table is tied to the head, so the mask token's own logit moves with the row: the
    # engine never proposes the mask; every other logit is the trained model's
    keep = slice(0, ARGS.mask_id)
    with torch.no_grad():
        assert torch.allclose(base(ids)[..., keep], out[..., keep], atol=1e-4)
        assert torch.allclose(base(plain)[..., keep], want_plain[..., keep], atol=1e-4)
    # a training run resumes the row from its checkpoint tensors
    again = _model()
    add_lora(again, acfg)
    load_adapter_tensors(again, acfg, tensors)
    with torch.no_grad():
        assert torch.allclose(again(ids), out, atol=1e-5)
        assert torch.allclose(merge_lora(again)(ids)[..., keep], out[..., keep], atol=1e-4)


def test_layer_ranks_give_each_layer_its_shape_and_merge_exactly():
    """`layer_ranks`: a causal layer below the open ones may carry factors of a lower rank; the
    scale is alpha / rank for every layer, so merging the shipped tensors computes the same
    function; the model card counts each layer at its own rank."""
    from engine.training.model_card_adapted import _adapter_params, _lower_ranks

    m = _model()
    ids = _ids()
    acfg = AdapterConfig(first_layer=1, rank=4, alpha=4.0, layer_ranks=(2, 4, 4))
    assert [acfg.rank_at(i) for i in (1, 2, 3)] == [2, 4, 4]
    assert AdapterConfig.from_dict(acfg.to_dict()) == acfg
    assert "layer_ranks" not in replace(acfg, layer_ranks=()).to_dict()  # uniform: read by older code
    add_lora(m, acfg)
    assert m.layers[1].w_up.lora_A.shape == (2, 32) and m.layers[2].w_up.lora_A.shape == (4, 32)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.1)
        want = m(ids)
    base = _model()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    merge_into(state, acfg, adapter_tensors(m, acfg))
    base.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(base(ids), want, atol=1e-5)
    trained = sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    assert _adapter_params(ARGS, acfg.to_dict()) == trained
    assert _adapter_params(ARGS, replace(acfg, layer_ranks=()).to_dict()) == trained * 12 // 10
    assert _lower_ranks(acfg.to_dict()) == " (rank 2 on layers 1-1)"
    with pytest.raises(ValueError, match="layer ranks"):
        AdapterConfig(first_layer=1, rank=4, layer_ranks=(0, 4, 4))
    with pytest.raises(ValueError, match="layer ranks"):  # one rank per layer from first_layer
        add_lora(_model(), replace(acfg, layer_ranks=(2, 4)))
