"""`dlsp eval`: fill-in-the-middle quality on the held-out split, with baselines in the same run.

Systems, all on the same tasks (see `engine.evaluation.tasks`):
  * model/<sampler>: the checkpoint with each requested sampler;
  * untrained: the same shape and tokenizer with random weights (fixed seed, the training init),
    run with the first sampler: what the model scores before it learns anything;
  * base_ar: for a model adapted from a pretrained AR base (config `dlsp_base`), the same base
    weights read left to right: every layer causal, greedy, one token per step, prefix only: the
    floor that seeing the suffix must beat;
  * other/<name>: another checkpoint (`--compare name=DIR`), e.g. the earlier 5M model, first sampler;
  * heuristic/repeat_line_above and heuristic/empty: trivial answers; the best one is the bar.

The model never sees the true length of the middle: every hole starts at a fixed size (16 tokens
for single-line, 48 otherwise), grows up to --max-new-tokens and shrinks by EOS. Single-line
tasks ask the engine for a single-line fill (it ends at the first line break), as the server
does. Prints a table and writes JSON (see `summarize`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.engine import DEFAULT_MODEL_DIR, Engine
from engine.evaluation.metrics import Outcome, aggregate, score
from engine.evaluation.paired import floor_checks, lines
from engine.evaluation.tasks import KINDS, FimTask, after_indent, load_documents, make_tasks
from engine.model import Transformer
from engine.sampling_checks import SAMPLERS as ENGINE_SAMPLERS
from engine.types import InfillRequest, SamplingConfig, parse_sampling

HOLE_TOKENS = {"single_line": 16, "multi_line": 48, "span": 48}
BAR_FACTOR = 2.0  # single-line exact match must reach this multiple of the best heuristic's


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dlsp eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the embedded model)")
    p.add_argument("--corpus", default="data/v1/corpus/test.jsonl", help="held-out split (JSON lines)")
    p.add_argument("--n-per-kind", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of task kinds ({', '.join(KINDS)})")
    p.add_argument("--balance", choices=("package", "file"), default="package",
                   help="draw a package first, then a file of it (default), or files uniformly")
    p.add_argument("--samplers", default="fast,naive",
                   help="engine samplers separated by ';' (or ',' when no spec has options): a name, "
                        "optionally with settings, e.g. 'fast;naive;fast:min_per_step=4;fast:factor=1'")
    p.add_argument("--baselines", default="untrained,heuristic,base_ar",
                   help="comma list: untrained, heuristic, base_ar (adapted models only)")
    p.add_argument("--floor-samplers", default="fast",
                   help="samplers for the base_ar floor, like --samplers: the first is `base_ar`, each "
                        "other `base_ar/SPEC` (e.g. 'fast;fast:close_brackets=48': a decoding rule for both)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=DIR",
                   help="another checkpoint to run on the same tasks with the first sampler (repeatable)")
    p.add_argument("--out", default="runs/eval/eval.json", help="JSON report path")
    p.add_argument("--max-new-tokens", type=int, default=64, help="the most a hole may grow to")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="token budget for prefix + suffix, the same for every system (default: the model's positions)")
    p.add_argument("--limit-seconds", type=float, default=None, help="stop after this long (same tasks for all)")
    p.add_argument("--device", default=None)
    p.add_argument("--int8", choices=("auto", "on", "off"), default="auto",
                   help="int8 matmuls on CPU for the model and the base_ar floor alike (auto: as the engine decides)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cursor", default="line_start", choices=["line_start", "after_indent"],
                   help="where the cursor sits in a task: at its line's start (the middle holds the "
                        "indentation), or after the indentation, as on a new line an editor indented")
    return p.parse_args(argv)


# ---- systems: task -> (prediction, ms, forward passes, generated tokens) ----------------------

# (text, ms, forward passes, generated tokens[, confidence]): heuristics leave the confidence out
Prediction = tuple[str, float, int, int] | tuple[str, float, int, int, float | None]


def _line_above(task: FimTask, skip_blank: bool = False) -> str:
    """The previous line (the nearest non-blank one with `skip_blank`), minus what is already typed
    on the hole's line when it matches."""
    lines = task.prefix.split("\n")
    typed, above_lines = lines[-1], lines[-2::-1]
    above = next((line for line in above_lines if line.strip() or not skip_blank), "")
    return above[len(typed):] if typed and above.startswith(typed) else above


def _nonblank_line_above(task: FimTask) -> str:
    return _line_above(task, skip_blank=True)


