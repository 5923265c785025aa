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
