"""Confidence of masked rows and the commit rule: references and dispatchers.

`confidence` reads each row of logits once (online softmax in the Triton kernel) and returns
everything the samplers need; `commit_mask` applies the threshold rule with a minimum number
of commits per hole, without a host sync.
"""

from __future__ import annotations

import torch

from kernels.capabilities import use_triton


def confidence_ref(logits: torch.Tensor, temperature: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Argmax and three confidence measures of softmax(logits / T) per row.

    Args:
        logits: (N, V) any float dtype; temperature: <= 0 means 1 for the probabilities.
    Returns:
        token (N,) int64 argmax, max_prob (N,), margin (N,) = p1 - p2, neg_entropy (N,) = sum p log p;
        the last three in float32.
    """
    t = temperature if temperature > 0 else 1.0
    x = logits.float() / t
    logp = torch.log_softmax(x, dim=-1)  # (N, V)
    p = logp.exp()
    top2 = p.topk(2, dim=-1)
    neg_entropy = torch.where(p > 0, p * logp, 0.0).sum(-1)  # 0 log 0 = 0 (forbidden ids are -inf)
    return top2.indices[:, 0], top2.values[:, 0], top2.values[:, 0] - top2.values[:, 1], neg_entropy


def confidence(logits: torch.Tensor, temperature: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Dispatcher: Triton on CUDA, reference elsewhere. Same contract as `confidence_ref`."""
    if use_triton(logits) and logits.shape[-1] >= 2:
        from kernels.confidence_triton import confidence_triton

        return confidence_triton(logits, temperature)
    return confidence_ref(logits, temperature)


def commit_mask_ref(conf: torch.Tensor, masked: torch.Tensor, hole: torch.Tensor, threshold: float,
                    n_min: torch.Tensor) -> torch.Tensor:
    """Which rows to commit this step.

    A row is committed when it is masked and its confidence is >= threshold, or when it is among
    the `n_min[h]` most confident masked rows of its hole h (ties broken by lower row index).

    Args:
        conf: (N,) float; masked: (N,) bool; hole: (N,) int64 hole id per row in [0, H);
        n_min: (H,) int64 minimum commits per hole this step.
    Returns:
        (N,) bool.
    """
    n = conf.shape[0]
    score = torch.where(masked, conf.float(), torch.full_like(conf, float("-inf"), dtype=torch.float32))
    # rank of each row among the rows of its hole, by descending score then ascending index
    same = hole[:, None] == hole[None, :]  # (N, N)
    idx = torch.arange(n, device=conf.device)
    better = (score[None, :] > score[:, None]) | ((score[None, :] == score[:, None]) & (idx[None, :] < idx[:, None]))
    rank = (same & better).sum(-1)  # (N,)
    forced = rank < n_min[hole]
    return masked & ((score >= threshold) | forced)


def commit_mask(conf: torch.Tensor, masked: torch.Tensor, hole: torch.Tensor, threshold: float,
                n_min: torch.Tensor) -> torch.Tensor:
    """Dispatcher: Triton on CUDA, reference elsewhere. Same contract as `commit_mask_ref`."""
    if use_triton(conf):
        from kernels.confidence_triton import commit_mask_triton

        return commit_mask_triton(conf, masked, hole, threshold, n_min)
    return commit_mask_ref(conf, masked, hole, threshold, n_min)


def commit_ref(canvas: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor, conf: torch.Tensor,
               masked: torch.Tensor, hole: torch.Tensor, threshold: float, n_min: torch.Tensor) -> torch.Tensor:
    """Choose rows by `commit_mask_ref` and write their tokens into the canvas, without a host sync.

    Args:
        canvas: (L,) int64 token ids, written in place at `pos[i]` for every chosen row i;
        pos: (N,) int64 canvas positions of the rows; tokens: (N,) int64 proposed tokens;
        conf, masked, hole, threshold, n_min: as in `commit_mask_ref`.
    Returns:
        (N,) bool, the chosen rows.
    """
    chosen = commit_mask_ref(conf, masked, hole, threshold, n_min)
    canvas[pos] = torch.where(chosen, tokens.to(canvas.dtype), canvas[pos])
    return chosen


def commit(canvas: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor, conf: torch.Tensor,
           masked: torch.Tensor, hole: torch.Tensor, threshold: float, n_min: torch.Tensor) -> torch.Tensor:
    """Dispatcher: one fused Triton launch on CUDA, reference elsewhere. Same contract as `commit_ref`."""
    if use_triton(conf) and canvas.is_contiguous():
        from kernels.confidence_triton import commit_triton

        return commit_triton(canvas, pos, tokens, conf, masked, hole, threshold, n_min)
    return commit_ref(canvas, pos, tokens, conf, masked, hole, threshold, n_min)
