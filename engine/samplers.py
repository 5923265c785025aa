"""Confidence measures and the per-step commit rule, on token ids and logits only."""

from __future__ import annotations

from collections.abc import Callable

import torch

from kernels.confidence import commit, confidence

# name -> picks one measure out of (token, max_prob, margin, neg_entropy)
CONFIDENCE: dict[str, Callable[[tuple[torch.Tensor, ...]], torch.Tensor]] = {
    "max_prob": lambda c: c[1],
    "margin": lambda c: c[2],
    "neg_entropy": lambda c: c[3],
}


def propose(logits: torch.Tensor, measure: str, temperature: float,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A token and its confidence for each masked row.

    Args:
        logits: (N, V) float32, forbidden ids already set to -inf.
    Returns:
        tokens (N,) int64, conf (N,) float32.
    """
    stats = confidence(logits, temperature)
    conf = CONFIDENCE[measure](stats)
    if temperature <= 0:
        return stats[0], conf
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if measure == "max_prob":  # confidence of what was actually drawn
        conf = probs.gather(-1, tokens[:, None]).squeeze(-1)
    return tokens, conf


def min_commits(remaining: torch.Tensor, steps_left: torch.Tensor) -> torch.Tensor:
    """Integer schedule: commit at least ceil(remaining / steps_left) per hole, so that every
    position is committed by the last step; at least one while anything is masked.

    Args:
        remaining: (H,) masked positions per hole; steps_left: (H,) steps left including this one.
    Returns:
        (H,) int64.
    """
    need = (remaining + steps_left.clamp(min=1) - 1) // steps_left.clamp(min=1)
    return torch.where(remaining > 0, need.clamp(min=1), torch.zeros_like(need))


def min_commit(remaining: int, steps_left: int) -> int:
    """`min_commits` for one hole on host integers (the sampler knows the counts without asking
    the device)."""
    steps_left = max(1, steps_left)
    return max(1, -(-remaining // steps_left)) if remaining > 0 else 0


def factor_commits_ref(conf: torch.Tensor, hole: torch.Tensor, n_holes: int, factor: float) -> torch.Tensor:
    """Fast-dLLM's factor rule (Wu et al. 2025, arXiv:2505.22618, "factor-based" parallel
    decoding): in each hole, sort the masked rows by confidence c_1 >= c_2 >= ... and commit the
    longest run of leaders with c_j >= 1 - factor / (j + 1); the first one always qualifies.
    Many tokens go at once only when all of them are confident, and the bar drops as fewer remain.

    Args:
        conf: (M,) probabilities in [0, 1]; hole: (M,) hole index of each row.
    Returns:
        (H,) int64 count per hole (0 for a hole with nothing masked).
    """
    out = torch.zeros(n_holes, dtype=torch.long, device=conf.device)
    for h in torch.unique(hole).tolist():
        c = torch.sort(conf[hole == h], descending=True).values
        j = torch.arange(1, len(c) + 1, device=conf.device, dtype=c.dtype)
        ok = c >= 1 - factor / (j + 1)
        ok[0] = True
        out[h] = int(torch.cumprod(ok.long(), 0).sum())
    return out


def factor_commits(conf: torch.Tensor, hole: torch.Tensor, n_holes: int, factor: float) -> torch.Tensor:
    """`factor_commits_ref` without a host sync: rows sorted by (hole, confidence descending), each
    row's rank j in its hole, and per hole the first rank j >= 1 that misses 1 - factor / (j + 2).

    Args:
        conf: (M,) probabilities in [0, 1]; hole: (M,) hole index of each row.
    Returns:
        (H,) int64 count per hole (0 for a hole with nothing masked).
    """
    m = conf.shape[0]
    key = hole.double() * 4 + (1 - conf.double().clamp(0, 1))  # hole first, then confidence descending
    order = torch.argsort(key, stable=True)
    h, c = hole[order], conf[order]
    idx = torch.arange(m, device=conf.device)
    start = torch.full((n_holes,), m, dtype=torch.long, device=conf.device).scatter_reduce(0, h, idx, "amin")
    j = idx - start[h]  # (M,) rank within the hole, 0 = most confident
    ok = (c >= 1 - factor / (j.to(c.dtype) + 2)) | (j == 0)
    size = torch.zeros(n_holes, dtype=torch.long, device=conf.device).scatter_add_(0, h, torch.ones_like(h))
    first_miss = torch.full((n_holes,), m, dtype=torch.long, device=conf.device).scatter_reduce(
        0, h, torch.where(ok, m, j), "amin")
    return torch.minimum(first_miss, size)


def in_block(hole: torch.Tensor, n_holes: int, block: int | None) -> torch.Tensor:
    """Rows within the first `block` masked slots of their hole (rows sorted by hole, then position),
    all rows when `block` is None: semi-autoregressive decoding (LLaDA's block schedule, Nie et al.
    2025, arXiv:2502.09992) as a window sliding from each hole's frontier."""
    if block is None:
        return torch.ones_like(hole, dtype=torch.bool)
    idx = torch.arange(len(hole), device=hole.device)
    first = torch.full((n_holes,), len(hole), dtype=torch.long, device=hole.device).scatter_reduce(
        0, hole, idx, "amin")
    return (idx - first[hole]) < block