HEURISTICS: dict[str, Callable[[FimTask], str]] = {
    "heuristic/repeat_line_above": _line_above,
    "heuristic/repeat_nonblank_above": _nonblank_line_above,
    "heuristic/empty": lambda task: "",
}


def untrained_engine(engine: Engine, seed: int = 0) -> Engine:
    """Same shape, tokenizer and device as `engine`, random weights (the training init:
    normal(0, 0.02), output projections scaled by 1/sqrt(2 * layers), biases zero, norms one)."""
    torch.manual_seed(seed)
    model = Transformer(engine.args)
    model.init_weights()
    model = model.to(device=engine.device, dtype=engine.dtype).eval()
    return Engine(model, engine.tokenizer, name="untrained", default_sampling=engine.default_sampling)


def base_ar_engine(engine: Engine) -> Engine:
    """The pinned AR base under the adapted model, every layer causal (exactly the pretrained
    model), decoded left to right by the fast sampler with a one-slot window (`block=1`): greedy."""
    from engine.gguf_import import read_base

    base = read_base()
    model = base.build(causal_layers=base.args.n_layers, max_positions=engine.args.max_positions)
    model = model.to(device=engine.device, dtype=engine.dtype).eval()
    if getattr(engine, "int8", False):  # the same arithmetic as the model it is the floor of
        from engine.quantize import calibration_ids, quantize_int8

        quantize_int8(model, calibration_ids(engine.tokenizer, model.args.lead_id))
    ar = Engine(model, engine.tokenizer, name="base_ar", default_sampling=SamplingConfig(block=1))
    ar.int8 = getattr(engine, "int8", False)
    return ar


def model_system(engine: Engine, spec: str, max_new_tokens: int, see_suffix: bool = True,
                 context_tokens: int | None = None) -> Callable[[FimTask], Prediction]:
    cfg = parse_sampling(spec, engine.default_sampling)

    def run(task: FimTask) -> Prediction:
        hole = min(HOLE_TOKENS[task.kind], max_new_tokens)
        res = engine.infill(InfillRequest(prefix=task.prefix, suffix=task.suffix if see_suffix else "",
                                          hole_tokens=hole,
                                          max_new_tokens=max_new_tokens, sampling=cfg,
                                          max_context_tokens=context_tokens,
                                          single_line=task.kind == "single_line"))
        return res.text, res.timings_ms["total"], res.forward_passes, res.generated_tokens, res.confidence

    return run


def heuristic_system(fn: Callable[[FimTask], str]) -> Callable[[FimTask], Prediction]:
    def run(task: FimTask) -> Prediction:
        t0 = time.perf_counter()
        text = fn(task)
        return text, (time.perf_counter() - t0) * 1e3, 0, 0

    return run


def build_systems(engine: Engine, a: argparse.Namespace) -> dict[str, Callable[[FimTask], Prediction]]:
    samplers = [s.strip() for s in a.samplers.split(";" if ("=" in a.samplers or ";" in a.samplers) else ",")
                if s.strip()]
    for spec in samplers:  # a bad spec fails before any work
        if parse_sampling(spec).sampler not in ENGINE_SAMPLERS:
            raise ValueError(f"unknown sampler in {spec!r}; known: {', '.join(ENGINE_SAMPLERS)}")
    baselines = {b for b in a.baselines.split(",") if b}
    unknown = baselines - {"untrained", "heuristic", "base_ar"}
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(sorted(unknown))}; known: untrained, heuristic, base_ar")
    compare = [c.partition("=") for c in getattr(a, "compare", [])]
    if any(not name or not path for name, _, path in compare):
        raise ValueError("--compare takes NAME=DIR")
    ctx = getattr(a, "context_tokens", None)
    systems = {f"model/{s}": model_system(engine, s, a.max_new_tokens, context_tokens=ctx) for s in samplers}
    if "base_ar" in baselines and getattr(engine, "adapted_from_base", False):
        floor = base_ar_engine(engine)
        specs = [s.strip() for s in getattr(a, "floor_samplers", "fast").split(";") if s.strip()] or ["fast"]
        for i, spec in enumerate(specs):
            systems["base_ar" if i == 0 else f"base_ar/{spec}"] = model_system(
                floor, spec, a.max_new_tokens, see_suffix=False, context_tokens=ctx)
    for name, _, path in compare:
        # the same arithmetic as the model it is compared with (int8 or not)
        other = Engine.from_pretrained(path, device=str(engine.device), int8=bool(getattr(engine, "int8", False)))
        systems[f"other/{name}"] = model_system(other, samplers[0] if samplers else "fast", a.max_new_tokens,
                                                context_tokens=ctx)
    if "untrained" in baselines and samplers:
        systems["untrained"] = model_system(untrained_engine(engine, a.seed), samplers[0], a.max_new_tokens,
                                            context_tokens=ctx)
    if "heuristic" in baselines:
        systems.update({name: heuristic_system(fn) for name, fn in HEURISTICS.items()})
    return systems


