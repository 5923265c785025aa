"""`dlsp complete FILE --line L --col C`: the infill at a cursor, as text or JSON; clear errors."""

from __future__ import annotations

import json

import pytest

from lsp_server import cli_complete


def test_split_at_is_one_based_and_names_what_is_out_of_range():
    assert cli_complete.split_at("ab\ncd\n", 2, 2) == ("ab\nc", "d\n")
    assert cli_complete.split_at("ab\n", 2, 1) == ("ab\n", "")  # the empty last line
    with pytest.raises(ValueError, match="line 5"):
        cli_complete.split_at("ab\n", 5, 1)
    with pytest.raises(ValueError, match="column 9 is outside line 1"):
        cli_complete.split_at("ab\n", 1, 9)


def test_json_output_and_single_line(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_bytes(b"def f(x):\n    return \n\nprint(f(1))  # \xff not utf-8\n")
    rc = cli_complete.main([str(src), "--line", "2", "--col", "12", "--model", str(tiny_ckpt), "--json",
                            "--single-line", "--tokens", "6", "--max-tokens", "12"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert "\n" not in out["text"] and out["forward_passes"] >= 1
    assert {"tokenize", "prefill", "steps", "detokenize", "total"} <= set(out["timings_ms"])
    assert sum(out["tokens_per_step"]) >= out["generated_tokens"]
    # the fill's score (a mean log-probability) and confidence (its exp)
    assert out["score"] <= 0 and abs(out["confidence"] - 2.718281828459045 ** out["score"]) < 1e-9


def test_errors_exit_1_with_a_message(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "a.py"
    src.write_text("x = 1\n")
    assert cli_complete.main([str(src), "--line", "9", "--col", "1", "--model", str(tiny_ckpt)]) == 1
    assert "line 9" in capsys.readouterr().err
    assert cli_complete.main([str(tmp_path / "nope.py"), "--line", "1", "--col", "1"]) == 1
    assert "nope.py" in capsys.readouterr().err
    assert cli_complete.main([str(src), "--line", "1", "--col", "1", "--model", str(tmp_path)]) == 1
    assert "config.json" in capsys.readouterr().err


def test_uses_the_checkpoints_decoding_defaults(tiny_ckpt, tmp_path, capsys):
    """Issue 12 (6): the CLI dropped the checkpoint's `dlsp_sampling` (12-48 passes, not 1-5)."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["dlsp_sampling"] = {"min_per_step": 3, "threshold": 0.5}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    src = tmp_path / "a.py"
    src.write_text("def f(x):\n    return \n")
    args = [str(src), "--line", "2", "--col", "12", "--model", str(ckpt), "--json"]
    assert cli_complete.main(args) == 0
    used = json.loads(capsys.readouterr().out)["sampling"]
    assert used["min_per_step"] == 3 and used["threshold"] == 0.5
    assert cli_complete.main(args + ["--threshold", "0.8"]) == 0
    used = json.loads(capsys.readouterr().out)["sampling"]
    assert used["min_per_step"] == 3 and used["threshold"] == 0.8


def test_post_processing_matches_the_server_on_a_blank_line(tmp_path, capsys, monkeypatch):
    """Token healing lets the model deepen the indent on a whitespace-only line; the server
    strips it, and so does the CLI now (the fill compiles)."""
    from tests.lsp_server.fakes import FakeEngine

    fake = FakeEngine(fill=lambda req: ("    x = 1\n    return x",))
    monkeypatch.setattr(cli_complete.Engine, "from_pretrained", classmethod(lambda cls, *a, **k: fake))
    src = tmp_path / "a.py"
    src.write_text("def f():\n    \n")
    assert cli_complete.main([str(src), "--line", "2", "--col", "5"]) == 0
    out = capsys.readouterr().out
    assert out == "x = 1\n    return x\n"
    compile(src.read_text().replace("    \n", "    " + out), "a.py", "exec")
