"""Count the trigram drafts table (`engine.ngram`) a model ships, from a packed token stream
(`engine.training.pack`): `python -m engine.training.drafts --tokens data/smol/tokens/train.bin
--tokenizer engine/default_model/tokenizer.json --out engine/default_model/drafts.safetensors`."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from engine.gguf_import import sha256_file
from engine.ngram import DRAFTS_FILE, NgramDrafts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.drafts",
                                description="Count a drafts table from a packed token stream (engine.training.pack).")
    p.add_argument("--tokens", required=True, help="uint16 token file, e.g. data/smol/tokens/train.bin")
    p.add_argument("--tokenizer", required=True, help="the tokenizer.json the tokens were packed with")
    p.add_argument("--out", required=True, help=f"output file, e.g. engine/default_model/{DRAFTS_FILE}")
    p.add_argument("--min-count", type=int, default=5)
    p.add_argument("--min-share", type=float, default=0.3)
    a = p.parse_args(argv)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(a.tokenizer).get_vocab_size()
    tokens = np.fromfile(a.tokens, dtype=np.uint16)
    drafts = NgramDrafts.count(tokens, vocab, a.min_count, a.min_share)
    drafts.save(a.out, sha256_file(Path(a.tokenizer)))
    print(f"{len(drafts)} pairs from {len(tokens)} tokens -> {a.out} ({Path(a.out).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
