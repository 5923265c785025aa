"""Assemble a full checkpoint from the pinned base package plus a shipped adapter, and cache it.

A shipped adapter directory holds `config.json` (with `dlsp_base`: which base file, pinned by
SHA-256, and `dlsp_adapter`: the LoRA shape), `adapter.safetensors` and `tokenizer.json`. On first
load the base is dequantized from its GGUF (`engine.gguf_import`), the adapter is merged into it,
and the result is written as an ordinary checkpoint directory under the user's cache directory
(`$DLSP_CACHE_DIR`, else `$XDG_CACHE_HOME/dlsp`, else `~/.cache/dlsp`), keyed by the hashes of the
adapter and its config, so later loads read one safetensors file. Each assembly is ~0.65 GB; a
new one (a new adapter: an upgrade, an evaluation of an export) prunes all but the
`KEEP_ASSEMBLED` most recently used ones (`prune`), so upgrades do not pile gigabytes up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from safetensors import safe_open

from engine.adapter import AdapterConfig, merge_into
from engine.config import FAMILIES, ModelArgs
from engine.errors import CheckpointError
from engine.gguf_import import BASE_SHA256, BaseModelMissing, read_base

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
KEEP_ASSEMBLED = 3  # assemblies kept in the cache, most recently used first (`prune`)
LAST_USED = ".last_used"  # touched in an assembly's directory at every load
STALE_TEMP_S = 24 * 3600  # a half-written assembly this old belongs to no live process
BASE_LAYERS_FILE = "base_layers.safetensors"  # beside an assembled checkpoint (`base_layers`)


def cache_root() -> Path:
    if os.environ.get("DLSP_CACHE_DIR"):
        return Path(os.environ["DLSP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dlsp"


def is_adapter_dir(ckpt: Path) -> bool:
    """True when `ckpt/config.json` names a base to assemble from (and no full weights are there)."""
    try:
        cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "dlsp_base" in cfg and not (ckpt / "model.safetensors").is_file()


def _cache_key(ckpt: Path, cfg: dict[str, Any]) -> str:
    """What the merged weights depend on: the adapter, its base and shape; not the decoding
    defaults or training notes in config.json (editing those must not re-assemble 0.5 GB)."""
    h = hashlib.sha256((ckpt / ADAPTER_FILE).read_bytes())
    weights_cfg = {k: v for k, v in cfg.items() if not k.startswith("dlsp_") or k in ("dlsp_base", "dlsp_adapter",
                                                                                     "dlsp_causal_layers")}
    h.update(json.dumps(weights_cfg, sort_keys=True).encode())
    return h.hexdigest()[:24]


def read_adapter(ckpt: Path) -> tuple[dict[str, Any], AdapterConfig, dict[str, Any]]:
    """config dict, adapter config, adapter tensors (fp32), each failure naming its file."""
    cfg_path, file = ckpt / "config.json", ckpt / ADAPTER_FILE
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    base = cfg.get("dlsp_base")
    if not isinstance(base, dict) or base.get("sha256") != BASE_SHA256:
        raise CheckpointError(cfg_path, "dlsp_base does not name the pinned base file (SHA-256 differs); "
                                        "this adapter was trained on another base")
    try:
        acfg = AdapterConfig.from_dict(cfg["dlsp_adapter"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(cfg_path, f"missing or invalid dlsp_adapter: {exc}") from exc
    if not file.is_file():
        raise CheckpointError(file, "the adapter weights are missing")
    try:
        with safe_open(str(file), framework="pt") as f:
            tensors = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(file, f"corrupt safetensors file: {exc}") from exc
    return cfg, acfg, tensors


def _write_full(out: Path, args: ModelArgs, state: dict[str, Any], cfg: dict[str, Any], tokenizer: Path) -> None:
    from safetensors.torch import save_file

    family = FAMILIES[args.family]
    tensors = {family.weight_name(k): v.contiguous() for k, v in state.items()
               if not (k == "lm_head.weight" and args.tie_embeddings)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    full_cfg = {k: v for k, v in cfg.items() if k not in ("dlsp_base",)}
    full_cfg["dlsp_assembled_from"] = cfg["dlsp_base"]
    (out / "config.json").write_text(json.dumps(full_cfg, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(tokenizer, out / "tokenizer.json")


def assemble(ckpt: str | Path, cache: Path | None = None) -> Path:
    """Path of the full checkpoint for an adapter directory, building it on first use.

    Raises:
        BaseModelMissing: the base package is not installed (the message says what to install).
        CheckpointError: the adapter does not fit the base, or a file is corrupt.
    """
    ckpt = Path(ckpt)
    cfg, acfg, tensors = read_adapter(ckpt)
    out = (cache or cache_root()) / "models" / _cache_key(ckpt, cfg)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        _touch(out)
        return out
    base = read_base()
    from engine.checkpoint import read_args

    args = read_args(ckpt)
    if (args.vocab_size, args.dim, args.n_layers) != (base.args.vocab_size, base.args.dim, base.args.n_layers):
        raise CheckpointError(ckpt / "config.json", "the adapter's model shape does not match the base")
    upper = _upper_layers(base.state, acfg.first_layer)  # the base's own, before the merge replaces them
    try:
        merge_into(base.state, acfg, tensors, mask_id=args.mask_id)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(ckpt / ADAPTER_FILE, f"does not fit the base: {exc}") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assemble-", dir=out.parent))
    try:
        _write_full(tmp, args, base.state, cfg, ckpt / "tokenizer.json")
        _save(upper, tmp / BASE_LAYERS_FILE)
        if out.exists():  # a half-written earlier try
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _touch(out)
    prune(out.parent, keep=KEEP_ASSEMBLED, current=out)
    return out


def _touch(out: Path) -> None:
    try:
        (out / LAST_USED).touch()
    except OSError:  # a read-only cache still serves
        pass


def _last_used(d: Path) -> float:
    try:
        return (d / LAST_USED).stat().st_mtime
    except OSError:
        return d.stat().st_mtime


def prune(models: Path, keep: int = KEEP_ASSEMBLED, current: Path | None = None) -> list[Path]:
    """Remove all but the `keep` most recently used assemblies under `models` (never `current`),
    and half-written ones (`.assemble-*`) older than a day. A process that has one open keeps
    reading it (its files are memory-mapped); the next load of a removed one assembles it again.
    Returns the directories removed."""
    try:
        dirs = [d for d in models.iterdir() if d.is_dir()]
    except OSError:
        return []
    done = [d for d in dirs if not d.name.startswith(".") and (d / "model.safetensors").is_file()]
    done.sort(key=_last_used, reverse=True)
    kept = [d for d in done if d == current][:1]
    kept += [d for d in done if d != current][:max(0, keep - len(kept))]
    now = time.time()
    stale = [d for d in dirs if d.name.startswith(".assemble-") and now - d.stat().st_mtime > STALE_TEMP_S]
    removed = []
    for d in [d for d in done if d not in kept] + stale:
        size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
            log.info("removed an older assembled model from the cache: %s (%.0f MB)", d, size / 2**20)
    return removed


def _upper_layers(state: dict[str, Any], first: int) -> dict[str, Any]:
    """The native-named tensors of layers `first`.. of a state dict."""
    return {k: v for k, v in state.items() if k.startswith("layers.") and int(k.split(".")[1]) >= first}


def _save(tensors: dict[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def base_layers_file(ckpt: str | Path, cache: Path | None = None) -> Path:
    """The path of the base's upper layers beside the adapter's assembled checkpoint, written
    there first if it is not (an assembly from before the file existed). Raises as `assemble`."""
    ckpt = Path(ckpt)
    out = assemble(ckpt, cache)
    path = out / BASE_LAYERS_FILE
    if not path.is_file():
        _, acfg, _ = read_adapter(ckpt)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            _save(_upper_layers(read_base().state, acfg.first_layer), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return path


def base_layers(ckpt: str | Path, cache: Path | None = None) -> dict[str, Any]:
    """The pretrained base's own weights for the layers an adapter changes (native names), kept
    beside its assembled checkpoint (written there on first use: ~140 MB in float32), for the
    base's reading of a fill (`engine.expert`).

    Raises:
        BaseModelMissing, CheckpointError: as `assemble`.
    """
    from safetensors.torch import load_file

    path = base_layers_file(ckpt, cache)
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(path, f"corrupt safetensors file: {exc}") from exc


def _dir_mb(d: Path) -> float:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20


def cache_main(argv: list[str] | None = None) -> int:
    """`dlsp cache`: what the model cache holds (assembled models, each with the base's layers and
    its int8 files), or `--clear` to remove them all (a running server keeps the files it has
    open; the next load assembles again, ~30 s)."""
    import argparse
    import datetime

    p = argparse.ArgumentParser(prog="dlsp cache", description=cache_main.__doc__)
    p.add_argument("--clear", action="store_true", help="remove every assembled model")
    p.add_argument("--json", action="store_true", help="print the listing as JSON")
    a = p.parse_args(argv)
    models = cache_root() / "models"
    dirs = sorted((d for d in models.iterdir() if d.is_dir()), key=_last_used, reverse=True) if models.is_dir() else []
    if a.clear:
        freed = 0.0
        for d in dirs:
            mb = _dir_mb(d)
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                freed += mb
        print(f"removed {len(dirs)} assembled model(s) from {models}: {freed:.0f} MB")
        return 0
    rows = [{"key": d.name, "mb": round(_dir_mb(d), 1),
             "last_used": datetime.datetime.fromtimestamp(_last_used(d)).isoformat(timespec="seconds"),
             "files": sorted(f.name for f in d.iterdir() if f.is_file() and f.name != LAST_USED),
             "complete": (d / "model.safetensors").is_file()} for d in dirs]
    if a.json:
        print(json.dumps({"root": str(cache_root()), "models": rows}, indent=2))
        return 0
    print(f"{models} ({len(rows)} assembled, {sum(r['mb'] for r in rows):.0f} MB; the {KEEP_ASSEMBLED} most "
          f"recently used are kept)")
    for r in rows:
        state = "" if r["complete"] else "  (incomplete)"
        print(f"  {r['key']}  {r['mb']:8.1f} MB  last used {r['last_used']}  {', '.join(r['files'])}{state}")
    return 0


__all__ = ["ADAPTER_FILE", "BASE_LAYERS_FILE", "BaseModelMissing", "KEEP_ASSEMBLED", "assemble", "base_layers", "base_layers_file", "cache_main", "cache_root", "is_adapter_dir", "prune", "read_adapter"]
