"""FIM evaluation: task extraction, metrics, and `dlsp eval` end to end on a tiny checkpoint."""

from __future__ import annotations

import json
import random

import pytest

from engine.evaluation import run
from engine.evaluation.metrics import (
    aggregate,
    edit_similarity,
    exact_match,
    levenshtein,
    normalize,
    score,
)
from engine.evaluation.tasks import Document, FimTask, TaskConfig, load_documents, make_tasks


def _synthetic_file(k: int) -> str:
    """Python-looking text with block bodies, blank lines and varied names."""
    rng = random.Random(k)
    parts = [f"import os\nimport sys\n\nLIMIT_{k} = {rng.randint(1, 99)}\n\n"]
    for f in range(6):
        name = f"func_{k}_{f}"
        parts.append(f"def {name}(alpha, beta):\n"
                     f"    total = alpha + beta * {rng.randint(2, 9)}\n"
                     f"    if total > LIMIT_{k}:\n"
                     f"        total = total - {rng.randint(1, 5)}\n"
                     f"        print('big', total)\n"
                     f"    for item in range(beta):\n"
                     f"        total += item\n"
                     f"    return total\n\n")
    return "".join(parts)


def _write_corpus(path, docs: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, (package, text) in enumerate(docs):
            f.write(json.dumps({"package": package, "path": f"mod_{i}.py", "text": text}) + "\n")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "test.jsonl"
    _write_corpus(path, [(f"pkg{k}", _synthetic_file(k)) for k in range(4)] + [("tiny", "x = 1\n")])
    return path


@pytest.fixture
def docs(corpus):
    return load_documents(corpus)


# ---- tasks ----------------------------------------------------------------------------------

def test_load_documents_keeps_provenance(docs):
    assert [d.source for d in docs][:2] == ["pkg0/mod_0.py", "pkg1/mod_1.py"]
    assert [d.package for d in docs][:2] == ["pkg0", "pkg1"]


def test_tasks_are_deterministic_with_the_seed(docs):
    a, b = make_tasks(docs, 10, seed=3), make_tasks(docs, 10, seed=3)
    assert a == b and len(a) == 30
    assert a != make_tasks(docs, 10, seed=4)
    assert len({t.id for t in a}) == 30


def test_pieces_reassemble_a_window_of_the_source(docs):
    texts = {d.source: d.text for d in docs}
    cfg = TaskConfig(before=200, after=100)
    for t in make_tasks(docs, 15, seed=1, cfg=cfg):
        assert t.prefix + t.middle + t.suffix in texts[t.source]
        assert len(t.prefix) <= cfg.before and len(t.suffix) <= cfg.after
        assert t.middle.strip()


def test_kinds_have_their_shape(docs):
    tasks = make_tasks(docs, 20, seed=0)
    assert {t.kind for t in tasks} == {"single_line", "multi_line", "span"}
    for t in tasks:
        if t.kind in ("single_line", "multi_line"):  # whole lines: the hole starts and ends at line breaks
            assert t.prefix == "" or t.prefix.endswith("\n")
            assert t.suffix == "" or t.suffix.startswith("\n")
        lines = t.middle.split("\n")
        if t.kind == "single_line":
            assert len(lines) == 1 and lines[0].strip()
        elif t.kind == "multi_line":
            assert 2 <= len(lines) <= 8 and lines[0].strip() and lines[-1].strip()
            header = t.prefix.rstrip("\n").split("\n")[-1]  # the synthetic files have a body after each ':'
            assert header.rstrip().endswith(":")
            indent = len(lines[0]) - len(lines[0].lstrip())
            assert indent > len(header) - len(header.lstrip())
        else:  # span: no identifier is cut in half
            whole = t.prefix + t.middle + t.suffix
            for cut in (len(t.prefix), len(t.prefix) + len(t.middle)):
                if 0 < cut < len(whole):
                    assert not (whole[cut - 1].isalnum() and whole[cut].isalnum())


def test_tasks_are_balanced_over_packages():
    """One package with many files must not make the whole evaluation (IPython holds most files of
    the held-out split): balance="package" draws the package first; balance="file" does not."""
    big = [("big", _synthetic_file(k)) for k in range(40)]
    small = [(f"small{k}", _synthetic_file(100 + k)) for k in range(3)]
    docs = [Document(f"{p}/m{i}.py", t, package=p) for i, (p, t) in enumerate(big + small)]
    share = {b: sum(t.source.startswith("big/") for t in make_tasks(docs, 40, seed=0, balance=b)) / 120
             for b in ("package", "file")}
    assert share["package"] < 0.45 < 0.8 < share["file"]
    with pytest.raises(ValueError, match="balance"):
        make_tasks(docs, 1, balance="repo")


def test_short_files_are_skipped():
    docs = [Document("a/b.py", "x = 1\n" * 5)]
    assert make_tasks(docs, 5, seed=0) == []


# ---- metrics --------------------------------------------------------------------------------

def test_normalize_and_exact_match():
    assert normalize("\n\n  a = 1   \n\tb\t\n\n") == "  a = 1\n\tb"
    assert exact_match("x = 1  \n", "x = 1")
    assert not exact_match(" x = 1", "x = 1")  # leading indentation matters


@pytest.mark.parametrize("a,b,dist", [("kitten", "sitting", 3), ("", "abc", 3), ("abc", "abc", 0),
                                      ("flaw", "lawn", 2), ("ab", "ba", 2)])
def test_levenshtein_known_values(a, b, dist):
    assert levenshtein(a, b) == dist == levenshtein(b, a)


def test_edit_similarity_known_values():
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert edit_similarity("", "") == 1.0
    assert edit_similarity("abc", "") == 0.0
    assert edit_similarity("return x  \n", "return x") == 1.0


def test_aggregate_per_kind():
    outs = [score("t1", "single_line", "s", "a", "a", ms=10, forward_passes=4, generated_tokens=2),
            score("t2", "single_line", "s", "ab", "cd", ms=30, forward_passes=2, generated_tokens=2),
            score("t3", "span", "s", "", "xy", ms=20)]
    r = aggregate(outs)["s"]
    assert r["single_line"]["exact_match"] == 0.5
    assert r["single_line"]["edit_similarity"] == pytest.approx(0.5)
    assert r["single_line"]["ms_per_task"] == 20
    assert r["single_line"]["forward_passes_per_token"] == 1.5
    assert r["span"]["forward_passes_per_token"] is None
    assert r["all"]["n"] == 3 and r["all"]["exact_match"] == pytest.approx(1 / 3)


# ---- run ------------------------------------------------------------------------------------

def test_bar_check_needs_twice_the_best_heuristic():
    res = {"heuristic/a": {"single_line": {"exact_match": 0.2}}, "heuristic/b": {"single_line": {"exact_match": 0.1}},
           "model/fast": {"single_line": {"exact_match": 0.45}}, "model/naive": {"single_line": {"exact_match": 0.3}}}
    bar = run.bar_check(res)
    assert bar["best_heuristic"] == "heuristic/a"
    assert bar["checks"]["model/fast"]["pass"] and not bar["checks"]["model/naive"]["pass"]
    assert bar["pass"] is False
    zero = run.bar_check({"heuristic/a": {"single_line": {"exact_match": 0.0}},
                          "model/fast": {"single_line": {"exact_match": 0.0}}})
    assert zero["checks"]["model/fast"]["pass"] is False


def test_untrained_baseline_is_fixed_random_init(tiny_ckpt):
    from engine import Engine

    eng = Engine.from_pretrained(tiny_ckpt, device="cpu")
    u1, u2 = run.untrained_engine(eng, seed=0), run.untrained_engine(eng, seed=0)
    w = "layers.0.wq.weight"
    assert u1.args == eng.args and u1.tokenizer is eng.tokenizer
    assert u1.model.state_dict()[w].equal(u2.model.state_dict()[w])
    assert not u1.model.state_dict()[w].equal(eng.model.state_dict()[w])


def test_main_end_to_end_writes_json(tiny_ckpt, corpus, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--n-per-kind", "2",
                   "--max-new-tokens", "8", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"settings", "model", "results", "best_heuristic", "bar", "outcomes", "n_tasks"} <= set(report)
    assert set(report["results"]) == {"model/fast", "model/naive", "untrained", "heuristic/repeat_line_above",
                                      "heuristic/repeat_nonblank_above", "heuristic/empty"}
    for system in report["results"].values():
        assert set(system) == {"single_line", "multi_line", "span", "all"} and system["all"]["n"] == 6
        assert 0.0 <= system["all"]["edit_similarity"] <= 1.0
    assert report["results"]["model/fast"]["all"]["ms_per_task"] > 0
    assert set(report["bar"]["checks"]) == {"model/fast", "model/naive"}
    printed = capsys.readouterr().out
    assert "model/fast" in printed and "the most confident fills" in printed
    for o in report["outcomes"]:
        if o["kind"] == "single_line":
            assert "\n" not in o["prediction"]
        # model systems carry the engine's score of each fill, heuristics none
        assert (o["confidence"] is None) == o["system"].startswith("heuristic/")
    assert report["results"]["heuristic/empty"]["all"]["selective"] is None
    sel = report["results"]["model/fast"]["single_line"]["selective"]
    assert set(sel["coverage"]) == {"0.25", "0.5", "0.75"} and sel["coverage"]["0.25"]["n"] == 1
    assert sel["coverage"]["0.75"]["n"] == 2 and set(sel["threshold"]) == {"0.7", "0.8", "0.9"}
    assert all(v["shown"]["n"] + v["held_back"]["n"] == 2 for v in sel["threshold"].values())


def test_selective_scores_keep_the_most_confident_fills():
    from engine.evaluation.metrics import selective

    outs = [score(f"t{i}", "single_line", "m", pred, "x = 1", confidence=c)
            for i, (pred, c) in enumerate([("x = 1", 0.9), ("y", 0.14), ("x = 1", 0.6), ("x = 2", None)])]
    sel = selective(outs, thresholds=(0.85, 0.5))
    cov = sel["coverage"]
    assert cov["0.25"] == {"n": 1, "exact_match": 1.0, "edit_similarity": 1.0, "min_confidence": 0.9}
    assert cov["0.5"]["n"] == 2 and cov["0.5"]["exact_match"] == 1.0 and cov["0.5"]["min_confidence"] == 0.6
    assert cov["0.75"]["n"] == 3 and cov["0.75"]["exact_match"] == pytest.approx(2 / 3)
    # minConfidence 0.85: 0.9 shown, 0.6 and 0.14 held back, the unscored fill shown (as the
    # server does); 0.5: only 0.14 held back
    assert sel["threshold"]["0.85"]["shown"]["n"] == 2 and sel["threshold"]["0.85"]["shown"]["exact_match"] == 0.5
    assert sel["threshold"]["0.85"]["held_back"] == {"n": 2, "exact_match": 0.5,
                                                     "edit_similarity": pytest.approx((1.0 + 0.0) / 2)}
    assert sel["threshold"]["0.5"]["held_back"]["n"] == 1
    assert selective([score("t", "single_line", "h", "x", "x")]) is None  # no confidences: nothing to rank
    # the unscored fill is the least confident by coverage even when it is right
    outs[3] = score("t3", "single_line", "m", "x = 1", "x = 1", confidence=None)
    assert selective(outs, (1.0,))["coverage"]["1"]["n"] == 4
    assert selective(outs, (0.75,))["coverage"]["0.75"]["exact_match"] == pytest.approx(2 / 3)


def test_heuristic_scores_one_on_repeated_lines(tiny_ckpt, tmp_path):
    corpus = tmp_path / "rep.jsonl"
    _write_corpus(corpus, [("rep", "    total = compute(alpha, beta)\n" * 40)])
    out = tmp_path / "eval.json"
    rc = run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--n-per-kind", "5", "--samplers", "",
                   "--baselines", "heuristic", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["results"]["heuristic/repeat_line_above"]["single_line"]["exact_match"] == 1.0
    assert report["results"]["heuristic/empty"]["single_line"]["exact_match"] == 0.0
    assert report["best_heuristic"]["single_line"]["system"] == "heuristic/repeat_line_above"


def test_nonblank_heuristic_skips_blank_lines_and_what_is_typed():
    task = FimTask("t", "single_line", "def f():\n    return g(x)\n\n    ret", "", "\n", "p/m.py")
    assert run._line_above(task) == ""
    assert run._nonblank_line_above(task) == "urn g(x)"
    assert run._nonblank_line_above(FimTask("t", "single_line", "", "", "", "p/m.py")) == ""


def test_kinds_option_draws_only_those_kinds(tiny_ckpt, corpus, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--kinds", "single_line",
                     "--n-per-kind", "3", "--samplers", "", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {o["kind"] for o in report["outcomes"]} == {"single_line"} and report["n_tasks"] == 3
    assert run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--kinds", "paragraph", "--out", ""]) == 2
    assert "--kinds" in capsys.readouterr().err


def test_after_indent_moves_the_indentation_into_the_prefix():
    from engine.evaluation.tasks import after_indent

    t = FimTask("t", "single_line", "def f(x):\n", "    return x", "\n", "s")
    moved = after_indent(t)
    assert moved.prefix == "def f(x):\n    " and moved.middle == "return x" and moved.suffix == "\n"
    assert moved.prefix + moved.middle == t.prefix + t.middle
    for same in (FimTask("u", "single_line", "a\n", "x = 1", "\n", "s"),  # nothing to move
                 FimTask("v", "single_line", "a\n", "    ", "\n", "s")):  # a blank line stays whole
        assert after_indent(same) == same


def test_cursor_option_evaluates_from_after_the_indentation(tiny_ckpt, corpus, tmp_path, monkeypatch):
    seen = []

    def spy(tasks, systems, limit_seconds=None, progress=None):
        seen.extend(tasks)
        return [], False

    out = tmp_path / "eval.json"
    args = ["--model", str(tiny_ckpt), "--corpus", str(corpus), "--kinds", "single_line", "--n-per-kind", "4",
            "--samplers", "", "--baselines", "", "--out", str(out)]
    monkeypatch.setattr(run, "evaluate", spy)
    assert run.main(args) == 0
    plain = list(seen)
    seen.clear()
    assert run.main(args + ["--cursor", "after_indent"]) == 0
    assert [t.prefix + t.middle for t in seen] == [t.prefix + t.middle for t in plain]
    indented = [i for i, t in enumerate(plain) if t.middle[:1] in (" ", "\t") and t.middle.strip()]
    assert indented  # the corpus has indented lines
    for i in indented:
        assert seen[i].prefix.endswith(plain[i].middle[:1]) and not seen[i].middle[:1].isspace()


def test_sampler_specs_become_separate_systems(tiny_ckpt, corpus, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--n-per-kind", "1", "--max-new-tokens", "8",
                   "--samplers", "fast;fast:min_per_step=4", "--baselines", "", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"model/fast", "model/fast:min_per_step=4"}
    assert run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--samplers", "magic",
                     "--out", ""]) == 2
    assert run.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--samplers", "fast:nope=1",
                     "--out", ""]) == 2
    assert "nope=1" in capsys.readouterr().err


