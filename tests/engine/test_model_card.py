"""The model card is rendered from the checkpoint, the run's log, corpus stats and eval JSON."""

from __future__ import annotations

import json

from engine.training import model_card
from engine.training.train import Trainer, parse
from tests.engine.test_training import _data


def test_card_reports_model_training_and_evaluation(tmp_path):
    base = _data(tmp_path)
    run, ckpt = tmp_path / "run", tmp_path / "ex"
    Trainer(parse(base + ["--out", str(run), "--max-steps", "3", "--export", str(ckpt),
                          "--t-max-start", "0.4", "--t-ramp", "0.3"])).run()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "stats.json").write_text(json.dumps({"train": {"packages": 7, "files": 70, "chars": 3_000_000}}))
    ev = {"results": {"model/fast": {"single_line": {"n": 5, "exact_match": 0.4, "edit_similarity": 0.71,
                                                     "ms_per_task": 42.0}}},
          "bar": {"rule": "single-line EM >= 2 x best", "checks": {"model/fast": {"exact_match": 0.4, "bar": 0.2,
                                                                                 "pass": True}}},
          "settings": {"seed": 3}, "n_tasks": 5}
    (tmp_path / "eval.json").write_text(json.dumps(ev))
    (tmp_path / "tokexp.json").write_text(json.dumps({"4096": 3.1, "8192": 3.4}))
    assert model_card.main(["--ckpt", str(ckpt), "--run", str(run), "--corpus", str(corpus), "--eval",
                            str(tmp_path / "eval.json"), "--experiments", "| run | note |\n|---|---|\n| a | b |",
                            "--tokenizer-experiment", str(tmp_path / "tokexp.json")]) == 0
    card = (ckpt / "MODEL_CARD.md").read_text()
    cfg = json.loads((ckpt / "config.json").read_text())["dlsp_training"]
    assert f"Steps: {cfg['step']}" in card and "from 0.4 over the first 30%" in card
    assert "| train | 7 | 70 | 3.0 |" in card
    assert "| model/fast | single_line | 5 | 0.400 | 0.710 | 42 |" in card
    assert "model/fast PASS" in card and "seed 3" in card
    assert "| a | b |" in card
    assert "| 8192 | 3.4 |" in card
    assert (ckpt / "loss_curve.png").is_file()
    assert "## Decoding defaults" not in card  # nothing recommended, nothing said


def test_card_states_the_recommended_decoding_defaults_and_why(tmp_path):
    base = _data(tmp_path)
    run, ckpt = tmp_path / "run", tmp_path / "ex"
    Trainer(parse(base + ["--out", str(run), "--max-steps", "2", "--export", str(ckpt)])).run()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["dlsp_sampling"] = {"min_per_step": 4, "copy_weight": 0.5}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "notes.md").write_text("Chosen by eval: 0.21 vs 0.19.")
    assert model_card.main(["--ckpt", str(ckpt), "--run", str(run), "--corpus", str(tmp_path),
                            "--notes", str(tmp_path / "notes.md")]) == 0
    card = (ckpt / "MODEL_CARD.md").read_text()
    assert '"dlsp_sampling": {"min_per_step": 4, "copy_weight": 0.5}' in card
    assert "none in the last run, t ~ U(0, 1) from its start" in card  # default: no curriculum
    assert card.index("## Decoding defaults") < card.index("Chosen by eval: 0.21 vs 0.19.") < card.index("## Limits")
