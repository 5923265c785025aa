"""The pretrained base's reading as a training prior (`dlsp train --base-mix W`).

The shipped decoding mixes the base into every left-to-right commit: a slot is scored by
`log p_adapted + W * log p_base` (`engine.expert`), with ending the fill scored by the base's
probability of the suffix's first token. An adapter trained alone learns again what the base
already knows of the prefix, and the mix then counts that twice. Trained through the same
product at the slots the decode reads (the frontier of left-to-right holes), the adapter's
gradient there is what the base gets wrong: what the suffix tells (a product of experts trained
jointly, Hinton 2002; the residual use of a frozen prior as in logit-arithmetic fine-tuning).

The base reads each row as the decode would show it the prefix: the clean text, causally, with
the EOS pads the objective inserts after each middle taken out (the base has never seen them in
code, and a decode's base never sees them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.model import Transformer


class BasePrior:
    """Log-probabilities of the frozen base at the frontier slots of a corrupted batch.

    Args:
        model: the base, every layer causal (`engine.gguf_import.read_base().build(causal_layers=n)`).
        weight: the decode's `base_weight`.
    """

    def __init__(self, model: Transformer, weight: float) -> None:
        if model.args.causal_layers < model.args.n_layers:
            raise ValueError("the prior must be the base read left to right: every layer causal")
        self.model, self.weight = model.eval(), weight
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eos = model.args.eos_id

    @torch.no_grad()
    def __call__(self, clean: torch.Tensor, frontiers: list[tuple[int, int, int]]
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """`DiffusionLoss`'s `mix` for `clean` (B, T) ids and `objective.corrupt`'s `frontiers`:
        (at (B, T) bool, prior (N, V)), or None when no frontier can be read (the row before it
        or the suffix after the hole is cut off or an EOS)."""
        B, T = clean.shape
        device = next(self.model.parameters()).device
        keep = clean != self.eos
        keep[:, 0] = True  # the lead token
        index = keep.long().cumsum(1) - 1  # (B, T) compacted position of each kept token
        rows = [clean[b][keep[b]] for b in range(B)]
        width = max(len(r) for r in rows)
        ids = torch.full((B, width), self.eos, dtype=clean.dtype)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = r
        at = torch.zeros(B, T, dtype=torch.bool)
        reads: list[tuple[int, int, int]] = []  # (row, compacted position read, suffix token)
        for b, f, s in sorted(frontiers):
            if f < 1 or s < 0 or not keep[b, f - 1] or not keep[b, s]:
                continue
            at[b, f] = True
            reads.append((b, int(index[b, f - 1]), int(clean[b, s])))
        if not reads:
            return None
        hidden, _ = self.model.prefill(ids.to(device), keep_cache=False)  # (B, W, D)
        h = hidden[[r[0] for r in reads], [r[1] for r in reads]]  # (N, D)
        lp = F.log_softmax(self.model.logits(h).float(), -1)  # (N, V)
        after = torch.tensor([r[2] for r in reads], device=lp.device)
        lp[:, self.eos] = lp.gather(1, after[:, None])[:, 0]  # ending = the suffix comes next
        return at.to(device), self.weight * lp
