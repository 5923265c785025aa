"""Tokenize corpus splits into flat uint16 streams, every document followed by EOS."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from engine.training.tokenizer_train import iter_texts


def pack(jsonl: Path, tok: Tokenizer, out: Path, eos_id: int, max_chars: int | None = None,
         batch: int = 256) -> int:
    """Write `out` (uint16) and return the number of tokens."""
    n = 0
    with open(out, "wb") as f:
        buf: list[str] = []
        for text in iter_texts(jsonl, max_chars):
            buf.append(text)
            if len(buf) == batch:
                n += _flush(buf, tok, f, eos_id)
                buf = []
        n += _flush(buf, tok, f, eos_id)
    return n


def _flush(texts: list[str], tok: Tokenizer, f, eos_id: int) -> int:
    if not texts:
        return 0
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(eos_id)
    np.asarray(ids, dtype=np.uint16).tofile(f)
    return len(ids)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pack", description=__doc__)
    p.add_argument("--corpus", default="data/corpus", type=Path)
    p.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json", type=Path)
    p.add_argument("--out", default="data/tokens", type=Path)
    p.add_argument("--max-chars", type=int, default=None)
    p.add_argument("--eos-token", default="<|eos|>", help="document separator (<|endoftext|> for the SmolLM2 base)")
    a = p.parse_args(argv or [])
    tok = Tokenizer.from_file(str(a.tokenizer))
    if tok.get_vocab_size() > 65535:
        raise SystemExit("uint16 streams need a vocabulary below 65536")
    eos = tok.token_to_id(a.eos_token)
    if eos is None:
        raise SystemExit(f"{a.tokenizer} has no token {a.eos_token!r}")
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"vocab_size": tok.get_vocab_size(),
            "tokenizer_sha256": hashlib.sha256(a.tokenizer.read_bytes()).hexdigest()}
    for split in ("train", "val"):
        meta[f"{split}_tokens"] = pack(a.corpus / f"{split}.jsonl", tok, a.out / f"{split}.bin", eos, a.max_chars)
        print(f"{split}: {meta[f'{split}_tokens']:,} tokens", flush=True)
    (a.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
