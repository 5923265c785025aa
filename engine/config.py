"""`ModelArgs` (the shape of a checkpoint) and the registry of model families.

A family is a weight-name map plus behaviour (shifted logits or not) and the config.json
dialect its checkpoints use. One native implementation (`engine.model`) serves all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class ModelArgs:
    family: str = "llada"
    vocab_size: int = 4096
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 4
    intermediate_size: int = 704
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_positions: int = 1024
    qkv_bias: bool = False
    tie_embeddings: bool = True
    mask_id: int = 0
    eos_id: int = 1
    pad_id: int = 1
    bos_id: int | None = 2
    expand_id: int | None = None
    # The first `causal_layers` layers attend causally (query i sees keys <= i): an AR-initialised
    # model keeps its pretrained lower layers exact, and their prefix keys/values never change when
    # text after them does (reusable across keystrokes). The layers above are bidirectional.
    causal_layers: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def lead_id(self) -> int:
        """The id every canvas and training row starts with: BOS, else EOS (a shifted family's
        first slot needs a row before it)."""
        return self.bos_id if self.bos_id is not None else self.eos_id

    @property
    def special_ids(self) -> tuple[int, ...]:
        """mask, eos, pad, bos and expand ids that are set, sorted, without repeats."""
        return tuple(sorted({i for i in (self.mask_id, self.eos_id, self.pad_id, self.bos_id, self.expand_id)
                             if i is not None}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Small named configs (gpt-fast style): the embedded default and test sizes.
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=160, max_positions=512),
    "small": dict(dim=256, n_layers=4, n_heads=8, n_kv_heads=4, intermediate_size=704, max_positions=1024),
    "base": dict(dim=320, n_layers=6, n_heads=8, n_kv_heads=4, intermediate_size=864, max_positions=1024),
}


@dataclass(frozen=True)
class Family:
    """How one family of checkpoints names its weights and reads its config.

    Attributes:
        name: registry key, also `ModelArgs.family`.
        shifted: position i-1 predicts token i (Dream-style, from an AR init) instead of i.
        weight_name: native parameter name -> checkpoint tensor name.
        read_config: config.json dict -> ModelArgs.
        write_config: ModelArgs -> config.json dict in this family's dialect.
    """

    name: str
    shifted: bool
    weight_name: Callable[[str], str]
    read_config: Callable[[dict[str, Any]], ModelArgs]
    write_config: Callable[[ModelArgs], dict[str, Any]]


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return None if value is None else int(value)


# ---- dream: Qwen2 parameter names (Dream, Dream-Coder, DiffuCoder, DreamOn, Open-dCoder)

_DREAM_LAYER = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
    "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj",
}


def _dream_weight(native: str) -> str:
    if native == "tok_emb.weight":
        return "model.embed_tokens.weight"
    if native == "norm.weight":
        return "model.norm.weight"
    if native == "lm_head.weight":
        return "lm_head.weight"
    _, idx, mod, leaf = native.split(".")  # layers.{i}.{mod}.{weight|bias}
    return f"model.layers.{idx}.{_DREAM_LAYER[mod]}.{leaf}"


def _dream_read(cfg: dict[str, Any]) -> ModelArgs:
    dim = int(cfg["hidden_size"])
    n_heads = int(cfg["num_attention_heads"])
    return ModelArgs(
        family="dream", vocab_size=int(cfg["vocab_size"]), dim=dim,
        n_layers=int(cfg["num_hidden_layers"]), n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads", n_heads)),
        intermediate_size=int(cfg["intermediate_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        max_positions=int(cfg.get("max_position_embeddings", 4096)),
        qkv_bias=bool(cfg.get("qkv_bias", True)), tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        mask_id=int(cfg["mask_token_id"]), eos_id=int(_first_id(cfg["eos_token_id"])),
        pad_id=int(_first_id(cfg.get("pad_token_id", cfg["eos_token_id"]))),
        bos_id=_first_id(cfg.get("bos_token_id")), expand_id=_first_id(cfg.get("expand_token_id")),
    )


def _dream_write(a: ModelArgs) -> dict[str, Any]:
    cfg = {
        "model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": a.dim,
        "num_hidden_layers": a.n_layers, "num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads,
        "intermediate_size": a.intermediate_size, "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta,
        "max_position_embeddings": a.max_positions, "vocab_size": a.vocab_size, "qkv_bias": a.qkv_bias,
        "tie_word_embeddings": a.tie_embeddings, "hidden_act": "silu", "mask_token_id": a.mask_id,
        "eos_token_id": a.eos_id, "pad_token_id": a.pad_id, "bos_token_id": a.bos_id,
    }
    if a.expand_id is not None:
        cfg["expand_token_id"] = a.expand_id
    return cfg


# ---- llada: the OLMo-derived names LLaDA checkpoints use for their LLaMA-shaped body

_LLADA_LAYER = {
    "attn_norm": "attn_norm", "ffn_norm": "ff_norm", "wq": "q_proj", "wk": "k_proj", "wv": "v_proj",
    "wo": "attn_out", "w_gate": "ff_proj", "w_up": "up_proj", "w_down": "ff_out",
}


def _llada_weight(native: str) -> str:
    if native == "tok_emb.weight":
        return "model.transformer.wte.weight"
    if native == "norm.weight":
        return "model.transformer.ln_f.weight"
    if native == "lm_head.weight":
        return "model.transformer.ff_out.weight"
    _, idx, mod, leaf = native.split(".")
    return f"model.transformer.blocks.{idx}.{_LLADA_LAYER[mod]}.{leaf}"


def _llada_read(cfg: dict[str, Any]) -> ModelArgs:
    n_heads = int(cfg["n_heads"])
    return ModelArgs(
        family="llada", vocab_size=int(cfg.get("embedding_size") or cfg["vocab_size"]), dim=int(cfg["d_model"]),
        n_layers=int(cfg["n_layers"]), n_heads=n_heads, n_kv_heads=int(cfg.get("n_kv_heads") or n_heads),
        intermediate_size=int(cfg["mlp_hidden_size"]), norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_theta=float(cfg.get("rope_theta", 10000.0)), max_positions=int(cfg.get("max_sequence_length", 4096)),
        qkv_bias=bool(cfg.get("include_qkv_bias", cfg.get("include_bias", False))),
        tie_embeddings=bool(cfg.get("weight_tying", False)), mask_id=int(cfg["mask_token_id"]),
        eos_id=int(_first_id(cfg["eos_token_id"])), pad_id=int(_first_id(cfg.get("pad_token_id", cfg["eos_token_id"]))),
        bos_id=_first_id(cfg.get("bos_token_id")), expand_id=_first_id(cfg.get("expand_token_id")),
    )


def _llada_write(a: ModelArgs) -> dict[str, Any]:
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": a.dim, "n_layers": a.n_layers,
        "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "mlp_hidden_size": a.intermediate_size,
        "rms_norm_eps": a.norm_eps, "rope_theta": a.rope_theta, "max_sequence_length": a.max_positions,
        "vocab_size": a.vocab_size, "embedding_size": a.vocab_size, "include_bias": False,
        "include_qkv_bias": a.qkv_bias, "weight_tying": a.tie_embeddings, "mask_token_id": a.mask_id,
        "eos_token_id": a.eos_id, "pad_token_id": a.pad_id, "bos_token_id": a.bos_id,
        "activation_type": "silu", "block_type": "llama", "rope": True,
    }


# ---- llama: Hugging Face Llama names (the same module names as Qwen2, no QKV bias) with shifted
# logits: an AR Llama (the embedded default is adapted from SmolLM2-135M) turned into a diffusion
# infiller the way Dream was from Qwen2.

def _llama_read(cfg: dict[str, Any]) -> ModelArgs:
    args = _dream_read({"qkv_bias": bool(cfg.get("attention_bias", False)), **cfg})
    return replace(args, family="llama", tie_embeddings=bool(cfg.get("tie_word_embeddings", True)))


def _llama_write(a: ModelArgs) -> dict[str, Any]:
    cfg = _dream_write(a)
    del cfg["qkv_bias"]
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=a.qkv_bias,
               dlsp_family="llama")
    return cfg


def _with_causal(read: Callable[[dict[str, Any]], ModelArgs]) -> Callable[[dict[str, Any]], ModelArgs]:
    """Every dialect carries `dlsp_causal_layers` (0 when absent: all layers bidirectional)."""
    return lambda cfg: replace(read(cfg), causal_layers=int(cfg.get("dlsp_causal_layers", 0)))


def _write_causal(write: Callable[[ModelArgs], dict[str, Any]]) -> Callable[[ModelArgs], dict[str, Any]]:
    return lambda a: {**write(a), **({"dlsp_causal_layers": a.causal_layers} if a.causal_layers else {})}


FAMILIES: dict[str, Family] = {
    "dream": Family("dream", True, _dream_weight, _with_causal(_dream_read), _write_causal(_dream_write)),
    "llada": Family("llada", False, _llada_weight, _with_causal(_llada_read), _write_causal(_llada_write)),
    "llama": Family("llama", True, _dream_weight, _with_causal(_llama_read), _write_causal(_llama_write)),
}

# config.json "model_type" -> family
MODEL_TYPES: dict[str, str] = {"dream": "dream", "dreamon": "dream", "diffucoder": "dream", "qwen2": "dream",
                               "llada": "llada"}


def family_of_config(cfg: dict[str, Any]) -> str | None:
    """The family name a config.json dict belongs to, or None when unknown."""
    if "dlsp_family" in cfg:
        return str(cfg["dlsp_family"])
    return MODEL_TYPES.get(str(cfg.get("model_type", "")).lower())


def args_field_names() -> list[str]:
    return [f.name for f in fields(ModelArgs)]
