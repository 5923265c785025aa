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
