"""Token healing: the constraint on the slot that rewrites the prefix's last token.

`Healer` answers "which tokens start with this text" with two binary searches over the vocabulary
sorted by text (the tokens starting with a string are one contiguous run of that order) and one
indexed write, instead of a Python loop over the vocabulary per request; nothing vocabulary-sized
is cached per token. `first_slot_ref` is the obvious loop it is tested against. Works on token
texts and ids.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FirstSlot:
    """A constraint on the first slot of hole 0 (token healing: the last prefix token was moved
    into the hole, so that slot must start with its text).

    Attributes:
        allowed: (V,) bool, the tokens the slot may take.
        stop: (V,) bool, which of them end the fill (replaces `stop_ids` for this slot: the text the
            token shares with the prefix does not count); None = the same as elsewhere.
        lead: the text the slot's token starts with, which is the prefix's (not the fill's).
        partial: allowed tokens that hold only the lead's head (`engine.healing.line_splits`):
            the slot after one of them must start with the rest of the lead. Only a left-to-right
            decode (`block=1`, the fast sampler) offers them; elsewhere they are not allowed.
        rest: given the token the slot took, the constraint on the next slot of hole 0 (the rest
            of the lead, when the token is one of `partial`), else None.
    """

    allowed: torch.Tensor
    stop: torch.Tensor | None = None
    lead: str = ""
    partial: tuple[int, ...] = ()
    rest: Callable[[int], FirstSlot | None] | None = None


class Healer:
    """Built once per tokenizer.

    Args:
        texts: the text of every id (index = id); vocab_size: rows of the model's vocabulary (ids
            past the tokenizer's are never allowed); special: ids never allowed.
    """

    def __init__(self, texts: Sequence[str], vocab_size: int, special: Sequence[int],
                 device: torch.device | str = "cpu") -> None:
        n = min(len(texts), vocab_size)
        self.texts, self.vocab_size, self.device = list(texts[:n]), vocab_size, torch.device(device)
        self.special = set(special)
        order = sorted(range(n), key=lambda i: self.texts[i])
        self.sorted_texts = [self.texts[i] for i in order]
        self.order = torch.tensor(order, dtype=torch.long, device=self.device)  # (n,) ids by text
        self.last_break = torch.tensor([t.rfind("\n") for t in self.texts] + [-1] * (vocab_size - n),
                                       dtype=torch.long, device=self.device)  # (V,) -1 = no line break
        self.special_ids = torch.tensor(sorted(i for i in self.special if i < vocab_size), dtype=torch.long,
                                        device=self.device)
        self.id_of: dict[str, int] = {}  # text -> id (the first of equal texts), special ids left out
        for i in order:
            if i not in self.special:
                self.id_of.setdefault(self.texts[i], i)

    def first_slot(self, last: int, single_line: bool) -> tuple[str, FirstSlot] | None:
        """For a prefix ending with token `last`: its text and the constraint on the slot that
        replaces it (tokens starting with that text; for single-line fills, `stop` marks those
        with a line break after that text). None when `last` is special or a partial UTF-8
        sequence."""
        text = self.texts[last] if 0 <= last < len(self.texts) else ""
        if last in self.special:
            return None
        return self.for_text(text, single_line)

    def for_text(self, text: str, single_line: bool) -> tuple[str, FirstSlot] | None:
        """The constraint on a fill that must start with `text` (the end of a prefix that is not
        on the canvas), as `first_slot` gives it for a token's text."""
        if not text or "\ufffd" in text:
            return None
        lo = bisect.bisect_left(self.sorted_texts, text)
        hi = bisect.bisect_left(self.sorted_texts, text + "\U0010ffff", lo)  # every string with this start
        allowed = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)  # (V,)
        allowed[self.order[lo:hi]] = True
        allowed[self.special_ids] = False
        partial = {i: j for j, i in ((j, self.id_of.get(text[:j])) for j in line_splits(text)) if i is not None}
        allowed[list(partial)] = True
        stop = (allowed & (self.last_break >= len(text))) if single_line else None
        rest = functools.partial(self._rest, text, partial, single_line) if partial else None
        return text, FirstSlot(allowed, stop, text, tuple(sorted(partial)), rest)

    def starting(self, line: str) -> torch.Tensor | None:
        """(V,) bool: the tokens that would begin `line`'s code where only whitespace came before
        (their text, leading whitespace and line breaks aside, is a non-empty head of it; special
        ids never). None for a blank `line`. (`InfillRequest.avoid`: one scan of the vocabulary.)"""
        code = line.strip()
        if not code:
            return None
        out = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        ids = [i for i, t in enumerate(self.texts) if (w := t.lstrip()) and code.startswith(w) and i not in self.special]
        out[ids] = True
        return out

    def _rest(self, text: str, partial: dict[int, int], single_line: bool, token: int) -> FirstSlot | None:
        """The constraint on the slot after one that took `token`: the rest of `text` when the
        token was the lead's head (`partial`), else None (the constraint is met)."""
        j = partial.get(token)
        healed = None if j is None else self.for_text(text[j:], single_line)
        return None if healed is None else healed[1]


def line_splits(text: str) -> list[int]:
    """Where a lead of blank lines is split between two tokens before code at column 0: before
    its last line break. A prefix ending at a blank line ends in one token (`"\\n\\n"`), but
    before a word at column 0 byte-level BPE gives the whitespace run's last character a token
    of its own (`"\\n"` + `"\\n"` + `"def"`; `"\\r\\n\\r"` + `"\\n"` + `"def"` with CRLF): a
    token that starts with the whole lead is only ever followed by more whitespace
    (`"\\n\\n   "` + `" def"`, or `"\\n\\n"` + `" def"`, a one-column indent). Measured (held-out
    draws 0-3): with only those, the shipped model and the AR floor matched none of 63 held-out
    lines at column 0, and wrote 18 and 13 of them one column in (an IndentationError at module
    level)."""
    return [len(text) - 1] if len(text) >= 2 and text.endswith("\n") and "\n" in text[:-1] and not text.strip() \
        else []


def first_slot_ref(texts: Sequence[str], vocab_size: int, special: Sequence[int], last: int,
                   single_line: bool) -> tuple[str, FirstSlot] | None:
    """Reference: the loop over the vocabulary that `Healer.first_slot` replaces."""
    special = set(special)
    text = texts[last] if last < len(texts) else ""
    if not text or "\ufffd" in text or last in special:
        return None
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    stop = torch.zeros(vocab_size, dtype=torch.bool) if single_line else None
    splits = line_splits(text)
    for i, t in enumerate(texts[:vocab_size]):
        if i not in special and t.startswith(text):
            allowed[i] = True
            if stop is not None:
                stop[i] = "\n" in t[len(text):]
        elif i not in special and len(t) in splits and text.startswith(t) and texts.index(t) == i:
            allowed[i] = True  # one of its leading lines (`line_splits`), the first id of that text
    return text, FirstSlot(allowed, stop, text)
