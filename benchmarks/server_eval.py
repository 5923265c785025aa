"""Server-path quality: held-out single lines through the language server's own completion path
(`build_context` -> the engine request the server sends -> `postprocess`), in process, in the
shapes an editor or a benchmark harness leaves them in:

  * gap: the line's text removed, its line break kept: the cursor on an empty line;
  * above: the line removed with its line break: the cursor at the start of the next line.

`dlsp eval` scores the engine on the gap shape; this scores what an editor would insert. Per
shape: how often inserting the suggestion at the cursor gives back the original file ("document
right"), how often its first line is the removed line ("line right"), the modes the server chose
and ms per request.

    python benchmarks/server_eval.py --n 40 --seed 45 [--model DIR] [--shapes gap,above] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import Engine  # noqa: E402
from engine.engine import DEFAULT_MODEL_DIR  # noqa: E402
from engine.evaluation.tasks import load_documents, make_tasks  # noqa: E402
from lsp_server.context import build_context  # noqa: E402
from lsp_server.languages import spec_for  # noqa: E402
from lsp_server.postprocess import postprocess  # noqa: E402
from lsp_server.service import engine_request  # noqa: E402

SHAPES = ("gap", "above")


def shaped(prefix: str, middle: str, suffix: str, shape: str) -> tuple[str, int, str]:
    """(the document the editor holds, the cursor, the original document) for a single-line task
    (`suffix` starts with the line break after the line)."""
    original = prefix + middle + suffix
    if shape == "gap":
        return prefix + suffix, len(prefix), original
    if shape == "above":
        return prefix + suffix[1:], len(prefix), original
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def run(engine: Engine, tasks: list, shapes: list[str], context_tokens: int, max_tokens: int) -> dict:
    spec = spec_for("python")
    report: dict = {}
    for shape in shapes:
        rows = []
        for t in tasks:
            text, cursor, original = shaped(t.prefix, t.middle, t.suffix, shape)
            t0 = time.perf_counter()
            ctx = build_context(text, cursor, spec, context_tokens, max_tokens, engine.count_tokens)
            res = engine.infill(engine_request(ctx, context_tokens))
            out = postprocess(res.text, ctx)
            ms = (time.perf_counter() - t0) * 1e3
            rows.append({"id": t.id, "mode": ctx.mode, "suggestion": out, "reference": t.middle, "ms": ms,
                         "line_right": out.split("\n", 1)[0] == t.middle,
                         "document_right": text[:cursor] + out + text[cursor:] == original})
        n = len(rows)
        report[shape] = {"n": n, "document_right": sum(r["document_right"] for r in rows) / n if n else None,
                         "line_right": sum(r["line_right"] for r in rows) / n if n else None,
                         "ms_per_request": sum(r["ms"] for r in rows) / n if n else None,
                         "modes": dict(Counter(r["mode"] for r in rows)), "rows": rows}
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="server_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--corpus", default="data/v1/corpus/test.jsonl", help="held-out split (JSON lines)")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--context-tokens", type=int, default=1024)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    a = p.parse_args(argv)
    shapes = [s.strip() for s in a.shapes.split(",") if s.strip()]
    if not shapes or set(shapes) - set(SHAPES):
        print(f"server_eval: --shapes takes a comma list of {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    if not Path(a.corpus).is_file():
        print(f"server_eval: corpus file {a.corpus} not found; build it with `dlsp build-corpus`", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    tasks = [t for t in make_tasks(load_documents(a.corpus), a.n, a.seed, kinds=["single_line"])
             if t.suffix.startswith("\n")]
    if not tasks:
        print(f"server_eval: no single-line tasks in {a.corpus} (all files too short)", file=sys.stderr)
        return 2
    engine = Engine.from_pretrained(a.model or str(DEFAULT_MODEL_DIR), device=a.device)
    report = run(engine, tasks, shapes, a.context_tokens, a.max_tokens)
    print(f"{'shape':<8} {'n':>4} {'document right':>15} {'line right':>11} {'ms/request':>11}  modes")
    for shape, r in report.items():
        print(f"{shape:<8} {r['n']:>4} {r['document_right']:>15.3f} {r['line_right']:>11.3f} "
              f"{r['ms_per_request']:>11.1f}  {r['modes']}")
    if a.out:
        Path(a.out).write_text(json.dumps({"settings": vars(a), "shapes": report}, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
