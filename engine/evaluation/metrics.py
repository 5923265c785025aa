"""Scores of a fill against the true middle: exact match and edit similarity, and their
aggregation per task kind. Plain strings in, numbers out."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


def normalize(text: str) -> str:
    """Strip trailing whitespace of every line and drop leading/trailing blank lines."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def exact_match(prediction: str, reference: str) -> bool:
    return normalize(prediction) == normalize(reference)


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each costs 1), two-row dynamic programme."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(prediction: str, reference: str) -> float:
    """1 - levenshtein / max length, on normalized text; two empty strings are identical (1.0)."""
    p, r = normalize(prediction), normalize(reference)
    longest = max(len(p), len(r))
    return 1.0 if longest == 0 else 1.0 - levenshtein(p, r) / longest


def repetition(prediction: str, n: int = 4) -> float:
    """Share of the fill's token n-grams (whitespace-split words) that repeat an earlier one:
    0 for text without repeats, near 1 for a fill that loops."""
    words = prediction.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


@dataclass(frozen=True)
class Outcome:
    """One system's answer to one task.

    Attributes:
        forward_passes / generated_tokens: 0 for systems without a model (heuristics).
        confidence: the engine's confidence in the fill (`InfillResult.confidence`, the geometric-mean
            probability of its tokens, 0..1); None for systems without one and fills it did not score.
    """

    task_id: str
    kind: str
    system: str
    prediction: str
    exact_match: bool
    edit_similarity: float
    ms: float = 0.0
    forward_passes: int = 0
    generated_tokens: int = 0
    repetition: float = 0.0
    confidence: float | None = None


def score(task_id: str, kind: str, system: str, prediction: str, reference: str, ms: float = 0.0,
          forward_passes: int = 0, generated_tokens: int = 0, confidence: float | None = None) -> Outcome:
    return Outcome(task_id, kind, system, prediction, exact_match(prediction, reference),
                   edit_similarity(prediction, reference), ms, forward_passes, generated_tokens,
                   repetition(prediction), confidence)


COVERAGES = (0.25, 0.5, 0.75)  # shares of the tasks a confidence threshold would keep
THRESHOLDS = (0.7, 0.8, 0.9)  # `minConfidence` values: geometric-mean token probabilities


def _share(kept: list[Outcome]) -> dict[str, float | int | None]:
    n = len(kept)
    return {"n": n, "exact_match": sum(o.exact_match for o in kept) / n if n else None,
            "edit_similarity": sum(o.edit_similarity for o in kept) / n if n else None}


def selective(outcomes: list[Outcome], coverages: tuple[float, ...] = COVERAGES,
              thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, dict[str, dict]] | None:
    """Exact match and edit similarity of the fills a confidence threshold would show. "coverage":
    for each share c, the ceil(c * n) most confident outcomes (unscored fills count as the least
    confident; ties keep task order) and the least confidence among them; "threshold": for each
    `minConfidence` t, the outcomes whose confidence >= t ("shown", unscored ones included, as
    the server shows them) and the rest ("held_back"). None when no outcome has a confidence."""
    if not any(o.confidence is not None for o in outcomes):
        return None
    order = sorted(outcomes, key=lambda o: -o.confidence if o.confidence is not None else float("inf"))
    cover = {}
    for c in coverages:
        k = max(1, math.ceil(c * len(order) - 1e-9))
        cover[f"{c:g}"] = {**_share(order[:k]), "min_confidence": order[k - 1].confidence}
    thresh = {}
    for t in thresholds:
        shown = [o.confidence is None or o.confidence >= t for o in outcomes]
        thresh[f"{t:g}"] = {"shown": _share([o for o, s in zip(outcomes, shown) if s]),
                            "held_back": _share([o for o, s in zip(outcomes, shown) if not s])}
    return {"coverage": cover, "threshold": thresh}


def _summary(outcomes: list[Outcome]) -> dict[str, float | int | None]:
    n = len(outcomes)
    tokens = sum(o.generated_tokens for o in outcomes)
    passes = sum(o.forward_passes for o in outcomes)
    return {
        "n": n,
        "exact_match": sum(o.exact_match for o in outcomes) / n,
        "edit_similarity": sum(o.edit_similarity for o in outcomes) / n,
        "ms_per_task": sum(o.ms for o in outcomes) / n,
        "forward_passes_per_token": passes / tokens if tokens else None,
        "generated_tokens": tokens,
        "repetition": sum(o.repetition for o in outcomes) / n,
        "looping": sum(o.repetition > 0.5 for o in outcomes) / n,  # share of fills that mostly repeat
        "selective": selective(outcomes),
    }


def aggregate(outcomes: Iterable[Outcome]) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """system -> kind (and "all") -> n, exact_match, edit_similarity, ms_per_task,
    forward_passes_per_token (None when nothing was generated), generated_tokens, repetition
    (mean repeated 4-gram share), looping (share of fills over half repeats) and selective (the
    scores of the most confident fills at each of `COVERAGES`, and of the fills shown and held back
    at each `minConfidence` of `THRESHOLDS`; None without confidences)."""
    groups: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        groups[o.system][o.kind].append(o)
        groups[o.system]["all"].append(o)
    return {system: {kind: _summary(items) for kind, items in kinds.items()} for system, kinds in groups.items()}