def frontier_run(conf: torch.Tensor, hole: torch.Tensor, n_holes: int, threshold: float,
                 n_min: torch.Tensor) -> torch.Tensor:
    """Rows that commit under the contiguous rule: in each hole (rows sorted by hole, then
    position) the first n_min[h] rows (at least one), then the following rows while each passes
    the threshold. Without a host sync.

    Args:
        conf: (M,) confidences; hole: (M,) hole index per row; n_min: (H,) int64.
    Returns:
        (M,) bool.
    """
    m = conf.shape[0]
    idx = torch.arange(m, device=conf.device)
    first = torch.full((n_holes,), m, dtype=torch.long, device=conf.device).scatter_reduce(0, hole, idx, "amin")
    j = idx - first[hole]  # (M,) rank by position within the hole
    forced = j < n_min[hole].clamp(min=1)
    miss = torch.full((n_holes,), m, dtype=torch.long, device=conf.device).scatter_reduce(
        0, hole, torch.where(forced | (conf >= threshold), m, j), "amin")  # first row that stops the run
    return j < miss[hole]


def commit_rows(canvas: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor, conf: torch.Tensor,
                hole: torch.Tensor, threshold: float, n_min: torch.Tensor,
                eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Commit rows (all masked, `eligible` ones only when given) whose confidence >= threshold, or
    among the n_min[h] best of hole h: their tokens are written into `canvas` (L,) at `pos` on the
    device (one fused kernel on CUDA). Returns the (N,) bool of committed rows."""
    masked = torch.ones_like(hole, dtype=torch.bool) if eligible is None else eligible
    return commit(canvas, pos, tokens, conf, masked, hole, threshold, n_min)


def copy_prior(logits: torch.Tensor, canvas: torch.Tensor, pos: torch.Tensor, usable: torch.Tensor,
               weight: float, order: int = 3) -> torch.Tensor:
    """Mix an n-gram cache of the visible text into the model's distribution (code repeats its own
    identifiers; Tu, Su & Devanbu, "On the localness of software", FSE 2014, gain from such a cache;
    prompt-lookup decoding copies the same way). Bidirectional, as the canvas is: a masked slot
    whose left neighbour is known looks up what followed the same tokens elsewhere in the canvas,
    and one whose right neighbour is known what preceded it. A match of n tokens counts n (up to
    `order`), so longer matches dominate. Slots with no known neighbour or no match keep the model's
    distribution.

        p = (1 - weight) * softmax(logits) + weight * counts / sum(counts)

    Args:
        logits: (M, V) model logits of the masked slots (before any -inf constraints).
        canvas: (L,) current ids; pos: (M,) canvas positions of the slots (0 < pos < L - 1).
        usable: (L,) bool, canvas positions whose token may be counted (committed, not special).
        weight: mixture weight in [0, 1]; order: the longest match counted.
    Returns:
        (M, V) log-probabilities.
    """
    m, v = logits.shape
    n = canvas.shape[0]
    counts = torch.zeros(m, v, dtype=torch.float32, device=logits.device)
    j = torch.arange(n, device=canvas.device)
    for side in (-1, 1):  # -1: known tokens on the left predict the slot, +1: on the right
        run = torch.ones(m, n, dtype=torch.bool, device=canvas.device)  # match of k tokens ending at j
        score = torch.zeros(m, n, dtype=torch.float32, device=logits.device)
        target = j - side  # the token the matched context points to (after it for side -1)
        valid_t = (target >= 0) & (target < n)
        tgt = target.clamp(0, n - 1)
        for k in range(1, order + 1):
            q = pos + side * k  # (M,) the slot's k-th neighbour
            c = j + side * (k - 1)  # (L,) the candidate's k-th neighbour
            inside = (q >= 0) & (q < n)
            qc, cc = q.clamp(0, n - 1), c.clamp(0, n - 1)
            ok_c = (c >= 0) & (c < n)
            run = run & inside[:, None] & usable[qc][:, None] & ok_c[None, :] & usable[cc][None, :] \
                & (canvas[cc][None, :] == canvas[qc][:, None])
            score = score + run.float()
        hit = score * (valid_t & usable[tgt])[None, :].float()  # (M, L); masked slots are not usable
        counts.scatter_add_(1, canvas[tgt][None, :].expand(m, -1), hit)
    total = counts.sum(-1, keepdim=True)
    probs = torch.softmax(logits.float(), dim=-1)
    mixed = torch.where(total > 0, (1 - weight) * probs + weight * counts / total.clamp(min=1e-9), probs)
    return torch.log(mixed.clamp(min=1e-30))


def _tail_copies(seq: list, period: int) -> int:
    """How many times in a row `seq` ends with its last `period` items (1: once)."""
    n, unit, copies = len(seq), seq[len(seq) - period:], 1
    while (copies + 1) * period <= n and seq[n - (copies + 1) * period:n - copies * period] == unit:
        copies += 1
    return copies


def loop_start(tokens: list[int], repeats: int, min_tokens: int = 12, max_period: int = 16) -> int | None:
    """Where a fill's degenerate loop starts repeating, or None.

    A loop is a tail made of the same span of 1..`max_period` tokens `repeats` times or more in a
    row, `min_tokens` tokens long at least (short runs such as `[0, 0, 0]` are code). Returns the
    index just after the span's first copy: cutting there keeps the text up to one copy.

    Args:
        tokens: the fill's committed ids, in order.
    """
    n = len(tokens)
    for period in range(1, min(max_period, n // max(repeats, 1)) + 1):
        copies = _tail_copies(tokens, period)
        if copies >= repeats and copies * period >= min_tokens:
            return n - copies * period + period
    return None


def line_loop_start(tokens: list[int], texts: list[str], ended: bool = False,
                    max_lines: int = 8, min_chars: int = 8) -> int | None:
    """Where a multi-line fill starts repeating its own lines, or None: the last complete lines,
    whitespace aside, are a block of 1..`max_lines` lines twice in a row, holding `min_chars`
    characters or more. A small model re-emits a block one level deeper (`if not arg:` /
    `return` / `# parse ...`, indented further each time), which the token-level `loop_start`
    does not see, or writes one line twice (`cache[key] = None` / `cache[key] = None`): code
    holds two equal lines of 8+ characters in a row at 13 of 50,662 lines of the held-out split
    (`void_p,` in one argument list). Returns the index of the token holding the line break that
    ends the block's first copy: cutting there keeps the text up to that copy's last character.

    Args:
        tokens: the fill's committed ids, in order; texts: the text of every id.
        ended: the fill ends after `tokens` (EOS): its last line is complete.
    """
    ends, pos = [], 0  # (end offset of each token's text)
    for t in tokens:
        pos += len(texts[t]) if t < len(texts) else 0
        ends.append(pos)
    text = "".join(texts[t] for t in tokens if t < len(texts)) + ("\n" if ended else "")
    breaks = [i for i, c in enumerate(text) if c == "\n"]  # each complete line ends at one
    starts = [0] + [b + 1 for b in breaks[:-1]]
    lines = [text[s:b].strip() for s, b in zip(starts, breaks)]
    n = len(lines)
    for period in range(1, max_lines + 1):
        if 2 * period > n:
            break
        if sum(map(len, lines[n - period:])) < min_chars:
            continue
        copies = _tail_copies(lines, period)
        if copies >= 2:
            newline = breaks[n - (copies - 1) * period - 1]  # ends the first copy
            return next(i for i, e in enumerate(ends) if e > newline)
    return None


def phrase_loop_start(tokens: list[int], texts: list[str], repeats: int, min_chars: int = 12,
                      max_chars: int = 160, long_chars: int = 48) -> int | None:
    """Where a fill starts repeating a phrase across its lines, or None: its text, whitespace runs
    read as one space, ends in the same span of `min_chars`..`max_chars` characters `repeats`
    times in a row (twice, for a span of `long_chars` or more). A docstring that loops (`tests
    the function that` three times, wrapped over two lines) repeats no span of tokens (the line
    break and indentation fall at another place in each copy) and no whole line, so neither
    `loop_start` nor `line_loop_start` sees it.
    Returns the index of the first token that starts after the span's first copy ends: cutting
    there keeps the text up to one copy.

    Args:
        tokens: the fill's committed ids, in order; texts: the text of every id.
    """
    # the text with whitespace runs as one space (the fill's start counts as one: a line repeated
    # from there has a space before each copy), and the token of each character
    flat, owner, prev_space = [" "], [0], True
    for i, t in enumerate(tokens):
        for c in texts[t] if t < len(texts) else "":
            space = c.isspace()
            if not (space and prev_space):
                flat.append(" " if space else c)
                owner.append(i)
            prev_space = space
    text = "".join(flat).rstrip()
    n = len(text)
    for period in range(min_chars, min(max_chars, n // 2) + 1):
        copies = 2 if period >= long_chars else max(repeats, 2)
        if copies * period > n:
            continue
        unit = text[n - period:]
        if len(set(unit) - {" "}) < 4 or not any(c.isalnum() for c in unit):
            continue  # rules and separators (`# ====...`) are not loops
        if all(text[n - (c + 1) * period:n - c * period] == unit for c in range(1, copies)):
            end = n - (copies - 1) * period  # the first copy ends before this character
            cut = owner[end - 1] + 1 if owner[end] == owner[end - 1] else owner[end]  # a token across keeps
            return cut if cut < len(tokens) else None
    return None