# ---- the run -------------------------------------------------------------------------------

def evaluate(tasks: list[FimTask], systems: dict[str, Callable[[FimTask], Prediction]],
             limit_seconds: float | None = None,
             progress: Callable[[int, int, float, list[Outcome]], None] | None = None) -> tuple[list[Outcome], bool]:
    """Every system on every task, task by task, so a time limit leaves all systems on the same tasks.
    `progress(done, total, elapsed_s, outcomes)` is called after each task."""
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    for i, task in enumerate(tasks):
        if limit_seconds is not None and time.perf_counter() - t0 > limit_seconds:
            print(f"[dlsp eval] time limit reached after {i} of {len(tasks)} tasks", file=sys.stderr)
            return outcomes, True
        for name, system in systems.items():
            text, ms, passes, tokens, *conf = system(task)
            outcomes.append(score(task.id, task.kind, name, text, task.middle, ms, passes, tokens,
                                  conf[0] if conf else None))
        if progress is not None:
            progress(i + 1, len(tasks), time.perf_counter() - t0, outcomes)
    return outcomes, False


def progress_printer(every_s: float = 60.0, out: Any = None) -> Callable[[int, int, float, list[Outcome]], None]:
    """A `progress` callback that prints, at most once per `every_s` seconds and after the last
    task, how many tasks are done, the time left at the rate so far and each system's exact match
    so far (task counts and scores only: no source text)."""
    last = [-every_s]

    def report(done: int, total: int, elapsed: float, outcomes: list[Outcome]) -> None:
        if elapsed - last[0] < every_s and done < total:
            return
        last[0] = elapsed
        hits: dict[str, list[int]] = {}
        for o in outcomes:
            h = hits.setdefault(o.system, [0, 0])
            h[0] += int(o.exact_match)
            h[1] += 1
        ems = ", ".join(f"{k} {h[0]}/{h[1]}" for k, h in hits.items())
        left = elapsed / done * (total - done)
        print(f"[dlsp eval] {done}/{total} tasks, {elapsed / 60:.1f} min, ~{left / 60:.1f} min left; "
              f"exact so far: {ems}", file=out or sys.stderr, flush=True)

    return report


def bar_check(results: dict[str, Any]) -> dict[str, Any]:
    """Single-line exact match of each model sampler against BAR_FACTOR x the best heuristic's.
    A model at 0 never passes (2 x 0 would be a bar of nothing)."""
    heur = {k: v["single_line"]["exact_match"] for k, v in results.items()
            if k.startswith("heuristic/") and "single_line" in v}
    if not heur:
        return {"rule": "needs the heuristic baseline", "checks": {}, "pass": None}
    best_name = max(heur, key=lambda k: heur[k])
    bar = BAR_FACTOR * heur[best_name]
    checks = {}
    for name, kinds in results.items():
        if name.startswith("model/") and "single_line" in kinds:
            em = kinds["single_line"]["exact_match"]
            checks[name] = {"exact_match": em, "bar": bar, "pass": em >= bar and em > 0}
    return {"rule": f"single-line EM >= {BAR_FACTOR:g} x best heuristic ({best_name}: {heur[best_name]:.3f})",
            "best_heuristic": best_name, "checks": checks,
            "pass": all(c["pass"] for c in checks.values()) if checks else None}


def best_heuristic(results: dict[str, Any]) -> dict[str, Any]:
    """kind -> the heuristic with the highest exact match (edit similarity breaks ties)."""
    out = {}
    for kind in [*KINDS, "all"]:
        cands = {k: v[kind] for k, v in results.items() if k.startswith("heuristic/") and kind in v}
        if cands:
            name = max(cands, key=lambda k: (cands[k]["exact_match"], cands[k]["edit_similarity"]))
            out[kind] = {"system": name, **cands[name]}
    return out


def model_meta(engine: Engine, path: str | None) -> dict[str, Any]:
    ckpt = Path(path) if path is not None else DEFAULT_MODEL_DIR
    meta: dict[str, Any] = {"path": str(ckpt), "embedded_default": path is None, **engine.info()}
    try:
        cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
        meta["dlsp_training"] = cfg.get("dlsp_training")
    except (OSError, ValueError):
        meta["dlsp_training"] = None
    return meta


