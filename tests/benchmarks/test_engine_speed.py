"""Smoke test of the engine speed benchmark on a tiny checkpoint (fields, not timings)."""

from __future__ import annotations

import json

import pytest

from benchmarks import engine_speed


def test_cases_are_seeded_and_real_source():
    a, b = engine_speed.make_cases(4, seed=0), engine_speed.make_cases(4, seed=0)
    assert a == b and a != engine_speed.make_cases(4, seed=1)
    assert all(16 <= c.hole_tokens <= 32 and len(c.prefix) >= 2000 and len(c.suffix) >= 800 for c in a)
    assert len({c.source for c in a}) == 4  # round-robin over the files


def test_targets_pass_and_fail():
    def stats(naive_ms, fast_ms, ppt):
        return {"naive": {"ms_per_infill": naive_ms}, "fast": {"ms_per_infill": fast_ms,
                                                               "forward_passes_per_generated_token": ppt}}

    good = engine_speed.targets(stats(600.0, 100.0, 0.25))
    assert good["speedup"] == 6.0 and good["speedup_target"]["pass"] and good["passes_per_token_target"]["pass"]
    bad = engine_speed.targets(stats(300.0, 100.0, None))
    assert not bad["speedup_target"]["pass"] and not bad["passes_per_token_target"]["pass"]


def test_main_writes_the_report(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = engine_speed.main(["--n", "2", "--model", str(tiny_ckpt), "--threads", "1", "--device", "cpu",
                            "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert set(r["samplers"]) == {"naive", "fast"}
    for s in r["samplers"].values():
        assert s["n"] == 2 and s["ms_per_infill"] > 0 and s["forward_passes_per_infill"] >= 1
        assert s["tokens_committed_per_forward"] > 0
    assert 0.0 <= r["same_text_rate"] <= 1.0 and r["speedup"] > 0
    assert {"speedup_target", "passes_per_token_target"} <= set(r) and len(r["cases"]) == 2
    printed = capsys.readouterr().out
    assert "speedup_target" in printed and ("PASS" in printed or "FAIL" in printed)


def test_fast_spec_sets_the_fast_sampler(tiny_ckpt, tmp_path):
    out = tmp_path / "speed.json"
    rc = engine_speed.main(["--n", "1", "--model", str(tiny_ckpt), "--threads", "1", "--device", "cpu",
                            "--fast", "fast:threshold=2.0,min_per_step=4", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["settings"]["sampling"]["fast"]["min_per_step"] == 4
    assert r["settings"]["sampling"]["naive"]["sampler"] == "naive"
    case = r["cases"][0]
    assert case["fast"]["forward_passes"] <= -(-case["hole_tokens"] // 4)  # >= 4 commits per forward
    assert case["naive"]["forward_passes"] == case["naive"]["committed"]  # naive: one per forward


def test_also_runs_more_samplers_on_the_same_cases(tiny_ckpt, tmp_path, capsys):
    """`--also SPEC`: a row of its own on the same cases, with ratios over the fast sampler;
    a spec that repeats one already run is refused."""
    out = tmp_path / "speed.json"
    rc = engine_speed.main(["--n", "2", "--model", str(tiny_ckpt), "--threads", "1", "--device", "cpu",
                            "--also", "fast:min_per_step=4", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert list(r["samplers"]) == ["naive", "fast", "fast:min_per_step=4"]
    assert r["settings"]["sampling"]["fast:min_per_step=4"]["min_per_step"] == 4
    v = r["versus_fast"]["fast:min_per_step=4"]
    s, f = r["samplers"]["fast:min_per_step=4"], r["samplers"]["fast"]
    assert v["ms_ratio"] == s["ms_per_infill"] / f["ms_per_infill"]
    assert v["forward_passes_per_token_ratio"] == (s["forward_passes_per_generated_token"]
                                                   / f["forward_passes_per_generated_token"])
    for case in r["cases"]:  # four commits a forward: never more forwards than the default's
        assert case["fast:min_per_step=4"]["forward_passes"] <= -(-case["hole_tokens"] // 4)
    assert "fast:min_per_step=4 over fast" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="already run"):
        engine_speed.main(["--n", "1", "--model", str(tiny_ckpt), "--device", "cpu", "--also", "fast",
                           "--out", ""])
