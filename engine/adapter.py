"""Low-rank adapters (LoRA, Hu et al. 2021) on the native transformer, and the shipped-adapter format.

The embedded default model ships only what adaptation trained: LoRA factors for the linear maps of
the upper (bidirectional) layers, plus any fully trained small tensors and, with `mask_row`, the
mask token's input embedding (`tok_emb.mask_row`, one row), in `adapter.safetensors` beside a
config.json that names its base (`dlsp_base`) and its adapter shape (`dlsp_adapter`).
`engine.assembly` merges them into the base weights on first load.

Works on modules and tensors only; knows nothing about files of the base or about training loops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from engine.model import Transformer

TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@dataclass(frozen=True)
class AdapterConfig:
    """Which layers and maps carry LoRA factors, and their rank and scale (alpha / rank)."""

    first_layer: int
    rank: int = 32
    alpha: float = 32.0
    targets: tuple[str, ...] = TARGETS
    full: tuple[str, ...] = field(default=())  # native names of tensors trained in full (e.g. norms)
    # the mask token's input embedding row is trained too (`MaskRowEmbedding`): the frozen causal
    # lower layers read every masked slot through it, so it shapes what the suffix's rows carry up
    # to the open layers; every other token's rows, the tied head and the prefix stay the base's
    mask_row: bool = False
    # one rank per layer from `first_layer` (empty: `rank` for every one of them); the scale is
    # alpha / rank for all, so a layer's rank only sets its factors' shapes (a lower, causal layer
    # may carry fewer directions than an upper, bidirectional one)
    layer_ranks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.layer_ranks and any(r < 1 for r in self.layer_ranks):
            raise ValueError(f"layer ranks must be >= 1, got {list(self.layer_ranks)}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def rank_at(self, layer: int) -> int:
        """The rank of layer `layer`'s factors (`layer` >= `first_layer`)."""
        return self.layer_ranks[layer - self.first_layer] if self.layer_ranks else self.rank

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"], d["full"] = list(self.targets), list(self.full)
        if self.layer_ranks:
            d["layer_ranks"] = list(self.layer_ranks)
        else:
            del d["layer_ranks"]  # older readers know only uniform ranks
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AdapterConfig:
        return cls(first_layer=int(d["first_layer"]), rank=int(d["rank"]), alpha=float(d["alpha"]),
                   targets=tuple(d.get("targets", TARGETS)), full=tuple(d.get("full", ())),
                   mask_row=bool(d.get("mask_row", False)),
                   layer_ranks=tuple(int(r) for r in d.get("layer_ranks") or ()))


MASK_ROW = "tok_emb.mask_row"  # the shipped name of the trained mask embedding row


