"""Adapting the pretrained AR base (SmolLM2-135M) into a masked-diffusion infiller with LoRA.

Recipe (after Dream / DiffuLLaMA, at the scale of 2 CPU cores):
  * shifted logits (position i-1 predicts token i), so at the first masked slot the untrained
    model is exactly the AR model's next-token prediction;
  * the lower `causal_layers` layers stay causal and frozen (the base's knowledge and its prefix
    keys/values are kept exactly); the upper layers get LoRA factors and learn to attend ahead;
  * attention ahead of the query is opened gradually in the upper layers (`open_frac` ramps from
    0 to 1 over `--open-steps`), so training starts from the AR model and not from a broken one;
  * FIM-shaped rows: a line, a few lines or a span masked with the suffix visible, EOS padding
    after the middle so fills learn where they end (see `engine.training.objective`).

Only the adapter is saved in run checkpoints and shipped (`engine.assembly` rebuilds the model).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from engine.adapter import AdapterConfig, adapter_tensors, add_lora, load_adapter_tensors
from engine.assembly import ADAPTER_FILE, read_adapter
from engine.config import FAMILIES, ModelArgs
from engine.gguf_import import base_info, read_base
from engine.model import Transformer

EXPORT_POSITIONS = 2048  # what the engine may use: the causal lower layers were pretrained at 8k


def build(a: argparse.Namespace, run_dir: Path) -> tuple[Transformer, ModelArgs, AdapterConfig, list, Path]:
    """The base with LoRA on its upper layers; writes the tokenizer into the run folder.

    Returns:
        model, its args, adapter config, trainable parameters, tokenizer.json path.
    """
    base = read_base()
    model = base.build(causal_layers=a.causal_layers, max_positions=max(a.seq_len, EXPORT_POSITIONS))
    args = model.args
    acfg = adapter_config(a, args.n_layers)
    trainable = add_lora(model, acfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_path = run_dir / "tokenizer.json"
    tok_path.write_text(base.tokenizer_json, encoding="utf-8")
    return model, args, acfg, trainable, tok_path


def adapter_config(a: argparse.Namespace, n_layers: int) -> AdapterConfig:
    """The run's adapter: LoRA at `--lora-rank` on the open layers (from `--causal-layers`) and,
    with `--lora-from` below them, at `--lora-rank-lower` on the causal layers from there (they
    stay causal, so the prefix's keys/values stay reusable; they stop being the base's)."""
    first = a.causal_layers if getattr(a, "lora_from", None) is None else a.lora_from
    if not 0 <= first <= a.causal_layers:
        raise SystemExit(f"--lora-from must be between 0 and --causal-layers ({a.causal_layers}), got {first}")
    ranks: tuple[int, ...] = ()
    if first < a.causal_layers:
        lower = getattr(a, "lora_rank_lower", None) or a.lora_rank
        ranks = (lower,) * (a.causal_layers - first) + (a.lora_rank,) * (n_layers - a.causal_layers)
    return AdapterConfig(first_layer=first, rank=a.lora_rank, alpha=a.lora_alpha,
                         mask_row=bool(getattr(a, "mask_row", False)), layer_ranks=ranks)


def state(model: Transformer, acfg: AdapterConfig) -> dict[str, torch.Tensor]:
    """What a run checkpoint keeps of the model: the trained tensors only (the base is fixed)."""
    return {k: v.clone() for k, v in adapter_tensors(model, acfg).items()}


def warm_start(model: Transformer, acfg: AdapterConfig, path: Path) -> dict[str, Any]:
    """Load a shipped adapter directory's tensors; returns its `dlsp_training` (for totals).

    A run may add the mask row to an adapter without one (it starts as the base's row), may
    raise the rank (`grow_rank`), and may add LoRA to layers below the shipped adapter's first
    (their factors start with B = 0): in each case the model starts as the shipped one computes."""
    cfg, shipped, tensors = read_adapter(path)
    grows = shipped.rank < acfg.rank
    like = replace(shipped, mask_row=shipped.mask_row or acfg.mask_row)
    if grows:
        like = replace(like, rank=acfg.rank, alpha=acfg.alpha)
    if acfg.first_layer < shipped.first_layer and not shipped.layer_ranks:
        kept = [acfg.rank_at(i) for i in range(shipped.first_layer, model.args.n_layers)]
        if set(kept) == {like.rank}:  # the shipped layers keep their rank: only new ones below them
            like = replace(like, first_layer=acfg.first_layer, layer_ranks=acfg.layer_ranks)
    if like != acfg:  # checked before growing: other layers or maps get this error, not a KeyError
        raise SystemExit(f"{path}: adapter shape {shipped} differs from this run's {acfg}")
    if grows:
        tensors = grow_rank(tensors, shipped, replace(shipped, rank=acfg.rank, alpha=acfg.alpha), model)
    load_adapter_tensors(model, acfg, tensors)
    return cfg.get("dlsp_training", {}) or {}


def grow_rank(tensors: dict[str, torch.Tensor], old: AdapterConfig, new: AdapterConfig,
              model: Transformer) -> dict[str, torch.Tensor]:
    """A shipped adapter's factors at a higher rank, computing the same maps: each `lora_A` takes
    the old rows first and keeps `model`'s fresh (Kaiming) rows after them; each `lora_B` the old
    columns rescaled by old scale / new scale, zeros after them, so B A * scale is unchanged and
    the new directions start at zero with a gradient (their A rows are not zero)."""
    params = dict(model.named_parameters())
    out = {}
    for name, t in tensors.items():
        if ".lora_A" in name:
            grown = params[name].detach().clone().to(t.dtype)
            grown[:old.rank] = t
        elif ".lora_B" in name:
            grown = torch.zeros(t.shape[0], new.rank, dtype=t.dtype)
            grown[:, :old.rank] = t * (old.scale / new.scale)
        else:
            grown = t
        out[name] = grown
    return out


def export(model: Transformer, args: ModelArgs, acfg: AdapterConfig, out: Path, tokenizer: Path,
           meta: dict[str, Any]) -> Path:
    """Write a shippable adapter directory: config.json, adapter.safetensors (fp16), tokenizer.json.
    Keys already in an older export's config that the run does not set (decoding defaults,
    languages) are kept."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in adapter_tensors(model, acfg).items()},
              str(out / ADAPTER_FILE), metadata={"format": "pt"})
    cfg = FAMILIES[args.family].write_config(replace(args, max_positions=EXPORT_POSITIONS))
    try:
        old = json.loads((out / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    keep = {k: v for k, v in old.items() if k in ("dlsp_sampling", "dlsp_languages")}
    cfg.update({"dlsp_base": base_info(), "dlsp_adapter": acfg.to_dict(), "dlsp_languages": ["python"],
                **keep, **meta})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    if tokenizer.resolve() != (out / "tokenizer.json").resolve():
        (out / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    for stale in ("model.safetensors",):  # an adapter directory must not also hold full weights
        (out / stale).unlink(missing_ok=True)
    return out


def open_frac_at(step: int, open_steps: int) -> float:
    """Share of attention ahead of the query let through in the upper layers: 0 -> 1 linearly."""
    return 1.0 if open_steps <= 0 else min(1.0, step / open_steps)
