"""The masked-diffusion training objective, on token ids.

Two corruptions are mixed per sequence:
  * MDLM/MD4 ELBO: t ~ U(eps, 1), every token masked with probability t, cross-entropy on the
    masked positions weighted by 1/t (the linear-schedule weight, Sahoo et al. 2024, Shi et al. 2024);
  * FIM-shaped: a contiguous middle (a whole line, 2-8 lines, or a random span) followed by a
    random number of EOS pads forms the region; the region is masked with probability t while
    prefix and suffix stay visible, so the model learns to fill holes and to end a fill early.
The LM head runs only on masked rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelArgs
from engine.model import Transformer


@dataclass(frozen=True)
class ObjectiveConfig:
    fim_rate: float = 0.6  # share of sequences with FIM-shaped corruption
    max_pad: int = 24  # EOS pads after the middle: uniform in [0, max_pad]
    span_max: int = 48  # longest random-span middle, tokens
    t_eps: float = 1e-3
    # "elbo": 1/t on masked positions (the MDLM/MD4 bound); "flat": the mean cross-entropy over
    # every masked token of the batch. Measured here (5M params, 2 CPU cores): "elbo" stayed on the
    # unigram plateau for 4k steps, "flat" leaves it in a few hundred (see MODEL_CARD.md).
    weighting: str = "flat"
    # "windows": the masked region of a row is the FIM middle (if any) plus random contiguous windows
    # until it covers `cover` of the row, so most of every row stays visible, as at inference time;
    # "sequence": rows without FIM mask the whole sequence with rate t (plain MDLM).
    region: str = "sequence"
    # t = u ** t_power, u ~ U(0, 1): 1 is the uniform MDLM time; 2 spends more of the batch on
    # lightly masked rows, which teach local context first (mean masking 1/3 instead of 1/2).
    t_power: float = 1.0
    cover: float = 0.4
    window_max: int = 64
    # FIM rows: the row is cut into this many equal chunks, each with its own middle, so one
    # forward pass trains several holes (the cost of a step is the whole row; the signal is the
    # masked tokens): on 2 CPU cores this triples the targets per second at 256 tokens.
    holes_per_row: int = 1
    # FIM holes whose masking is the state of a left-to-right decode (`block=1`): a random prefix of
    # the middle (0 to all of its tokens) is visible and everything after it, pads included, is
    # masked. The rest of the holes are masked at random with rate t. Random masking teaches every
    # commit order; a left-to-right decoder only ever meets this one, and at a budget of a few
    # million tokens the adapter should spend its signal where decoding happens.
    ltr_rate: float = 0.0
    # FIM middles drawn as (one line, 2-8 lines, a random span) with these relative weights; equal
    # weights draw uniformly (the generator's stream is the same as before the option existed).
    kind_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Left-to-right holes: the loss weight of the first masked slot (the decode's frontier) relative
    # to the other masked tokens. A `block=1` decode only ever reads the frontier's prediction; the
    # slots behind it still teach the model to read the suffix. 1 leaves every masked token equal.
    frontier_weight: float = 1.0


def _newline_positions(seq: torch.Tensor, is_nl: torch.Tensor) -> list[int]:
    return torch.nonzero(is_nl[seq], as_tuple=False).flatten().tolist()


def fim_example(seq: torch.Tensor, a: ModelArgs, is_nl: torch.Tensor, cfg: ObjectiveConfig,
                g: torch.Generator) -> tuple[torch.Tensor, int, int, int]:
    """Rearrange one sequence into prefix | middle + EOS pads | suffix, same length.

    Args:
        seq: (T,) ids, seq[0] is bos; is_nl: (V,) bool, tokens that contain a newline.
    Returns:
        (T,) ids, region start, middle end, region end (the last two exclusive; the pads lie
        between them).
    """
    T = seq.shape[0]
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=g))  # noqa: E731
    nls = [p for p in _newline_positions(seq, is_nl) if 1 <= p < T - 2]
    w = cfg.kind_weights
    if w[0] == w[1] == w[2]:
        kind = r(0, 2)
    else:
        kind = int(torch.multinomial(torch.tensor(w, dtype=torch.float64), 1, generator=g))
    if kind < 2 and len(nls) >= 3:
        i = r(0, len(nls) - 2)
        j = min(len(nls) - 1, i + (1 if kind == 0 else r(2, 8)))
        start, end = nls[i] + 1, nls[j] + (0 if kind == 0 else 1)
    else:
        start = r(1, T - 3)
        end = min(T - 1, start + r(1, cfg.span_max))
    end = max(end, start + 1)
    pad = r(0, cfg.max_pad)
    middle = seq[start:end]
    pads = torch.full((pad,), a.eos_id, dtype=seq.dtype)
    out = torch.cat([seq[:start], middle, pads, seq[end:]])[:T]
    return out, start, min(T, end), min(T, end + pad)


def corrupt(batch: torch.Tensor, a: ModelArgs, is_nl: torch.Tensor, cfg: ObjectiveConfig,
            g: torch.Generator, t_max: float = 1.0, frontiers: list[tuple[int, int, int]] | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Corrupt a batch.

    Args:
        batch: (B, T) clean ids with bos at column 0.
        t_max: masking rates are drawn in (t_eps, t_max]; the trainer ramps it from a BERT-like
            rate to 1 (a curriculum: lightly masked rows teach local context first).
        frontiers: if given, gets (row, frontier position, suffix position) for every
            left-to-right hole: its first masked slot and the first token after its pads (-1 where
            the chunk ends first). Drawing them changes nothing else.
    Returns:
        noisy (B, T), targets (B, T) clean ids, mask (B, T) bool, weight (B, T) float32
        (per masked position, 0 elsewhere; the loss is sum(ce * weight) / B). "elbo": 1/t
        normalised by the region size of the row; "flat": B / (masked tokens in the batch).
    """
    if cfg.region not in ("windows", "sequence"):
        raise ValueError(f"unknown masked region {cfg.region!r} (windows, sequence)")
    B, T = batch.shape
    clean = batch.clone()
    region = torch.zeros(B, T, dtype=torch.bool)  # masked at random with rate t
    ltr = torch.zeros(B, T, dtype=torch.bool)  # masked outright: the unfilled end of a left-to-right decode
    boost = torch.ones(B, T)  # relative loss weight per position (the frontier of left-to-right holes)
    for b in range(B):
        if float(torch.rand((), generator=g)) < cfg.fim_rate:
            k = max(1, cfg.holes_per_row)
            bounds = [T * i // k for i in range(k + 1)]
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                clean[b, lo:hi], s, m, e = fim_example(batch[b, lo:hi], a, is_nl, cfg, g)
                if cfg.ltr_rate > 0 and float(torch.rand((), generator=g)) < cfg.ltr_rate:
                    # middle tokens already decoded; at least one slot (a token or the closing EOS) is left
                    done = int(torch.randint(0, min(m - s, e - s - 1) + 1, (1,), generator=g))
                    ltr[b, lo + s + done:lo + e] = True
                    boost[b, lo + s + done] = cfg.frontier_weight
                    if frontiers is not None:  # the suffix's first token, unless the chunk ends first
                        frontiers.append((b, lo + s + done, lo + e if lo + e < hi else -1))
                else:
                    region[b, lo + s:lo + e] = True
        elif cfg.region == "sequence":
            region[b, 1:] = True
        if cfg.region == "windows":
            target = int(cfg.cover * T)
            while int(region[b].sum()) < target:
                n = int(torch.randint(4, cfg.window_max + 1, (1,), generator=g))
                s = int(torch.randint(1, max(2, T - n), (1,), generator=g))
                region[b, s:s + n] = True
    t = cfg.t_eps + (t_max - cfg.t_eps) * torch.rand(B, 1, generator=g) ** cfg.t_power  # (B, 1)
    mask = (region & (torch.rand(B, T, generator=g) < t)) | ltr
    region = region | ltr
    # at least one masked position per row so every row teaches something
    first = region.float().argmax(1)
    empty = ~mask.any(1)
    mask[empty, first[empty]] = True
    scaled = mask.float() * boost
    if cfg.weighting == "elbo":
        weight = scaled / t / region.sum(1, keepdim=True).clamp(min=1)
    elif cfg.weighting == "flat":
        weight = scaled * (B / scaled.sum())
    else:
        raise ValueError(f"unknown loss weighting {cfg.weighting!r} (elbo, flat)")
    noisy = torch.where(mask, torch.full_like(clean, a.mask_id), clean)
    return noisy, clean, mask, weight


class DiffusionLoss(nn.Module):
    """Wraps the model so that DDP sees one forward: returns the weighted masked CE."""

    def __init__(self, model: Transformer, shifted: bool = False) -> None:
        super().__init__()
        self.model = model
        self.shifted = shifted

    def forward(self, noisy: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor, open_frac: float | None = None,
                mix: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`mix`: (at (B, T) bool, masked slots; prior (N, V) log-probabilities, one row per slot
        of `at` in row-major order): there the loss reads log_softmax(logits) + prior,
        renormalized (a product of experts: the model learns what the prior lacks)."""
        hidden, _ = self.model.prefill(noisy, keep_cache=False, open_frac=open_frac)  # (B, T, D)
        if self.shifted:  # row i-1 predicts token i (column 0, the lead token, is never masked)
            hidden = torch.cat([hidden[:, :1], hidden[:, :-1]], dim=1)
        logits = self.model.logits(hidden[mask])  # (M, V): LM head on masked rows only
        if mix is not None:
            at = mix[0][mask]  # (M,)
            mixed = torch.log_softmax(logits[at], -1) + mix[1].to(logits.dtype)
            logits = logits.index_put((at.nonzero().flatten(),), mixed)
        ce = F.cross_entropy(logits, clean[mask], reduction="none")  # (M,)
        loss = (ce * weight[mask]).sum() / noisy.shape[0]
        return loss, ce.detach().mean()
