"""Paired comparisons of systems on the same tasks, and pooling of several `dlsp eval` reports.

One draw of 100 single lines decides little: two systems that each get ~11% right differ by
+-6 points between draws (measured here: seed 0 had the adapted model ahead of its AR floor by
1 point, seed 1 behind by 6). `versus` gives the difference of a metric on the tasks both systems
answered, with a paired bootstrap interval (resampling tasks, both systems together), and checks
the pretrained-weights issue's target: single-line exact match at least the floor's + `margin`.
`python -m engine.evaluation.paired a.json b.json ...` pools reports (different seeds, the same
systems) and prints the table and the comparisons over all their tasks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.evaluation.metrics import Outcome, aggregate

FLOOR = "base_ar"
MARGIN = 0.05  # the target: exact match >= the AR floor's + 5 points


def versus(outcomes: Iterable[Outcome], system: str, baseline: str, kind: str = "single_line",
           metric: str = "exact_match", resamples: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """`system` minus `baseline` on `metric`, over the tasks of `kind` both answered: the mean
    difference and a 95% paired bootstrap interval. None when they share no task."""
    mine = {o.task_id: float(getattr(o, metric)) for o in outcomes if o.system == system and o.kind == kind}
    theirs = {o.task_id: float(getattr(o, metric)) for o in outcomes if o.system == baseline and o.kind == kind}
    if not mine or not theirs:
        return None
    ids = sorted(mine.keys() & theirs.keys())
    if not ids:
        return None
    diffs = [mine[i] - theirs[i] for i in ids]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return {"n": n, "difference": sum(diffs) / n, "low": means[int(0.025 * resamples)],
            "high": means[min(resamples - 1, int(0.975 * resamples))]}


def floor_checks(outcomes: list[Outcome], margin: float = MARGIN) -> dict[str, Any]:
    """Each model system against the AR floor on single lines: exact match and edit similarity
    differences with intervals, and whether exact match clears the floor by `margin`."""
    systems = sorted({o.system for o in outcomes if o.system != FLOOR and not o.system.startswith("heuristic/")})
    out: dict[str, Any] = {}
    for s in systems:
        em = versus(outcomes, s, FLOOR, metric="exact_match")
        if em is None:
            continue
        es = versus(outcomes, s, FLOOR, metric="edit_similarity")
        out[s] = {"exact_match": em, "edit_similarity": es, "target": f"EM >= {FLOOR} + {margin:g}",
                  "pass": em["difference"] >= margin - 1e-9}
    return out


def lines(checks: dict[str, Any]) -> list[str]:
    rows = []
    for s, c in checks.items():
        em, es = c["exact_match"], c["edit_similarity"]
        rows.append(f"vs {FLOOR} [single_line, n={em['n']}] {s}: EM {em['difference']:+.3f} "
                    f"(95% CI {em['low']:+.3f}..{em['high']:+.3f}), edit sim {es['difference']:+.3f} "
                    f"({es['low']:+.3f}..{es['high']:+.3f}); {c['target']}: {'PASS' if c['pass'] else 'FAIL'}")
    return rows


def pool(reports: list[dict[str, Any]]) -> list[Outcome]:
    """The outcomes of several reports as one set; task ids get their report's index, so the same
    task id drawn with another seed stays a task of its own."""
    out = []
    for i, rep in enumerate(reports):
        for o in rep.get("outcomes", []):
            out.append(Outcome(**{**o, "task_id": f"{i}:{o['task_id']}"}))
    return out


def main(argv: list[str] | None = None) -> int:
    from engine.evaluation.run import table

    p = argparse.ArgumentParser(prog="python -m engine.evaluation.paired", description=__doc__)
    p.add_argument("reports", nargs="+", help="JSON reports written by `dlsp eval --out`")
    p.add_argument("--pair", action="append", default=[], metavar="SYSTEM,BASELINE",
                   help="also compare these two systems (repeatable), e.g. 'model/fast:end_mass=0.5,model/fast'")
    a = p.parse_args(argv)
    try:
        reports = [json.loads(Path(r).read_text(encoding="utf-8")) for r in a.reports]
        outcomes = pool(reports)
    except (OSError, ValueError, TypeError) as exc:
        print(f"paired: cannot read the reports: {exc}", file=sys.stderr)
        return 2
    print(table(aggregate(outcomes)))
    for row in lines(floor_checks(outcomes)):
        print(row)
    for pair in a.pair:
        system, _, baseline = pair.rpartition(",")
        for metric in ("exact_match", "edit_similarity"):
            d = versus(outcomes, system, baseline, metric=metric)
            if d is None:
                print(f"paired: {system!r} and {baseline!r} share no single-line task", file=sys.stderr)
                return 2
            print(f"{system} vs {baseline} [single_line, n={d['n']}] {metric}: {d['difference']:+.3f} "
                  f"(95% CI {d['low']:+.3f}..{d['high']:+.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
