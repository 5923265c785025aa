"""Load and save Hugging Face style checkpoint directories, safetensors only.

A directory holds `config.json`, `model.safetensors` (or shards with
`model.safetensors.index.json`) and `tokenizer.json`. Every failure raises one
`CheckpointError` that names the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.config import FAMILIES, ModelArgs, family_of_config
from engine.errors import CheckpointError
from engine.model import Transformer, skeleton
from engine.tokenizer import Tokenizer


def read_args(ckpt: Path) -> ModelArgs:
    """Parse config.json into ModelArgs (family detected from model_type)."""
    cfg_path = ckpt / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(cfg_path, "config.json is missing")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(cfg_path, f"not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise CheckpointError(cfg_path, "expected a JSON object")
    family = family_of_config(cfg)
    if family not in FAMILIES:
        known = ", ".join(sorted(FAMILIES))
        raise CheckpointError(cfg_path, f"unknown model family (model_type={cfg.get('model_type')!r}); known: {known}")
    try:
        args = FAMILIES[family].read_config(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"missing or invalid field {exc}") from exc
    problem = _shape_problem(args)
    if problem:
        raise CheckpointError(cfg_path, problem)
    return args


def _shape_problem(a: ModelArgs) -> str | None:
    """A model shape that cannot be built (checked before building, so the error names the file
    instead of surfacing as a division by zero inside the model)."""
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "intermediate_size", "max_positions"):
        if getattr(a, name) < 1:
            return f"{name} must be >= 1 (got {getattr(a, name)})"
    if a.dim % a.n_heads:
        return f"the hidden size {a.dim} is not a multiple of the {a.n_heads} attention heads"
    if a.n_heads % a.n_kv_heads:
        return f"{a.n_heads} attention heads do not divide into {a.n_kv_heads} key/value heads"
    if a.head_dim % 2:
        return f"the head size {a.head_dim} is odd (rotary embeddings need pairs)"
    if not 0 <= a.causal_layers <= a.n_layers:
        return f"dlsp_causal_layers must be between 0 and {a.n_layers} (got {a.causal_layers})"
    return None


def _weight_files(ckpt: Path) -> list[Path]:
    single = ckpt / "model.safetensors"
    if single.is_file():
        return [single]
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise CheckpointError(index, f"invalid shard index: {exc}") from exc
        files = [ckpt / s for s in shards]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f, "shard listed in model.safetensors.index.json is missing")
        return files
    raise CheckpointError(ckpt, "no model.safetensors or model.safetensors.index.json (only safetensors are loaded)")


def _read_tensors(files: list[Path]) -> dict[str, tuple[Path, Any]]:
    """name -> (file, open handle) for every tensor, headers validated."""
    where: dict[str, tuple[Path, Any]] = {}
    for f in files:
        try:
            handle = safe_open(str(f), framework="pt")
            names = list(handle.keys())
        except Exception as exc:  # safetensors raises SafetensorError / OSError on corrupt headers
            raise CheckpointError(f, f"corrupt safetensors file: {exc}") from exc
        for name in names:
            where[name] = (f, handle)
    return where


def load_model(ckpt: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[Transformer, ModelArgs]:
    """Build the native model for a checkpoint and load its weights (shape-checked). An adapter
    directory (config.json with `dlsp_base`) is assembled from the base package first."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(ckpt, "checkpoint directory does not exist")
    from engine.assembly import assemble, is_adapter_dir  # imports the checkpoint reader itself

    if is_adapter_dir(ckpt):  # a shipped adapter: merged into the pinned base on first load, cached
        ckpt = assemble(ckpt)
    args = read_args(ckpt)
    family = FAMILIES[args.family]
    model = skeleton(args)
    tensors = _read_tensors(_weight_files(ckpt))
    state: dict[str, torch.Tensor] = {}
    for native, param in model.state_dict(keep_vars=True).items():
        if native == "lm_head.weight" and args.tie_embeddings:
            continue
        name = family.weight_name(native)
        if name not in tensors:
            raise CheckpointError(ckpt, f"tensor {name!r} is missing from the weights")
        f, handle = tensors[name]
        try:
            t = handle.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f, f"cannot read tensor {name!r}: {exc}") from exc
        if tuple(t.shape) != tuple(param.shape):
            raise CheckpointError(f, f"tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(param.shape)}")
        state[native] = t.to(dtype)
    # every tensor but a tied head is assigned, so the skeleton is never materialised: `to_empty`
    # on meta goes through torch's Python references, which import sympy (~40 MB resident)
    model.load_state_dict(state, strict=False, assign=True)
    if args.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.to(device=device, dtype=dtype).eval(), args


def load_tokenizer(ckpt: str | Path) -> Tokenizer:
    return Tokenizer.from_file(Path(ckpt) / "tokenizer.json")


def save_checkpoint(model: Transformer, out: str | Path, tokenizer_json: str | Path | None = None,
                    dtype: torch.dtype = torch.float16, extra_config: dict[str, Any] | None = None,
                    max_positions: int | None = None) -> Path:
    """Write config.json (in the family's dialect) and model.safetensors; copy tokenizer.json.
    `max_positions` overrides the config's position limit (e.g. the length a model was trained at)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = model.args if max_positions is None else dataclasses.replace(model.args, max_positions=max_positions)
    family = FAMILIES[args.family]
    tensors = {}
    for native, t in model.state_dict().items():
        if native == "lm_head.weight" and args.tie_embeddings:
            continue
        tensors[family.weight_name(native)] = t.detach().to("cpu", dtype).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = family.write_config(args)
    cfg.update(extra_config or {})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    if tokenizer_json is not None and Path(tokenizer_json).resolve() != (out / "tokenizer.json").resolve():
        (out / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
    return out


def checkpoint_languages(ckpt: str | Path) -> tuple[str, ...] | None:
    """The languages a checkpoint's model card says it was evaluated on (`"dlsp_languages"` in
    config.json), or None when it does not say (third-party checkpoints)."""
    try:
        langs = json.loads((Path(ckpt) / "config.json").read_text(encoding="utf-8")).get("dlsp_languages")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs):
        return None
    return tuple(langs) or None