class MaskRowEmbedding(nn.Module):
    """An embedding whose `mask_id` row is a separate trainable vector; every other row is the
    wrapped (frozen, possibly tied) table's. `weight` stays the wrapped table's."""

    def __init__(self, base: nn.Embedding, mask_id: int) -> None:
        super().__init__()
        self.base = base
        self.mask_id = mask_id
        self.row = nn.Parameter(base.weight.detach()[mask_id].clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.base(ids)
        return torch.where((ids == self.mask_id).unsqueeze(-1), self.row.to(x.dtype), x)

    @torch.no_grad()
    def merged(self) -> nn.Embedding:
        """The wrapped table with the row written into it (in place: a tied head's mask row
        changes too, which the engine never proposes)."""
        self.base.weight[self.mask_id] = self.row.to(self.base.weight.dtype)
        return self.base


class LoRALinear(nn.Module):
    """y = base(x) + scale * (x A^T) B^T; A: (r, in) Kaiming-uniform, B: (out, r) zero, so the
    wrapped map starts exactly as the base."""

    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base map with the low-rank update folded in (no extra cost at inference)."""
        self.base.weight += (self.lora_B @ self.lora_A) * self.scale
        return self.base


def add_lora(model: Transformer, cfg: AdapterConfig) -> list[nn.Parameter]:
    """Freeze the model, wrap the target maps of layers >= cfg.first_layer, unfreeze `cfg.full`.

    Returns:
        the trainable parameters.
    """
    if cfg.layer_ranks and len(cfg.layer_ranks) != model.args.n_layers - cfg.first_layer:
        raise ValueError(f"{len(cfg.layer_ranks)} layer ranks for layers {cfg.first_layer}-{model.args.n_layers - 1}")
    for p in model.parameters():
        p.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for i in range(cfg.first_layer, model.args.n_layers):
        block = model.layers[i]
        for name in cfg.targets:
            lin = LoRALinear(getattr(block, name), cfg.rank_at(i), cfg.scale)
            setattr(block, name, lin)
            trainable += [lin.lora_A, lin.lora_B]
    params = dict(model.named_parameters())
    for name in cfg.full:
        p = params[_wrapped_name(name, cfg, model)]
        p.requires_grad_(True)
        trainable.append(p)
    if cfg.mask_row:
        if model.args.mask_id is None:
            raise ValueError("mask_row needs a model with a mask token")
        model.tok_emb = MaskRowEmbedding(model.tok_emb, model.args.mask_id)
        trainable.append(model.tok_emb.row)
    return trainable


def _wrapped_name(native: str, cfg: AdapterConfig, model: Transformer) -> str:
    """Native name -> its name once the map is wrapped (`layers.i.wq.weight` -> `layers.i.wq.base.weight`)."""
    parts = native.split(".")
    if (len(parts) == 4 and parts[0] == "layers" and int(parts[1]) >= cfg.first_layer
            and parts[2] in cfg.targets):
        return ".".join([*parts[:3], "base", parts[3]])
    return native


def adapter_tensors(model: Transformer, cfg: AdapterConfig) -> dict[str, torch.Tensor]:
    """What the adapter ships: `layers.i.<map>.lora_A/B` and the fully trained tensors by native name."""
    out: dict[str, torch.Tensor] = {}
    for i in range(cfg.first_layer, model.args.n_layers):
        for name in cfg.targets:
            lin = getattr(model.layers[i], name)
            out[f"layers.{i}.{name}.lora_A"] = lin.lora_A.detach()
            out[f"layers.{i}.{name}.lora_B"] = lin.lora_B.detach()
    params = dict(model.named_parameters())
    for name in cfg.full:
        out[name] = params[_wrapped_name(name, cfg, model)].detach()
    if cfg.mask_row:
        out[MASK_ROW] = model.tok_emb.row.detach()
    return out


def load_adapter_tensors(model: Transformer, cfg: AdapterConfig, tensors: dict[str, torch.Tensor]) -> None:
    """Copy shipped adapter tensors into a model wrapped by `add_lora` (training warm start)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            if name == MASK_ROW:
                target = "tok_emb.row"
            else:
                target = name if ".lora_" in name else _wrapped_name(name, cfg, model)
            if target not in params:
                raise KeyError(f"adapter tensor {name!r} has no place in this model")
            if tuple(params[target].shape) != tuple(t.shape):
                raise ValueError(f"adapter tensor {name!r} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(params[target].shape)}")
            params[target].copy_(t.to(params[target].dtype))


@torch.no_grad()
def merge_into(state: dict[str, torch.Tensor], cfg: AdapterConfig, tensors: dict[str, torch.Tensor],
               mask_id: int | None = None) -> None:
    """Fold shipped adapter tensors into a native-named base state dict, in place:
    W += scale * B A for every LoRA pair; fully trained tensors replace the base's; a trained
    mask row (`MASK_ROW`) replaces row `mask_id` of the input embedding."""
    for name, t in tensors.items():
        if name == MASK_ROW:
            emb = state.get("tok_emb.weight")
            if mask_id is None or emb is None or not 0 <= mask_id < emb.shape[0] or tuple(t.shape) != (emb.shape[1],):
                raise ValueError(f"adapter tensor {name!r} does not match the base's embedding")
            emb = emb.clone()
            emb[mask_id] = t.to(emb.dtype)
            state["tok_emb.weight"] = emb
        elif name.endswith(".lora_A"):
            stem = name[: -len(".lora_A")]
            b = tensors[f"{stem}.lora_B"].float()
            w = state[f"{stem}.weight"]
            state[f"{stem}.weight"] = w + (b @ t.float()) * cfg.scale
        elif not name.endswith(".lora_B"):
            if name not in state or tuple(state[name].shape) != tuple(t.shape):
                raise ValueError(f"adapter tensor {name!r} does not match the base")
            state[name] = t.float()


def merge_lora(model: Transformer) -> Transformer:
    """Replace every `LoRALinear` by its merged `nn.Linear` and a `MaskRowEmbedding` by its table
    with the row written in (for evaluation during training)."""
    if isinstance(model.tok_emb, MaskRowEmbedding):
        model.tok_emb = model.tok_emb.merged()
    for block in model.layers:
        for name in TARGETS:
            lin = getattr(block, name)
            if isinstance(lin, LoRALinear):
                setattr(block, name, lin.merged())
    return model
