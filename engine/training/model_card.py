"""Write MODEL_CARD.md beside shipped weights from the run's log, corpus stats and eval JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from engine.checkpoint import load_model


def _load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _eval_table(ev: dict) -> list[str]:
    """The `dlsp eval` JSON as a markdown table: system x kind, exact match and edit similarity."""
    results = ev.get("results") or {}
    if not results:
        return ["(no evaluation file given)"]
    out = ["| system | kind | n | exact match | edit similarity | ms / task |", "|---|---|---|---|---|---|"]
    for system, kinds in results.items():
        for kind, m in kinds.items():
            ms = m.get("ms_per_task")
            out.append(f"| {system} | {kind} | {m.get('n')} | {m.get('exact_match', 0):.3f} | "
                       f"{m.get('edit_similarity', 0):.3f} | {'-' if ms is None else f'{ms:.0f}'} |")
    bar = ev.get("bar") or {}
    for name, c in (bar.get("checks") or {}).items():
        out += ["", f"Bar ({bar.get('rule')}): {name} {'PASS' if c['pass'] else 'FAIL'} "
                    f"(EM {c['exact_match']:.3f}, needed {c['bar']:.3f})."]
    settings = ev.get("settings") or {}
    out += ["", f"Tasks: {ev.get('n_tasks', '?')} drawn with seed {settings.get('seed', '?')} from the held-out "
                f"test packages; produced by `dlsp eval`."]
    return out


def _curriculum(tr: dict) -> str:
    if "t_max_start" in tr and float(tr["t_max_start"]) >= 1:
        return "none in the last run, t ~ U(0, 1) from its start; the runs before it are listed under Experiments"
    if "t_max_start" in tr:
        return (f"in the last run from {float(tr['t_max_start']):g} over the first "
                f"{100 * float(tr.get('t_ramp', 0.5)):.0f}% of its budget; the runs before it are listed under Experiments")
    return "see Experiments for each run's schedule"


def _decoding(cfg: dict, notes: str) -> list[str]:
    """The decoding defaults the checkpoint recommends (`dlsp_sampling`), with the why (`notes`)."""
    rec = cfg.get("dlsp_sampling") or {}
    if not rec and not notes.strip():
        return []
    out = ["## Decoding defaults", ""]
    if rec:
        out += [f"`config.json` carries `\"dlsp_sampling\": {json.dumps(rec)}`, which `Engine.from_pretrained`",
                "applies on top of the engine's defaults (a request's own settings still win).", ""]
    return out + ([notes.strip(), ""] if notes.strip() else [])


def render(ckpt: Path, run: Path, corpus: Path, eval_json: Path | None, experiments: str,
           tokenizer_experiment: Path | None = None, notes: str = "") -> str:
    model, a = load_model(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    tr = cfg.get("dlsp_training", {})
    stats = _load_json(corpus / "stats.json")
    tok_exp = _load_json(tokenizer_experiment) if tokenizer_experiment else {}
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    vals = [r for r in recs if "val_loss" in r]
    falling = len(vals) >= 4 and vals[-1]["val_loss"] < min(v["val_loss"] for v in vals[-4:-1])
    lines = [
        "# dlsp-small: the embedded default model", "",
        "A masked discrete-diffusion code model for fill-in-the-middle, trained from scratch on a",
        "2-core CPU by this project's recipe (`dlsp build-corpus`, `dlsp train-tokenizer`, `dlsp train`).", "",
        "## Model", "",
        f"- Family/layout: `{a.family}` (LLaDA parameter names, LLaMA-shaped bidirectional body, unshifted logits)",
        f"- Parameters: {model.num_params() / 1e6:.2f} M ({a.n_layers} layers, dim {a.dim}, {a.n_heads} heads, "
        f"{a.n_kv_heads} kv heads, SwiGLU {a.intermediate_size}, tied embeddings, RoPE theta {a.rope_theta:g})",
        f"- Vocabulary: {a.vocab_size} byte-level BPE tokens; mask={a.mask_id}, eos/pad={a.eos_id}, bos={a.bos_id}",
        f"- Positions: up to {a.max_positions} (trained at sequence length {tr.get('seq_len', '?')})",
        "- Weights: `model.safetensors`, fp16 on disk (upcast to fp32 on CPU)", "",
        "## Data and licenses", "",
        "Python source installed on the build machine whose license metadata is permissive: the CPython",
        "standard library (PSF-2.0) and installed distributions declaring MIT, BSD, Apache-2.0, ISC or PSF.",
        "Copyleft and unknown licenses were skipped; files deduplicated by content; train/validation/test",
        "split by whole package (held-out packages measure code the model never saw). The manifest",
        "(`manifest.jsonl`, per file: package, version, license, path, sha256, split) is produced by",
        "`dlsp build-corpus`; it is not shipped (it describes the build machine).", "",
        "| split | packages | files | M chars |", "|---|---|---|---|",
    ]
    for s, v in stats.items():
        lines.append(f"| {s} | {v['packages']} | {v['files']} | {v['chars'] / 1e6:.1f} |")
    if tok_exp:
        lines += ["", "Tokenizer vocabulary experiment (`dlsp train-tokenizer --experiment`; chars/token on the",
                  "validation split, higher is denser; each vocabulary entry costs an embedding row):", "",
                  "| vocab | chars/token |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in tok_exp.items()]
    lines += [
        "", "## Training", "",
        "Masked diffusion (MDLM/MD4 corruption: every token of the masked region is masked with",
        "probability t) with the cross-entropy averaged over all masked tokens of a batch"
        f" (weighting `{tr.get('loss_weighting', 'flat')}`), mixed with FIM-shaped corruption for"
        f" {100 * float(tr.get('fim_rate', 0.15)):.0f}% of the rows (a whole line, 2-8 lines or a random span as",
        "the middle, followed by 0-24 EOS pads so the model learns to end a fill; only the middle is",
        "masked). A curriculum over the masking rate: t ~ U(0, t_max) with t_max ramping linearly to 1"
        f" ({_curriculum(tr)}). AdamW (betas 0.9/0.95), linear warmup then cosine over the",
        "wall-clock budget, grad clip 1.0, documents packed to the sequence length. Runs may be",
        "resumed or warm-started from an earlier run; the totals below add up the whole lineage.", "",
        f"- Steps: {tr.get('step', '?')}; tokens seen: {tr.get('tokens_seen', 0) / 1e6:.1f} M; "
        f"training time: {tr.get('train_hours', 0):.2f} h on 2 CPU cores (fp32)",
        f"- Best validation loss: {tr.get('val_loss', '?')} (the training corruption with t ~ U(0, 1), held-out "
        f"packages); masked-token CE with 15% random masking: {tr.get('val_ce15', '?')} nats "
        "(a unigram model scores 6.49)",
        f"- Loss still falling at the end of the run: {'yes' if falling else 'no / flat'}",
        "- The curve below covers the last run of the lineage.",
        "", "![loss curve](loss_curve.png)", "",
        "## Experiments", "", experiments.strip() or "(none recorded)", "",
        "## Evaluation (held-out test packages)", "",
    ]
    lines += _eval_table(_load_json(eval_json)) if eval_json else ["(not run)"]
    lines += [""] + _decoding(cfg, notes)
    lines += ["## Limits", "",
              "A 5M-parameter model trained for a few CPU-hours: it completes common Python idioms,",
              "names and brackets, not whole algorithms. Use a larger checkpoint of the Dream or LLaDA",
              "family (`--model DIR`) for real work; the engine runs them unchanged.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="model_card", description=__doc__)
    p.add_argument("--ckpt", default="engine/default_model", type=Path)
    p.add_argument("--run", default="runs/v1", type=Path)
    p.add_argument("--corpus", default="data/corpus", type=Path)
    p.add_argument("--eval", default=None, type=Path)
    p.add_argument("--experiments", default="", help="markdown file with the experiments table (or the text)")
    p.add_argument("--tokenizer-experiment", default=None, type=Path,
                   help="experiment.json written by `dlsp train-tokenizer --experiment`")
    p.add_argument("--notes", default="", help="markdown file (or text): why the decoding defaults were chosen")
    p.add_argument("--curve", default="", help="adapted models: markdown file (or text), quality against tokens")
    a = p.parse_args(argv or [])
    for key in ("experiments", "notes", "curve"):
        value = getattr(a, key)
        if value and Path(value).is_file():
            setattr(a, key, Path(value).read_text(encoding="utf-8"))
    if "dlsp_base" in _load_json(a.ckpt / "config.json"):  # a shipped adapter over the pretrained base
        from engine.training.model_card_adapted import render_adapted

        card = render_adapted(a.ckpt, a.run, a.eval, a.experiments, a.notes, a.curve)
    else:
        card = render(a.ckpt, a.run, a.corpus, a.eval, a.experiments, a.tokenizer_experiment, a.notes)
    (a.ckpt / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    png = a.run / "loss_curve.png"
    if png.is_file():
        (a.ckpt / "loss_curve.png").write_bytes(png.read_bytes())
    print(f"wrote {a.ckpt / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
