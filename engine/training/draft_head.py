"""Train the learned drafter (`engine.draft_head`) a model ships, on the base's own hidden states.

Two stages, each resumable:
1. `extract`: the base (all layers causal, int8 as at inference) reads random windows of a packed
   token stream (`engine.training.pack`); its final hidden states (after the final norm, fp16)
   and the windows' ids are written in chunks under `--features`. A chunk already there is kept.
2. `train`: the head learns to carry a feature one token on: from (h_t, embedding of x_{t+1}) it
   predicts h_{t+1} (smooth L1), and the base's own greedy token there (cross-entropy through the
   tied LM head on a sample of rows; the decode commits the base's choices far more often than
   the text's), then once more from its own prediction (EAGLE's feature regression, Li et al.,
   2024, arXiv:2401.15077; the second step teaches the chain to read its own guesses).

`python -m engine.training.draft_head --tokens data/smol/tokens/train.bin --tokenizer
engine/default_model/tokenizer.json --features runs/draft_features --extract-tokens 3000000 --minutes 40 --out engine/default_model/draft_head.safetensors`
(the base from the pinned package, `engine.gguf_import`; about 1.4k tokens/s to extract on 2 cores).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.draft_head import DRAFT_HEAD_FILE, DraftHead
from engine.gguf_import import sha256_file
from engine.model import Transformer

CHUNK_BATCHES = 32  # batches per feature chunk on disk
STEP_WEIGHTS = (1.0, 0.5)  # the loss of the head's first and second (chained) step


@torch.inference_mode()
def extract(base: Transformer, tokens: np.ndarray, out: Path, n_tokens: int, seq_len: int = 256,
            batch: int = 8, seed: int = 0, log=print) -> int:
    """Write chunks `h_NNNN.npy` ((R, L, D) fp16) and `ids_NNNN.npy` ((R, L) int32) of the base's
    final hidden states over random windows of `tokens` until `n_tokens` are covered. A chunk
    already in `out` counts (the window draws are a function of `seed` and the chunk's number).
    Returns the tokens covered."""
    out.mkdir(parents=True, exist_ok=True)
    per_chunk = CHUNK_BATCHES * batch * seq_len
    k = 0
    t0, fresh = time.time(), 0
    while k * per_chunk < n_tokens:
        if not (out / f"h_{k:04d}.npy").is_file():
            rng = np.random.default_rng([seed, k])
            hs, ids = [], []
            for _ in range(CHUNK_BATCHES):
                starts = rng.integers(0, len(tokens) - seq_len, batch)
                x = torch.from_numpy(np.stack([tokens[s:s + seq_len].astype(np.int64) for s in starts]))  # (B, L)
                h, _ = base.prefill(x, keep_cache=False)  # (B, L, D)
                hs.append(h.half().numpy())
                ids.append(x.numpy().astype(np.int32))
            np.save(out / f"ids_{k:04d}.npy", np.concatenate(ids))
            np.save(out / f"h_{k:04d}.npy", np.concatenate(hs))  # written last: it marks the chunk done
            fresh += per_chunk
            log(f"features: {(k + 1) * per_chunk} tokens ({fresh / (time.time() - t0):.0f} tokens/s)")
        k += 1
    return k * per_chunk


def chunks(features: Path) -> list[Path]:
    return sorted(features.glob("h_*.npy"))


def batches(features: Path, batch: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(B, L, D) float32 features and (B, L) int64 ids, chunks in a random order, forever."""
    rng = np.random.default_rng(seed)
    while True:
        files = chunks(features)
        if not files:
            raise FileNotFoundError(f"no feature chunks in {features}")
        for fh in rng.permutation(files):
            fh = Path(fh)
            h = torch.from_numpy(np.load(fh).astype(np.float32))
            ids = torch.from_numpy(np.load(fh.with_name(fh.name.replace("h_", "ids_"))).astype(np.int64))
            for j in rng.permutation(len(h) // batch):
                yield h[j * batch:(j + 1) * batch], ids[j * batch:(j + 1) * batch]


def head_loss(head: DraftHead, emb: torch.Tensor, h: torch.Tensor, ids: torch.Tensor,
              ce_rows: int = 512, ce_weight: float = 0.5) -> tuple[torch.Tensor, list[tuple[float, float]]]:
    """The training loss over a batch: per chained step, smooth L1 to the base's next feature plus
    `ce_weight` x cross-entropy to the base's greedy token there (on `ce_rows` sampled rows).

    Args:
        emb: (V, D) the tied embedding / LM head; h: (B, L, D) features; ids: (B, L).
    Returns:
        the loss, and (regression, cross-entropy) per step.
    """
    B, L, D = h.shape
    steps = len(STEP_WEIGHTS)
    f, total, parts = h[:, :L - steps], h.new_zeros(()), []
    for k, w in enumerate(STEP_WEIGHTS):
        g = head(f, emb[ids[:, 1 + k:L - steps + 1 + k]])  # predicted feature at t+1+k, (B, L-steps, D)
        target = h[:, 1 + k:L - steps + 1 + k]
        reg = F.smooth_l1_loss(g, target)
        sel = torch.randperm(B * (L - steps))[:ce_rows]
        with torch.no_grad():
            label = (target.reshape(-1, D)[sel] @ emb.T).argmax(-1)  # the base's own next token
        ce = F.cross_entropy(g.reshape(-1, D)[sel] @ emb.T, label)
        total = total + w * (reg + ce_weight * ce)
        parts.append((reg.item(), ce.item()))
        f = g
    return total, parts


@torch.no_grad()
def chain_agreement(head: DraftHead, emb: torch.Tensor, h: torch.Tensor, ids: torch.Tensor,
                    steps: int = 3) -> list[float]:
    """The share of positions where the head's first 1..`steps` chained guesses all equal the
    base's own greedy tokens (what a speculative check would accept), teacher-forced on `ids`."""
    B, L, D = h.shape
    base_next = (h @ emb.T).argmax(-1)  # (B, L)
    f, ok, out = h[:, :L - steps - 1], torch.ones(B, L - steps - 1, dtype=torch.bool), []
    for k in range(steps):
        f = head(f, emb[ids[:, 1 + k:L - steps + k]])
        ok &= (f @ emb.T).argmax(-1) == base_next[:, 1 + k:L - steps + k]
        out.append(ok.float().mean().item())
    return out


def train(head: DraftHead, emb: torch.Tensor, features: Path, minutes: float | None = None,
          steps: int | None = None, batch: int = 8, lr: float = 1e-3, seed: int = 0,
          held_out: tuple[torch.Tensor, torch.Tensor] | None = None, every: int = 100,
          log=print) -> list[float]:
    """AdamW with warmup and a linear decay over `minutes` of wall time or `steps`; logs the
    losses and, on `held_out` (features, ids), `chain_agreement`. Returns the losses."""
    if (minutes is None) == (steps is None):
        raise ValueError("give minutes or steps")
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    t0, losses = time.time(), []
    for step, (h, ids) in enumerate(batches(features, batch, seed)):
        done = (time.time() - t0) / (minutes * 60) if minutes is not None else step / steps
        if done >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * max(0.05, 1.0 - done)
        loss, parts = head_loss(head, emb, h, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % every == 0:
            agree = chain_agreement(head, emb, *held_out) if held_out is not None else []
            log(f"step {step + 1} {time.time() - t0:.0f}s loss {loss.item():.4f} "
                f"(reg, ce) {[(round(r, 4), round(c, 3)) for r, c in parts]} "
                f"held-out chain agreement {[round(a, 3) for a in agree]}")
    return losses


def _base_int8(tokenizer: Path) -> tuple[Transformer, torch.Tensor]:
    """The pinned base, all layers causal, int8 as the engine reads it (calibrated with
    `tokenizer`), and its fp32 embedding."""
    from engine.gguf_import import read_base
    from engine.quantize import calibration_ids, quantize_int8
    from engine.tokenizer import Tokenizer

    base = read_base()
    emb = base.state["tok_emb.weight"].float().clone()
    model = base.build(causal_layers=base.args.n_layers).eval()
    lead = base.args.bos_id if base.args.bos_id is not None else base.args.eos_id
    with torch.inference_mode():
        quantize_int8(model, calibration_ids(Tokenizer.from_file(tokenizer), lead))
    return model, emb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.training.draft_head",
                                description="Train a draft head on the pinned base's hidden states.")
    p.add_argument("--tokens", required=True, help="uint16 token file, e.g. data/smol/tokens/train.bin")
    p.add_argument("--tokenizer", required=True, help="the model's tokenizer.json (the tokens' own)")
    p.add_argument("--held-out", help="a second token file to measure on, e.g. data/smol/tokens/val.bin")
    p.add_argument("--features", required=True, help="folder for the feature chunks (resumable)")
    p.add_argument("--extract-tokens", type=int, default=3_000_000)
    p.add_argument("--minutes", type=float, default=40.0, help="training wall time")
    p.add_argument("--hidden", type=int, default=1536, help="the head's SwiGLU width")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help=f"output file, e.g. engine/default_model/{DRAFT_HEAD_FILE}")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, emb = _base_int8(Path(a.tokenizer))
    extract(model, np.fromfile(a.tokens, dtype=np.uint16), Path(a.features), a.extract_tokens)
    held = None
    if a.held_out:
        hf = Path(a.features) / "held_out"
        extract(model, np.fromfile(a.held_out, dtype=np.uint16), hf, CHUNK_BATCHES * 8 * 256, seed=1)
        h = torch.from_numpy(np.load(hf / "h_0000.npy")[:16].astype(np.float32))
        held = (h, torch.from_numpy(np.load(hf / "ids_0000.npy")[:16].astype(np.int64)))
    del model
    head = DraftHead(emb.shape[1], a.hidden)
    train(head, emb, Path(a.features), minutes=a.minutes, held_out=held)
    head.save(a.out, sha256_file(Path(a.tokenizer)))
    if held is not None:
        print(f"held-out chain agreement: {chain_agreement(head.eval(), emb, *held)}")
    print(f"-> {a.out} ({Path(a.out).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
