"""`dlsp train-tokenizer`: byte-level BPE on the training split, special tokens first.

Ids 0, 1, 2 are `<|mask|>`, `<|eos|>` (also pad), `<|bos|>`. No normalizer, so any text
round-trips exactly. `--experiment` trains several vocabulary sizes and reports chars/token
on the validation split.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|mask|>", "<|eos|>", "<|bos|>"]


def iter_texts(jsonl: Path, max_chars: int | None = None) -> Iterator[str]:
    n = 0
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["text"]
            yield text
            n += len(text)
            if max_chars is not None and n >= max_chars:
                return


def train_bpe(texts: Iterator[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, f"special token {s} must have id {i}"
    return tok


def chars_per_token(tok: Tokenizer, texts: list[str]) -> float:
    n_tok = sum(len(e.ids) for e in tok.encode_batch(texts))
    return sum(map(len, texts)) / max(1, n_tok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlsp train-tokenizer", description=__doc__)
    p.add_argument("--corpus", default="data/corpus", type=Path)
    p.add_argument("--out", default="data/tokenizer/tokenizer.json", type=Path)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--max-chars", type=int, default=40_000_000, help="training text sampled from the train split")
    p.add_argument("--experiment", default="", help="comma-separated vocab sizes to compare, e.g. 4096,8192,16384")
    a = p.parse_args(argv or [])
    val = list(iter_texts(a.corpus / "val.jsonl", 2_000_000))
    results = {}
    for v in [int(x) for x in a.experiment.split(",") if x]:
        tok = train_bpe(iter_texts(a.corpus / "train.jsonl", a.max_chars), v)
        results[v] = round(chars_per_token(tok, val), 3)
        print(f"vocab {v:6d}: {results[v]:.3f} chars/token on validation", flush=True)
    if results:
        (a.out.parent).mkdir(parents=True, exist_ok=True)
        (a.out.parent / "experiment.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tok = train_bpe(iter_texts(a.corpus / "train.jsonl", a.max_chars), a.vocab_size)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(a.out))
    print(f"saved {a.out}: vocab {tok.get_vocab_size()}, {chars_per_token(tok, val):.3f} chars/token on validation")
    return 0
