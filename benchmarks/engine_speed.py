"""Engine speed: the naive reference sampler against the fast cached sampler on the same infills.

Same model (default: the embedded one), same real source files (a fixed list of standard-library
modules, so it runs in a clean clone), same seeded cursor positions, contexts of 512+ tokens
where the model allows it, holes of 16-32 tokens (no growth; EOS may shorten them). Reports
ms per infill, forward passes per generated token, tokens committed per forward pass, how often
the two samplers produce the same text, and checks the targets:

  * fast >= 5x faster than naive per infill (mean ms);
  * fast <= 0.3 forward passes per generated token.

    python benchmarks/engine_speed.py --n 20 [--model DIR] [--fast SPEC] [--also SPEC ...] [--threads 2]
        [--out F.json] [--strict]

`--also SPEC` runs more samplers on the same cases, interleaved with the two (e.g.
`--also fast:draft_opening=0`, the fast sampler without the prefill's opening drafts): each gets a
row, and its ms per infill and forwards per token as ratios over the fast sampler's.

Exit 0 whatever the targets say, unless --strict (then 1 on any FAIL).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.engine import Engine  # noqa: E402
from engine.types import InfillRequest, SamplingConfig, parse_sampling  # noqa: E402

# Fixed, in this order; the ones missing from this Python (renamed into packages) are skipped.
STDLIB_FILES = (
    "argparse.py", "ast.py", "dataclasses.py", "difflib.py", "enum.py", "functools.py", "inspect.py",
    "json/decoder.py", "logging/__init__.py", "pathlib.py", "pprint.py", "shutil.py", "subprocess.py",
    "textwrap.py", "typing.py", "zipfile.py", "tarfile.py", "threading.py", "unittest/case.py",
    "collections/__init__.py",
)
TARGET_SPEEDUP = 5.0
TARGET_PASSES_PER_TOKEN = 0.3
BEFORE_CHARS, AFTER_CHARS = 4000, 2000  # more than the model keeps: the engine clips to its budget


@dataclass(frozen=True)
class Case:
    source: str
    prefix: str
    suffix: str
    hole_tokens: int


def stdlib_sources() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return [root / f for f in STDLIB_FILES if (root / f).is_file()]


def make_cases(n: int, seed: int, hole_range: tuple[int, int] = (16, 32)) -> list[Case]:
    """n cursors, round-robin over the files, each inside a non-blank line with 2000+ characters
    before it and 800+ after it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_sources()
    if not files:
        raise SystemExit(f"none of the benchmark files exist under {root}")
    rng = random.Random(f"engine_speed:{seed}")
    cases: list[Case] = []
    texts = {f: f.read_text(encoding="utf-8", errors="replace") for f in files}
    for i in range(n):
        f = files[i % len(files)]
        text = texts[f]
        starts = [0] + [j + 1 for j, c in enumerate(text) if c == "\n"]
        ok = [s for s in starts if 2000 <= s <= len(text) - 800 and text[s:text.find("\n", s)].strip()]
        s = rng.choice(ok)
        line = text[s:text.find("\n", s)]
        lead = len(line) - len(line.lstrip())
        cursor = s + lead + rng.randrange(len(line) - lead)
        cases.append(Case(source=f.relative_to(root).as_posix(),
                          prefix=text[max(0, cursor - BEFORE_CHARS):cursor],
                          suffix=text[cursor:cursor + AFTER_CHARS], hole_tokens=rng.randint(*hole_range)))
    return cases


def run_case(engine: Engine, case: Case, sampling: SamplingConfig) -> dict[str, Any]:
    res = engine.infill(InfillRequest(prefix=case.prefix, suffix=case.suffix, hole_tokens=case.hole_tokens,
                                      max_new_tokens=case.hole_tokens, sampling=sampling))
    return {"ms": res.timings_ms["total"], "prefill_ms": res.timings_ms["prefill"],
            "forward_passes": res.forward_passes, "generated_tokens": res.generated_tokens,
            "committed": sum(res.tokens_per_step), "context_tokens": sum(res.context_tokens), "text": res.text}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    passes = sum(r["forward_passes"] for r in runs)
    tokens = sum(r["generated_tokens"] for r in runs)
    ms = [r["ms"] for r in runs]
    return {
        "n": len(runs),
        "ms_per_infill": statistics.fmean(ms),
        "ms_per_infill_median": statistics.median(ms),
        "forward_passes_per_infill": passes / len(runs),
        "generated_tokens": tokens,
        "forward_passes_per_generated_token": passes / tokens if tokens else None,
        "tokens_committed_per_forward": sum(r["committed"] for r in runs) / passes if passes else None,
        "context_tokens_mean": statistics.fmean(r["context_tokens"] for r in runs),
    }


