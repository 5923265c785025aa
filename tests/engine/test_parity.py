"""Native model vs the `transformers` implementation of the same body, run bidirectionally."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint import load_model
from engine.testing import make_tiny_checkpoint

transformers = pytest.importorskip("transformers")


def _bidirectional_mask(L: int) -> torch.Tensor:
    return torch.zeros(1, 1, L, L)  # additive 4D mask: every position sees every position


def _ids(vocab: int, L: int = 23) -> torch.Tensor:
    return torch.randint(3, vocab, (1, L), generator=torch.Generator().manual_seed(1))


def test_dream_matches_qwen2(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, family="dream", seed=3, qkv_bias=True, tie_embeddings=False)
    model, a = load_model(ckpt)
    cfg = transformers.Qwen2Config(
        vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.intermediate_size,
        num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, max_position_embeddings=a.max_positions,
        tie_word_embeddings=False, attn_implementation="eager")
    ref = transformers.Qwen2ForCausalLM(cfg).eval()
    from safetensors.torch import load_file

    missing, unexpected = ref.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = _ids(a.vocab_size)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=_bidirectional_mask(ids.shape[1])).logits
        got = model(ids)
        causal = ref(input_ids=ids).logits
    assert (got - want).abs().max() <= 1e-4
    assert (got - causal).abs().max() > 1e-3  # the check above really compared bidirectional attention


def test_llada_matches_llama(tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path, family="llada", seed=4, tie_embeddings=False)
    model, a = load_model(ckpt)
    cfg = transformers.LlamaConfig(
        vocab_size=a.vocab_size, hidden_size=a.dim, intermediate_size=a.intermediate_size,
        num_hidden_layers=a.n_layers, num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, max_position_embeddings=a.max_positions,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False, attn_implementation="eager")
    ref = transformers.LlamaForCausalLM(cfg).eval()
    from safetensors.torch import load_file

    rename = {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm", "q_proj": "self_attn.q_proj",
              "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
              "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
    state = {}
    for name, t in load_file(str(ckpt / "model.safetensors")).items():
        if name == "model.transformer.wte.weight":
            state["model.embed_tokens.weight"] = t
        elif name == "model.transformer.ln_f.weight":
            state["model.norm.weight"] = t
        elif name == "model.transformer.ff_out.weight":
            state["lm_head.weight"] = t
        else:
            _, _, _, idx, mod, leaf = name.split(".")
            state[f"model.layers.{idx}.{rename[mod]}.{leaf}"] = t
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    ids = _ids(a.vocab_size)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=_bidirectional_mask(ids.shape[1])).logits
        got = model(ids)
    assert (got - want).abs().max() <= 1e-4


def test_cached_step_matches_full_forward(tiny_ckpt):
    model, a = load_model(tiny_ckpt)
    ids = _ids(a.vocab_size, 40)
    with torch.no_grad():
        h_full, cache = model.prefill(ids)
        idx = torch.tensor([10, 11, 12, 30])
        h_step = model.step(ids[:, idx], idx, cache)
    assert torch.allclose(h_full[0, idx], h_step[0], atol=1e-5)


@pytest.mark.parametrize("rows", [[17], [10, 11, 12, 30], [0, 39]])
def test_cached_step_matches_full_forward_with_causal_lower_layers(tmp_path, rows):
    """The step attends the causal layers' cache only up to its last row (a view, one mask for all
    of them, none for a single row); a row must still see exactly the keys a prefill shows it."""
    ckpt = make_tiny_checkpoint(tmp_path / "m", family="dream", causal_layers=1)
    model, a = load_model(ckpt)
    assert 0 < a.causal_layers < a.n_layers
    ids = _ids(a.vocab_size, 40)
    with torch.no_grad():
        h_full, cache = model.prefill(ids)
        idx = torch.tensor(rows)
        h_step = model.step(ids[:, idx], idx, cache)
    assert torch.allclose(h_full[0, idx], h_step[0], atol=1e-5)


def test_fused_qkv_rotation_matches_the_separate_projections(tmp_path):
    """Inference fuses q/k/v into one matmul and rotates queries and keys in one call; with the
    fused weight equal to the three stacked ones the layer must give the same q, k, v."""
    from kernels.rope import rope_tables

    model, a = load_model(make_tiny_checkpoint(tmp_path / "m", family="dream"))
    blk = model.layers[0]
    fused = torch.nn.Linear(a.dim, blk.wq.out_features + 2 * blk.wk.out_features, bias=a.qkv_bias)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([blk.wq.weight, blk.wk.weight, blk.wv.weight]))
        if a.qkv_bias:
            fused.bias.copy_(torch.cat([blk.wq.bias, blk.wk.bias, blk.wv.bias]))
    x = torch.randn(1, 7, a.dim, generator=torch.Generator().manual_seed(2))
    cos, sin = rope_tables(a.head_dim, torch.arange(3, 10), a.rope_theta)
    with torch.no_grad():
        want = blk.qkv(x, cos, sin)
        blk.fused_qkv = fused
        got = blk.qkv(x, cos, sin)
    for w, g in zip(want, got):
        assert w.shape == g.shape and torch.allclose(w, g, atol=1e-5)
