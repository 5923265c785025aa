"""`dlsp complete FILE --line L --col C`: fill the hole at a cursor and print it with timings.

Lines and columns are 1-based (as editors show them); the column counts characters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.engine import Engine
from engine.errors import DlspError
from engine.types import InfillRequest, SamplingConfig


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlsp complete", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    p.add_argument("--col", type=int, required=True, help="1-based column (characters) of the cursor")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--device", default=None)
    p.add_argument("--tokens", type=int, default=16, help="initial hole size in tokens")
    p.add_argument("--max-tokens", type=int, default=48, help="the most the hole may grow to")
    p.add_argument("--sampler", default="fast", choices=["fast", "naive"])
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--single-line", action="store_true", help="the fill ends at its first line break")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def split_at(text: str, line: int, col: int) -> tuple[str, str]:
    """Prefix and suffix of `text` at a 1-based (line, column); errors name what is out of range."""
    lines = text.splitlines(keepends=True) or [""]
    if not 1 <= line <= len(lines) + (1 if text.endswith("\n") else 0):
        raise ValueError(f"line {line} is outside the file (1..{len(lines)})")
    offset = sum(len(x) for x in lines[: line - 1])
    current = lines[line - 1] if line - 1 < len(lines) else ""
    width = len(current.rstrip("\r\n"))
    if not 1 <= col <= width + 1:
        raise ValueError(f"column {col} is outside line {line} (1..{width + 1})")
    cut = offset + col - 1
    return text[:cut], text[cut:]


def main(argv: list[str] | None = None) -> int:
    a = parse(argv or [])
    try:
        # undecodable bytes become surrogate escapes; the engine turns them into U+FFFD
        text = a.file.read_bytes().decode("utf-8", "surrogateescape")
        prefix, suffix = split_at(text, a.line, a.col)
        engine = Engine.from_pretrained(a.model, device=a.device)
        cfg = SamplingConfig(sampler=a.sampler, threshold=a.threshold)
        res = engine.infill(InfillRequest(prefix=prefix, suffix=suffix, hole_tokens=a.tokens,
                                          max_new_tokens=a.max_tokens, sampling=cfg, single_line=a.single_line))
    except (OSError, ValueError, DlspError) as exc:
        print(f"dlsp complete: {exc}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps({"text": res.text, "timings_ms": res.timings_ms, "forward_passes": res.forward_passes,
                          "tokens_per_step": list(res.tokens_per_step), "generated_tokens": res.generated_tokens,
                          "context_tokens": list(res.context_tokens), "model": engine.info()}))
        return 0
    print(res.text)
    t = res.timings_ms
    print(f"-- {res.generated_tokens} tokens, {res.forward_passes} forward passes, "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items()), file=sys.stderr)
    return 0
