"""The server-path quality benchmark on a tiny checkpoint: the shapes, the scoring and the report
(fields and what they must hold, not quality)."""

from __future__ import annotations

import json

import pytest

from benchmarks import server_eval

SOURCE = "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n\n\n" for i in range(12))


def test_shapes_leave_the_cursor_where_an_editor_or_harness_would():
    prefix, middle, suffix = "def f(x):\n", "    y = x + 1", "\n    return y\n"
    text, cursor, original = server_eval.shaped(prefix, middle, suffix, "gap")
    assert text == "def f(x):\n\n    return y\n" and cursor == len(prefix) and original == prefix + middle + suffix
    text, cursor, _ = server_eval.shaped(prefix, middle, suffix, "above")
    assert text == "def f(x):\n    return y\n" and text[cursor:].startswith("    return y")
    with pytest.raises(ValueError):
        server_eval.shaped(prefix, middle, suffix, "sideways")


def test_main_writes_the_report(tiny_ckpt, tmp_path, capsys):
    corpus = tmp_path / "test.jsonl"
    corpus.write_text(json.dumps({"package": "p", "path": "m.py", "text": SOURCE}) + "\n", encoding="utf-8")
    out = tmp_path / "server.json"
    rc = server_eval.main(["--model", str(tiny_ckpt), "--corpus", str(corpus), "--n", "3", "--threads", "1",
                           "--device", "cpu", "--context-tokens", "128", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())["shapes"]
    assert set(r) == {"gap", "above"}
    for s in r.values():
        assert s["n"] == 3 and sum(s["modes"].values()) == 3 and s["ms_per_request"] > 0
        for row in s["rows"]:
            # a suggestion that restores the file writes the line (the reverse need not hold)
            assert not row["document_right"] or row["line_right"]
    # at the start of a line of code the server answers for a line above it, never with a fill in
    # front of the code ("fill" mode, what it did before)
    assert "fill" not in r["above"]["modes"]
    assert "gap" in capsys.readouterr().out


def test_unknown_shape_and_missing_corpus_are_clear_errors(tmp_path, capsys):
    assert server_eval.main(["--shapes", "gap,sideways"]) == 2
    assert server_eval.main(["--corpus", str(tmp_path / "none.jsonl")]) == 2
    short = tmp_path / "short.jsonl"
    short.write_text(json.dumps({"package": "p", "path": "s.py", "text": "x = 1\n"}) + "\n", encoding="utf-8")
    assert server_eval.main(["--corpus", str(short)]) == 2  # no task: said before any model loads
    err = capsys.readouterr().err
    assert "--shapes" in err and "not found" in err and "no single-line tasks" in err
