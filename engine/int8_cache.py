"""The int8 model as quantized, kept on disk so later loads skip the quantization.

Quantizing the 135M model is a calibration forward block by block (SmoothQuant scales, then the
int8 weights), for the model and again for the base's upper layers (`engine.expert`): ~8 s of
every load on an idle 2-core machine, ~1 min beside a training run, and a 1 GB peak because the
float32 checkpoint is read whole. The result depends only on the float weights, the calibration
rows and this code, so it is written once (safetensors: int8 weights with their per-channel
scales, the smoothed norms, the int8 embedding rows) beside the adapter's assembled checkpoint
(`engine.assembly`; pruned with it), keyed by all of those, and later loads rebuild the modules
from it: the same int8 values and scales, packed again,
so the model computes exactly what it did after quantizing.

A file that is missing, unreadable or does not fit the model is never fatal: the load quantizes
as before (a corrupt one is said in the log) and writes it again. `KEEP_FILES` most recently
used files are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import torch
from torch import nn

from engine import model as model_mod
from engine import quantize
from engine.config import ModelArgs
from engine.model import Block, Transformer, _no_init, skeleton
from engine.quantize import FUSED_AWAY, QUANTIZED_MATMULS, SMOOTH_ALPHA, Int8Linear, Int8Rows, ShortlistHead

log = logging.getLogger(__name__)

VERSION = 1  # of the file layout and of what quantization computes: bump when either changes
KEEP_FILES = 2  # per assembled checkpoint (with and without the base's layers)
PREFIX = "int8-"


def cache_key(weights: Path, calibration: list[torch.Tensor], base_file: Path | None) -> str:
    """What the int8 model depends on: the float weights (path, size and time of each file), the
    calibration rows, the base's layers file when there is one, the smoothing, torch, and the
    source of the code that quantizes and lays the file out (an edit there re-quantizes once)."""
    h = hashlib.sha256()
    files = sorted(weights.glob("model*.safetensors")) + ([base_file] if base_file is not None else [])
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for ids in calibration:
        h.update(ids.numpy().tobytes())
    h.update(json.dumps([VERSION, SMOOTH_ALPHA, torch.__version__]).encode())
    for mod in (quantize, model_mod, sys.modules[__name__]):  # the code that computes it: a change re-quantizes
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:24]


def _int8_tensors(prefix: str, lin: Int8Linear) -> dict[str, torch.Tensor]:
    w, _ = torch.ops.quantized.linear_unpack(lin._packed)
    out = {f"{prefix}.qweight": w.int_repr(), f"{prefix}.qscale": w.q_per_channel_scales().double()}
    if lin.bias is not None:
        out[f"{prefix}.bias"] = lin.bias
    return out


def _block_tensors(prefix: str, blk: Block) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for leaf in QUANTIZED_MATMULS:
        out.update(_int8_tensors(f"{prefix}{leaf}", getattr(blk, leaf)))
    for name, t in blk.named_parameters():
        if name.split(".")[0] not in QUANTIZED_MATMULS:
            out[f"{prefix}{name}"] = t.detach()
    return out


def save(path: Path, model: Transformer, base: nn.ModuleList | None) -> None:
    """Write the quantized `model` (and the base's quantized upper layers) to `path`, atomically."""
    from safetensors.torch import save_file

    if not all(isinstance(getattr(b, "fused_qkv", None), Int8Linear) for b in model.layers):
        raise ValueError("the model is not quantized block by block")
    head = model.lm_head
    if not isinstance(head, ShortlistHead):
        raise ValueError("the int8 cache holds models with a shortlist head only")
    tensors: dict[str, torch.Tensor] = {}
    for i, blk in enumerate(model.layers):
        tensors.update(_block_tensors(f"layers.{i}.", blk))
    for i, blk in enumerate(base or []):
        tensors.update(_block_tensors(f"base.{i}.", blk))
    tensors["norm.weight"] = model.norm.weight.detach()
    tensors.update(_int8_tensors("lm_head.q", head.q))
    tensors["lm_head.rows.q"], tensors["lm_head.rows.scale"] = head.rows.q, head.rows.scale
    tied = model.tok_emb is head.rows
    if not tied:
        tensors["tok_emb.weight"] = model.tok_emb.weight.detach()
    meta = {"version": str(VERSION), "k": str(head.k), "tied": str(int(tied)), "base": str(len(base or []))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _int8_linear(t: dict[str, torch.Tensor], prefix: str) -> Int8Linear:
    q, scale = t[f"{prefix}.qweight"], t[f"{prefix}.qscale"]
    w = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
    return Int8Linear.from_quantized(w, t.get(f"{prefix}.bias"))


def _load_block(blk: Block, t: dict[str, torch.Tensor], prefix: str) -> None:
    for leaf in FUSED_AWAY:
        delattr(blk, leaf)
    for leaf in QUANTIZED_MATMULS:
        setattr(blk, leaf, _int8_linear(t, f"{prefix}{leaf}"))
    for name, p in list(blk.named_parameters()):
        mod_name, _, attr = name.rpartition(".")
        mod = blk.get_submodule(mod_name) if mod_name else blk
        want = t[f"{prefix}{name}"]
        if tuple(want.shape) != tuple(p.shape):
            raise ValueError(f"{prefix}{name} has shape {tuple(want.shape)}, expected {tuple(p.shape)}")
        mod._parameters[attr] = nn.Parameter(want.float().clone(), requires_grad=False)


def load(path: Path, args: ModelArgs) -> tuple[Transformer, nn.ModuleList | None]:
    """The quantized model (eval mode, CPU, float32 where not int8) and the base's quantized
    upper layers (None when the file has none). Raises ValueError/KeyError/OSError (and
    safetensors' own errors) when the file is unreadable or does not fit `args`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("version") != str(VERSION):
            raise ValueError(f"int8 cache version {meta.get('version')!r}, expected {VERSION}")
        t = {k: f.get_tensor(k) for k in f.keys()}
    model = skeleton(args)
    for i, blk in enumerate(model.layers):
        _load_block(blk, t, f"layers.{i}.")
    model.norm.weight = nn.Parameter(t["norm.weight"].float().clone(), requires_grad=False)
    # copies: a tensor read from the file may share one buffer with all of it (~200 MB kept alive)
    rows = Int8Rows.from_quantized(t["lm_head.rows.q"].clone(), t["lm_head.rows.scale"].float().clone())
    if tuple(rows.q.shape) != (args.vocab_size, args.dim):
        raise ValueError(f"embedding rows {tuple(rows.q.shape)}, expected {(args.vocab_size, args.dim)}")
    model.lm_head = ShortlistHead.from_parts(_int8_linear(t, "lm_head.q"), rows, int(meta["k"]))
    if meta.get("tied") == "1":
        model.tok_emb = rows
    else:
        model.tok_emb.weight = nn.Parameter(t["tok_emb.weight"].float().clone(), requires_grad=False)
    base = None
    if int(meta.get("base", "0")):
        base = nn.ModuleList()
        for i in range(int(meta["base"])):
            with torch.device("meta"), _no_init():
                blk = Block(args)
            _load_block(blk, t, f"base.{i}.")
            base.append(blk.eval())
    for mod in [model, *(base or [])]:
        left = [n for n, x in [*mod.named_parameters(), *mod.named_buffers()] if x.is_meta]
        if left:
            raise ValueError(f"the int8 cache holds no values for {left[:3]}")
    return model.eval(), base


def lookup(ckpt: Path, weights: Path, args: ModelArgs, calibration: list[torch.Tensor], want_base: bool
           ) -> tuple[Transformer | None, nn.ModuleList | None, Path | None]:
    """The int8 model (and the base's int8 upper layers when `want_base`) for the adapter `ckpt`
    assembled at `weights`, if a file for exactly these inputs is kept there: (model, base layers,
    the file); (None, None, file) when the load must quantize (and then `save`s the file); (None,
    None, None) when no key can be made (a file it depends on is unreadable: the slow path
    reports it)."""
    from engine.assembly import base_layers_file
    from engine.errors import CheckpointError
    from engine.runtime import mapped_allocations, release_freed_memory

    try:
        base_file = base_layers_file(ckpt) if want_base else None
        path = weights / f"{PREFIX}{cache_key(weights, calibration, base_file)}.safetensors"
    except (CheckpointError, OSError, ValueError):
        return None, None, None
    if not path.is_file():
        return None, None, path
    try:
        with mapped_allocations():  # the file's tensors are freed once packed: handed back whole
            model, base = load(path, args)
        release_freed_memory()
    except Exception as exc:  # safetensors raises its own types on corrupt files
        log.warning("the int8 model kept in %s is unreadable (%s); quantizing again", path, exc)
        return None, None, path
    if want_base and base is None:
        return None, None, path
    touch_and_prune(path)
    return model, base, path


def touch_and_prune(path: Path, keep: int = KEEP_FILES) -> None:
    """Mark `path` used now and remove all but the `keep` most recently used cache files."""
    try:
        path.touch()
        files = sorted(path.parent.glob(f"{PREFIX}*.safetensors"), key=lambda f: f.stat().st_mtime, reverse=True)
        for f in files[keep:]:
            if f != path:
                f.unlink(missing_ok=True)
    except OSError:
        pass


__all__ = ["KEEP_FILES", "PREFIX", "VERSION", "cache_key", "load", "lookup", "save", "touch_and_prune"]
