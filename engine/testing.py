"""Tiny random checkpoints for tests and demos that must not depend on the shipped weights."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from engine.checkpoint import save_checkpoint
from engine.config import CONFIGS, ModelArgs
from engine.model import Transformer

SPECIALS = ["<|mask|>", "<|eos|>", "<|bos|>"]  # ids 0, 1, 2

_SAMPLE = """import os
def add(a, b):
    return a + b

class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y
for i in range(10):
    print(i, add(i, 1))
"""


def byte_bpe_tokenizer(vocab_size: int = 320, text: str = _SAMPLE) -> Tokenizer:
    """A byte-level BPE with the project's special tokens, trained on a little text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text] * 4, trainer=trainer)
    return tok


def make_tiny_checkpoint(path: str | Path, family: str = "llada", seed: int = 0, size: str = "tiny",
                         **overrides: object) -> Path:
    """Write config.json, model.safetensors (fp32) and tokenizer.json for a tiny random model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = byte_bpe_tokenizer()
    tok.save(str(path / "tokenizer.json"))
    fields = dict(CONFIGS[size])
    fields.update(family=family, vocab_size=tok.get_vocab_size(), mask_id=0, eos_id=1, pad_id=1, bos_id=2,
                  qkv_bias=family == "dream", tie_embeddings=family == "llada")
    fields.update(overrides)
    torch.manual_seed(seed)
    model = Transformer(ModelArgs(**fields))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.1)  # norms near 1, biases small but nonzero
            else:
                p.normal_(0.0, 0.2)
    return save_checkpoint(model, path, dtype=torch.float32)


def tiny_adapted_pair(path: str | Path, seed: int = 7) -> tuple[Transformer, Transformer, dict[str, torch.Tensor], object]:
    """A shifted tiny model whose lower layer is causal (the adapted model's layout) and a fully
    causal "base" that shares that layer and has upper weights of its own (random, `seed`):
    (model, base, the base's upper-layer tensors, tokenizer)."""
    from dataclasses import replace

    from engine.checkpoint import load_model, load_tokenizer

    ckpt = make_tiny_checkpoint(path, family="dream", causal_layers=1, seed=3)
    model, args = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    torch.manual_seed(seed)
    base = Transformer(replace(args, causal_layers=args.n_layers))
    with torch.no_grad():
        for p in base.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.normal_(1.0, 0.1)
    state = base.state_dict()
    for k, v in model.state_dict().items():  # everything but the upper layer is shared
        if not k.startswith("layers.1."):
            state[k] = v.clone()
    base.load_state_dict(state)
    base.eval()
    upper = {k: v.clone() for k, v in base.state_dict().items() if k.startswith("layers.1.")}
    return model, base, upper, tok
