"""`dlsp complete FILE --line L --col C`: fill the hole at a cursor and print it with timings.

Lines and columns are 1-based (as editors show them); the column counts characters. The fill
goes through the server's pipeline: the same context (`lsp_server.context`), the checkpoint's
decoding defaults with only the flags given on top, and the same post-processing
(`lsp_server.postprocess`), so the CLI shows what an editor would. It lives in `lsp_server`
because it uses both layers (`engine` never imports `lsp_server`).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from engine.engine import Engine
from engine.errors import DlspError
from engine.types import InfillRequest
from lsp_server.context import build_context
from lsp_server.languages import spec_for
from lsp_server.postprocess import postprocess


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlsp complete", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path)
    p.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    p.add_argument("--col", type=int, required=True, help="1-based column (characters) of the cursor")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--device", default=None)
    p.add_argument("--language", default="", help="LSP languageId (default: from the file's extension)")
    p.add_argument("--tokens", type=int, default=None, help="initial hole size in tokens (default: by context)")
    p.add_argument("--max-tokens", type=int, default=64, help="the most the hole may grow to")
    p.add_argument("--context-tokens", type=int, default=1024, help="context budget in tokens")
    p.add_argument("--sampler", default=None, choices=["fast", "naive"], help="default: the checkpoint's")
    p.add_argument("--threshold", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--single-line", action="store_true", help="the fill ends at its first line break")
    p.add_argument("--raw", action="store_true", help="print the model's fill without post-processing")
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
        prefix, _ = split_at(text, a.line, a.col)
        engine = Engine.from_pretrained(a.model, device=a.device)
        overrides = {k: v for k, v in (("sampler", a.sampler), ("threshold", a.threshold)) if v is not None}
        cfg = replace(engine.default_sampling, **overrides)
        ctx = build_context(text, len(prefix), spec_for(a.language, str(a.file)), a.context_tokens, a.max_tokens,
                            engine.count_tokens)
        single = a.single_line or not ctx.multiline
        res = engine.infill(InfillRequest(
            prefix=ctx.prefix, suffix=ctx.suffix, hole_tokens=a.tokens if a.tokens is not None else ctx.hole_tokens,
            max_new_tokens=ctx.max_new_tokens if not a.single_line else min(a.max_tokens, ctx.max_new_tokens),
            max_context_tokens=a.context_tokens, sampling=cfg, single_line=single))
    except (OSError, ValueError, DlspError) as exc:
        print(f"dlsp complete: {exc}", file=sys.stderr)
        return 1
    out = res.text if a.raw else postprocess(res.text, ctx)
    if a.json:
        print(json.dumps({"text": out, "raw": res.text, "mode": ctx.mode, "timings_ms": res.timings_ms,
                          "forward_passes": res.forward_passes, "tokens_per_step": list(res.tokens_per_step),
                          "generated_tokens": res.generated_tokens, "context_tokens": list(res.context_tokens),
                          "score": res.score, "confidence": res.confidence,
                          "sampling": asdict(cfg), "model": engine.info()}))
        return 0
    print(out)
    t = res.timings_ms
    conf = "" if res.confidence is None else f"confidence {res.confidence:.2f}, "
    print(f"-- {res.generated_tokens} tokens, {conf}{res.forward_passes} forward passes, "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items()), file=sys.stderr)
    return 0