def targets(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    speedup = stats["naive"]["ms_per_infill"] / stats["fast"]["ms_per_infill"]
    ppt = stats["fast"]["forward_passes_per_generated_token"]
    return {
        "speedup": speedup,
        "speedup_target": {"target": f">= {TARGET_SPEEDUP:g}x", "value": speedup, "pass": speedup >= TARGET_SPEEDUP},
        "passes_per_token_target": {"target": f"<= {TARGET_PASSES_PER_TOKEN:g}", "value": ppt,
                                    "pass": ppt is not None and ppt <= TARGET_PASSES_PER_TOKEN},
    }


def versus(s: dict[str, Any], fast: dict[str, Any], runs: list[dict[str, Any]],
           fast_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Another sampler against the fast one on the same cases: ratios of mean ms per infill and of
    forwards per generated token, the median of the per-case ms differences, and how often the
    two wrote the same text."""
    a, b = s["forward_passes_per_generated_token"], fast["forward_passes_per_generated_token"]
    return {"ms_ratio": s["ms_per_infill"] / fast["ms_per_infill"],
            "ms_paired_median": statistics.median(x["ms"] - y["ms"] for x, y in zip(runs, fast_runs)),
            "forward_passes_per_token_ratio": a / b if a is not None and b else None,
            "same_text_rate": sum(x["text"] == y["text"] for x, y in zip(runs, fast_runs)) / len(runs)}


def table(stats: dict[str, dict[str, Any]]) -> str:
    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    w = max(8, *map(len, stats))
    head = (f"{'sampler':<{w}} {'n':>4} {'ms/infill':>10} {'median':>8} {'fwd/infill':>10} "
            f"{'fwd/gen tok':>11} {'commit/fwd':>10} {'ctx tok':>8}")
    rows = [head, "-" * len(head)]
    for name, s in stats.items():
        rows.append(f"{name:<{w}} {s['n']:>4} {s['ms_per_infill']:>10.1f} {s['ms_per_infill_median']:>8.1f} "
                    f"{s['forward_passes_per_infill']:>10.2f} {fmt(s['forward_passes_per_generated_token'], '11.3f')} "
                    f"{fmt(s['tokens_committed_per_forward'], '10.2f')} {s['context_tokens_mean']:>8.0f}")
    return "\n".join(rows)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="engine_speed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="infills per sampler")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/engine_speed.json")
    p.add_argument("--fast", default="fast", help="the fast sampler's settings as a spec, e.g. "
                   "'fast:min_per_step=4' (see engine.types.parse_sampling; default: the engine's defaults)")
    p.add_argument("--also", action="append", default=[], metavar="SPEC",
                   help="another sampler run on the same cases (repeatable), e.g. 'fast:draft_opening=0'")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(list(sys.argv[1:] if argv is None else argv))
    if a.threads:
        torch.set_num_threads(a.threads)
    engine = Engine.from_pretrained(a.model, device=a.device)
    configs = {"naive": parse_sampling("naive", engine.default_sampling),
               "fast": parse_sampling(a.fast, engine.default_sampling)}
    for spec in a.also:
        if spec in configs:
            raise SystemExit(f"engine_speed: --also {spec!r} names a sampler already run")
        configs[spec] = parse_sampling(spec, engine.default_sampling)
    names = list(configs)
    cases = make_cases(a.n, a.seed)
    for sampler in names:  # warm-up: first calls pay for allocation and dispatch caches
        run_case(engine, cases[0], configs[sampler])
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    t0 = time.perf_counter()
    for case in cases:  # interleaved, so a change in machine load hits every sampler alike
        for sampler in names:
            runs[sampler].append(run_case(engine, case, configs[sampler]))
    stats = {s: summarize(r) for s, r in runs.items()}
    same = sum(x["text"] == y["text"] for x, y in zip(runs["naive"], runs["fast"])) / len(cases)
    check = targets(stats)
    versus_fast = {spec: versus(stats[spec], stats["fast"], runs[spec], runs["fast"]) for spec in a.also}
    report = {
        "settings": vars(a) | {"threads_used": torch.get_num_threads(),
                               "sampling": {k: asdict(v) for k, v in configs.items()}, "files": [c.source for c in cases],
                               "hole_tokens": [c.hole_tokens for c in cases]},
        "model": engine.info(), "elapsed_s": round(time.perf_counter() - t0, 2),
        "samplers": stats, "same_text_rate": same, **check, "versus_fast": versus_fast,
        "cases": [{"source": c.source, "hole_tokens": c.hole_tokens,
                   **{s: {k: v for k, v in runs[s][i].items()} for s in names}} for i, c in enumerate(cases)],
    }
    print(table(stats))
    print(f"same text (naive vs fast): {same:.0%}   speedup (naive/fast ms): {check['speedup']:.2f}x")
    for spec, v in versus_fast.items():
        fwd = "-" if v["forward_passes_per_token_ratio"] is None else f"{v['forward_passes_per_token_ratio']:.3f}x"
        print(f"{spec} over fast: ms per infill {v['ms_ratio']:.3f}x (paired median {v['ms_paired_median']:+.1f} ms), "
              f"forwards per token {fwd}, same text {v['same_text_rate']:.0%}")
    failed = False
    for name in ("speedup_target", "passes_per_token_target"):
        t = check[name]
        value = "-" if t["value"] is None else f"{t['value']:.3f}"
        print(f"{'PASS' if t['pass'] else 'FAIL'}  {name}: {value} (target {t['target']})")
        failed |= not t["pass"]
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 1 if a.strict and failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
