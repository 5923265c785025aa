"""Paired comparisons against the AR floor, and pooling of `dlsp eval` reports."""

from __future__ import annotations

import json

from engine.evaluation.metrics import Outcome
from engine.evaluation.paired import floor_checks, main, pool, versus


def _outcomes(system: str, right: list[bool], sim: float = 0.5) -> list[Outcome]:
    return [Outcome(f"t{i}", "single_line", system, "x", ok, 1.0 if ok else sim) for i, ok in enumerate(right)]


def test_identical_systems_differ_by_nothing():
    right = [i % 3 == 0 for i in range(60)]
    d = versus(_outcomes("a", right) + _outcomes("b", right), "a", "b")
    assert d == {"n": 60, "difference": 0.0, "low": 0.0, "high": 0.0}


def test_the_interval_covers_the_difference_and_narrows_with_more_tasks():
    a = [i % 4 == 0 for i in range(40)]  # 25%
    b = [i % 5 == 0 for i in range(40)]  # 20%
    d = versus(_outcomes("a", a) + _outcomes("b", b), "a", "b")
    assert d["n"] == 40 and abs(d["difference"] - 0.05) < 1e-9
    assert d["low"] < 0.05 < d["high"] and d["low"] < 0  # 40 tasks cannot tell 5 points apart
    many_a = [Outcome(f"t{i}", "single_line", "a", "x", i % 4 == 0, 0.0) for i in range(1000)]
    many_b = [Outcome(f"t{i}", "single_line", "b", "x", i % 5 == 0, 0.0) for i in range(1000)]
    wide, narrow = d["high"] - d["low"], (lambda x: x["high"] - x["low"])(versus(many_a + many_b, "a", "b"))
    assert narrow < wide / 3


def test_only_shared_tasks_of_the_kind_count():
    a = _outcomes("a", [True] * 10) + [Outcome("m0", "multi_line", "a", "x", True, 1.0)]
    b = _outcomes("b", [False] * 5)
    d = versus(a + b, "a", "b")
    assert d["n"] == 5 and d["difference"] == 1.0 and d["low"] == d["high"] == 1.0
    assert versus(a, "a", "b") is None


def test_floor_checks_apply_the_margin():
    floor = _outcomes("base_ar", [i % 10 == 0 for i in range(100)])  # 10%
    ahead = _outcomes("model/fast", [i % 10 == 0 or i % 10 == 1 for i in range(100)])  # 20%
    level = _outcomes("model/naive", [i % 10 == 0 or i == 1 for i in range(100)])  # 11%
    heur = _outcomes("heuristic/empty", [False] * 100)
    checks = floor_checks(floor + ahead + level + heur)
    assert set(checks) == {"model/fast", "model/naive"}
    assert checks["model/fast"]["pass"] and not checks["model/naive"]["pass"]
    assert abs(checks["model/fast"]["exact_match"]["difference"] - 0.10) < 1e-9


def test_pooled_reports_keep_same_named_tasks_apart(tmp_path, capsys):
    def report(right_a, right_f):
        outs = _outcomes("model/fast", right_a) + _outcomes("base_ar", right_f)
        return {"outcomes": [o.__dict__ for o in outs]}

    r0, r1 = report([True, False], [False, False]), report([False, False], [True, True])
    assert len(pool([r0, r1])) == 8  # t0 of each report is its own task
    for i, r in enumerate((r0, r1)):
        (tmp_path / f"r{i}.json").write_text(json.dumps(r))
    assert main([str(tmp_path / "r0.json"), str(tmp_path / "r1.json"),
                 "--pair", "model/fast,base_ar"]) == 0
    out = capsys.readouterr().out
    assert "vs base_ar [single_line, n=4] model/fast: EM -0.250" in out
    assert "model/fast vs base_ar [single_line, n=4] exact_match: -0.250" in out
    assert main([str(tmp_path / "missing.json")]) == 2