def table(results: dict[str, Any]) -> str:
    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    head = (f"{'system':<30} {'kind':<12} {'n':>4} {'EM':>6} {'edit sim':>8} {'ms/task':>9} {'fwd/token':>9} "
            f"{'repeat':>6} {'loops':>6}")
    rows = [head, "-" * len(head)]
    for system, kinds in results.items():
        for kind in [*KINDS, "all"]:
            if kind in kinds:
                r = kinds[kind]
                rows.append(f"{system:<30} {kind:<12} {r['n']:>4} {r['exact_match']:>6.3f} "
                            f"{r['edit_similarity']:>8.3f} {fmt(r['ms_per_task'], '9.1f')} "
                            f"{fmt(r['forward_passes_per_token'], '9.3f')} {r.get('repetition', 0.0):>6.3f} "
                            f"{r.get('looping', 0.0):>6.3f}")
    sel = [(system, kind, kinds[kind]["selective"], kinds[kind]["n"]) for system, kinds in results.items()
           for kind in KINDS if kind in kinds and kinds[kind].get("selective")]
    if sel:
        rows += ["", "the most confident fills (a threshold on the engine's confidence keeping a share of the tasks):"]
        for system, kind, by, _ in sel:
            cells = "   ".join(f"{float(c):.0%}: EM {v['exact_match']:.3f} ES {v['edit_similarity']:.3f}"
                               f" (conf >= {fmt(v['min_confidence'], '.2f')})" for c, v in by["coverage"].items())
            rows.append(f"{system:<30} {kind:<12} {cells}")
        rows += ["", "minConfidence t: the share shown, its EM / ES, and the EM of the fills held back:"]
        for system, kind, by, n in sel:
            cells = "   ".join(f"{t}: {v['shown']['n'] / n:.0%} {fmt(v['shown']['exact_match'], '.3f')} / "
                               f"{fmt(v['shown']['edit_similarity'], '.3f')}, {fmt(v['held_back']['exact_match'], '.3f')}"
                               for t, v in by["threshold"].items())
            rows.append(f"{system:<30} {kind:<12} {cells}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    a = parse(list(sys.argv[1:] if argv is None else argv))
    corpus = Path(a.corpus)
    if not corpus.is_file():
        print(f"dlsp eval: corpus file {corpus} not found; build the held-out split with "
              "`dlsp build-corpus` or pass --corpus PATH", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - set(KINDS):
        print(f"dlsp eval: --kinds takes a comma list of {', '.join(KINDS)}", file=sys.stderr)
        return 2
    tasks = make_tasks(load_documents(corpus), a.n_per_kind, a.seed, kinds=kinds, balance=a.balance)
    if a.cursor == "after_indent":
        tasks = [after_indent(t) for t in tasks]
    if not tasks:
        print(f"dlsp eval: no usable files in {corpus} (all too short)", file=sys.stderr)
        return 2
    engine = Engine.from_pretrained(a.model, device=a.device, int8={"auto": None, "on": True, "off": False}[a.int8])
    try:
        systems = build_systems(engine, a)
    except ValueError as exc:
        print(f"dlsp eval: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    outcomes, stopped = evaluate(tasks, systems, a.limit_seconds, progress=progress_printer())
    results = aggregate(outcomes)
    done = {o.task_id for o in outcomes}
    report = {
        "settings": {k: v for k, v in vars(a).items()} | {"hole_tokens": HOLE_TOKENS,
                                                          "corpus": str(corpus)},
        "model": model_meta(engine, a.model),
        "n_tasks": len(done),
        "sources": dict(Counter(t.source.split("/")[0] for t in tasks if t.id in done).most_common()),
        "stopped_early": stopped,
        "elapsed_s": round(time.perf_counter() - t0, 2),
        "results": results,
        "best_heuristic": best_heuristic(results),
        "bar": bar_check(results),
        "versus_floor": floor_checks(outcomes),
        "outcomes": [o.__dict__ for o in outcomes],
    }
    print(table(results))
    bar = report["bar"]
    for name, c in bar["checks"].items():
        print(f"bar [{bar['rule']}] {name}: EM {c['exact_match']:.3f} vs {c['bar']:.3f} -> "
              f"{'PASS' if c['pass'] else 'FAIL'}")
    for row in lines(report["versus_floor"]):
        print(row)
    if a.out:
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
