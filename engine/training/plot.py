"""Loss curve PNG from a training log (jsonl)."""

from __future__ import annotations

import json
from pathlib import Path


def plot_curve(log: Path, png: Path) -> None:
    """Train loss (smoothed) and validation loss against tokens seen."""
    if not log.is_file():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    tr = [(r["tokens"], r["loss"]) for r in recs if "loss" in r]
    va = [(r["tokens"], r["val_loss"]) for r in recs if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if tr:
        k = max(1, len(tr) // 100)
        xs = [x for x, _ in tr][k - 1::k]
        ys = [sum(y for _, y in tr[i:i + k]) / k for i in range(0, len(tr) - k + 1, k)]
        ax.plot([x / 1e6 for x in xs[:len(ys)]], ys, label="train (smoothed)", alpha=0.7)
    if va:
        ax.plot([x / 1e6 for x, _ in va], [y for _, y in va], "o-", label="validation", ms=3)
    ax.set_xlabel("tokens seen (M)")
    ax.set_ylabel("masked-diffusion loss (ELBO weighted)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