def test_missing_corpus_exits_2(tmp_path, capsys):
    assert run.main(["--corpus", str(tmp_path / "nope.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err


def test_limit_seconds_keeps_systems_on_the_same_tasks(docs):
    tasks = make_tasks(docs, 3, seed=0)
    systems = {name: run.heuristic_system(fn) for name, fn in run.HEURISTICS.items()}
    outs, stopped = run.evaluate(tasks, systems, limit_seconds=-1.0)
    assert stopped and outs == []
    outs, stopped = run.evaluate(tasks, systems, limit_seconds=None)
    assert not stopped and len(outs) == len(systems) * len(tasks)


def test_progress_reports_tasks_done_and_exact_match_so_far_without_source_text(docs):
    import io

    tasks = make_tasks(docs, 3, seed=0)
    exact = {"exact": lambda t: (t.middle, 1.0, 1, 1), "wrong": lambda t: ("zzz", 1.0, 1, 1)}
    calls = []
    run.evaluate(tasks, exact, progress=lambda d, n, s, o: calls.append((d, n, len(o))))
    assert calls == [(i + 1, len(tasks), 2 * (i + 1)) for i in range(len(tasks))]
    buf = io.StringIO()
    run.evaluate(tasks, exact, progress=run.progress_printer(every_s=3600, out=buf))
    lines = buf.getvalue().splitlines()  # the first task (nothing printed before) and the last
    n = len(tasks)
    assert len(lines) == 2 and lines[0].startswith(f"[dlsp eval] 1/{n} tasks")
    assert f"{n}/{n} tasks" in lines[1] and f"exact {n}/{n}, wrong 0/{n}" in lines[1]
    assert not any(t.middle.strip() and t.middle.strip() in buf.getvalue() for t in tasks)


def test_repetition_metric_flags_loops():
    from engine.evaluation.metrics import repetition

    assert repetition("x = compute(a, b)\nreturn x") == 0.0
    assert repetition("foo(bar) " * 20) > 0.8
    out = aggregate([score("t", "multi_line", "s", "a b c d e " * 10, "ref")])
    assert out["s"]["all"]["looping"] == 1.0


def test_base_ar_reads_left_to_right_and_ignores_the_suffix(tiny_ckpt, monkeypatch):
    """The floor for adapted models: the base weights with every layer causal, prefix only."""
    from dataclasses import replace

    from engine import gguf_import
    from engine.engine import Engine

    engine = Engine.from_pretrained(tiny_ckpt, device="cpu")
    base = gguf_import.BaseModel(args=replace(engine.args, family="llama"),
                                 state={k: v.clone() for k, v in engine.model.state_dict().items()},
                                 tokenizer_json="")
    monkeypatch.setattr(gguf_import, "read_base", lambda *a, **k: base)
    engine.adapted_from_base = True
    a = run.parse(["--samplers", "fast", "--baselines", "base_ar"])
    systems = run.build_systems(engine, a)
    assert set(systems) == {"model/fast", "base_ar"}
    ar = run.base_ar_engine(engine)
    assert ar.args.causal_layers == ar.args.n_layers and ar.default_sampling.block == 1
    t1 = FimTask("t1", "single_line", "def add(a, b):\n    ", "return a + b", "\nprint(1)\n", "p/f.py")
    t2 = replace(t1, id="t2", suffix="\nclass Point:\n    pass\n")
    got1, got2 = systems["base_ar"](t1), systems["base_ar"](t2)
    assert got1[0] == got2[0]  # the suffix is not read
    assert got1[2] >= got1[3]  # one forward (at least) per generated token: left to right
    two = run.build_systems(engine, run.parse(["--samplers", "fast", "--baselines", "base_ar",
                                                "--floor-samplers", "fast;fast:close_brackets=8"]))
    assert set(two) == {"model/fast", "base_ar", "base_ar/fast:close_brackets=8"}  # the floor with a rule too
    assert two["base_ar"](t1)[0] == got1[0]
    engine.adapted_from_base = False  # models trained from scratch have no AR floor
    assert "base_ar" not in run.build_systems(engine, a)
