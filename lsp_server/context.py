"""The context of one completion: the cursor window (prefix and suffix text around the cursor),
ranked segments of far context, and what kind of fill the cursor asks for. Works on document text
and offsets, never positions.

This module does not clip to the model: it bounds the window in characters (generously, so the
engine can fill its budget) and ranks what is worth keeping from the far text: the headers of the
enclosing scopes, the imports, the signatures of sibling definitions (an outline of the far
text), then definitions from other open documents. The engine clips once, in its own tokens, by
rank (`engine.clip`).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from engine import ContextSegment
from lsp_server.crossfile import related_definitions
from lsp_server.documents import Document
from lsp_server.languages import LangSpec
from lsp_server.syntax import Syntax, line_end, line_start

PAIRS = {")": "(", "]": "[", "}": "{"}
OPENERS = "([{"
CLOSERS = set(")]}\"'`;,: \t")
HOLE_TOKENS = {"fill": 8, "line": 16, "block": 24, "body": 32}  # initial hole per mode (line: as `dlsp eval` measures single lines)
SINGLE_LINE = ("fill", "line")
_SPLIT = 0.75  # share of the budget for the prefix (the rest goes to the suffix)
_WINDOW = 1.5  # the prefix window holds this many times the estimated budget (the engine clips it)
KINDS = ((1000, "scope"), (2000, "imports"), (3000, "outline"))  # rank below -> kind
OTHER_FILES_RANK = 3000
_HEAD = 16384  # chars of a file's head scanned for imports when the window starts later


@dataclass(frozen=True)
class Context:
    """What the engine gets for one completion, and what post-processing needs to know.

    Attributes:
        prefix, suffix: the cursor window: text before / after the cursor, bounded in characters.
        segments: ranked far context for the engine to keep when it fits (see
            `engine.ContextSegment`); `at` offsets are into `prefix`.
        mode: "fill" (text right of the cursor: fill up to it), "line" (finish the line),
            "block" (statements on an empty line), "body" (after a block header).
        line_before, line_after: the cursor's line split at the cursor.
        indent_unit: one level of indentation in this document.
        new_line: the line break the suggestion ends with ("" = none): a cursor at the start of
            a line of code asks for a line of its own above it (`opens_line`), built as if the
            line break were already typed there.
    """

    prefix: str
    suffix: str
    mode: str
    hole_tokens: int
    max_new_tokens: int
    line_before: str
    line_after: str
    indent_unit: str = "    "
    segments: tuple[ContextSegment, ...] = ()
    new_line: str = ""

    @property
    def multiline(self) -> bool:
        return self.mode not in SINGLE_LINE

    def key(self) -> tuple:
        return (self.prefix, self.suffix, self.segments, self.mode, self.hole_tokens, self.max_new_tokens,
                self.new_line)


_RATIOS: OrderedDict[tuple[int, str], float] = OrderedDict()  # (counter, sample) -> chars per token
_RATIOS_LOCK = threading.Lock()  # contexts are built on several worker threads


def chars_per_token(text: str, cursor: int, count: Callable[[str], int] | None) -> float:
    """Measured on up to 4000 characters before the cursor's line (the file's start when that is
    short); 3.5 when it cannot be measured. Typing within a line leaves the sample as it was, so
    the count (~2-4 ms of tokenizing) is remembered for it."""
    ls = line_start(text, cursor)
    sample = text[max(0, ls - 4000):ls]
    if len(sample) < 1000:
        sample = text[:4000]
    if count is None or len(sample) < 64:
        return 3.5
    key = (id(getattr(count, "__self__", count)), sample)  # a bound method: its object (stable)
    with _RATIOS_LOCK:
        if key in _RATIOS:
            _RATIOS.move_to_end(key)
            return _RATIOS[key]
    try:
        ratio = max(1.0, min(8.0, len(sample) / max(1, count(sample))))
    except Exception:
        return 3.5
    with _RATIOS_LOCK:
        _RATIOS[key] = ratio
        while len(_RATIOS) > 16:
            _RATIOS.popitem(last=False)
    return ratio


def indent_unit(text: str, cursor: int) -> str:
    """Tabs if the nearby code indents with tabs, else the smallest space indent seen (2 or 4)."""
    near = text[max(0, cursor - 4000):cursor + 1000]
    tabs = len(re.findall(r"^\t", near, re.M))
    widths = [len(m) for m in re.findall(r"^( +)\S", near, re.M)]
    if tabs > len(widths):
        return "\t"
    return " " * (2 if widths and min(widths) == 2 else 4)


def brackets(s: str, quote: str | None = None) -> tuple[list[tuple[int, str]], str | None]:
    """Brackets of `s` outside string quotes (a quote state carries in and out; ' and " end at a
    newline)."""
    out, escaped = [], False
    for i, ch in enumerate(s):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote or (ch == "\n" and quote != "`"):
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in OPENERS or ch in PAIRS:
            out.append((i, ch))
    return out, quote


def _bracket_depth(s: str) -> int:
    return sum(s.count(c) for c in "([{") - sum(s.count(c) for c in ")]}")


def text_after(text: str, cursor: int) -> str:
    """The cursor's line right of the cursor, without its line break."""
    return text[cursor:line_end(text, cursor)].rstrip("\r\n")


def holds_code(after: str) -> bool:
    """Text right of the cursor that a fill must end before: not blank, not only closers."""
    return bool(after.strip()) and not set(after) <= CLOSERS


def decide_mode(text: str, cursor: int, spec: LangSpec | None, syntax: Syntax | None) -> str:
    """Single-line or multi-line, from the syntax around the cursor."""
    ls = line_start(text, cursor)
    after = text_after(text, cursor)
    before = text[ls:cursor]
    if holds_code(after):
        return "fill"
    if before.strip():
        header, end = before.rstrip(), ls + len(before.rstrip())
    else:
        prev = text[max(0, ls - 2000):ls].rstrip()
        header = prev[prev.rfind("\n") + 1:]
        end = ls - (len(text[max(0, ls - 2000):ls]) - len(prev))
    # the next non-blank line after the cursor's: an empty line with code after it at the
    # block's indentation (not a dedent, not a closer, not the end of the file) is a gap in a
    # block and gets one line, as Copilot asks for a block only where one starts
    below = line_end(text, cursor)
    nxt = next((ln for ln in text[below:below + 2000].split("\n") if ln.strip()), None)
    code_after = nxt is not None and not set(nxt.strip()) <= CLOSERS
    opener = spec.opener if spec else None
    if opener and header.endswith(opener) and _bracket_depth(header[:-1]) <= 0 and brackets(header)[1] is None:
        if syntax is None or not syntax.in_comment_or_string(end - 1):
            # a header whose block already has code below the cursor: a gap at the block's start
            inside = not before.strip() and code_after and indent_width(nxt) > indent_width(header)
            return "line" if inside else "body"
    if before.strip():
        return "line"
    return "line" if code_after and indent_width(nxt) >= indent_width(header) else "block"


def indent_width(line: str) -> int:
    """Indentation of a line in columns (tabs as 4)."""
    expanded = line.expandtabs(4)
    return len(expanded) - len(expanded.lstrip())


def outline_spans(text: str, cursor: int, syntax: Syntax | None, spec: LangSpec | None) -> list[tuple[int, int, int]]:
    """(rank, start, end) line spans worth keeping from the far prefix: enclosing scope headers
    (rank 0..), imports (rank 1000..), sibling signatures (rank 2000.., nearest first)."""
    if syntax is None:
        return []
    spans: list[tuple[int, int, int]] = []
    enclosing = syntax.enclosing_scopes(cursor)
    for i, node in enumerate(enclosing):
        s = syntax.span(node)[0]
        spans.append((i, line_start(text, s), line_end(text, max(s, syntax.header_end(node) - 1))))
    found = syntax.nodes_of(("imports", "scopes"), syntax.base, cursor)  # one walk for both
    imports = found["imports"]
    head = _head_imports(text, syntax.base, spec)
    for i, (s, e) in enumerate(head + [syntax.span(n) for n in imports]):
        spans.append((1000 + i, line_start(text, s), line_end(text, max(s, e - 1))))
    ids = {n.id for n in enclosing}
    siblings = [n for n in found["scopes"] if n.id not in ids]
    for i, node in enumerate(reversed(siblings[-200:])):
        s = syntax.span(node)[0]
        spans.append((2000 + i, line_start(text, s), line_end(text, max(s, syntax.header_end(node) - 1))))
    return [sp for sp in spans if sp[2] <= cursor]


def _head_imports(text: str, base: int, spec: LangSpec | None) -> list[tuple[int, int]]:
    if base == 0 or spec is None:
        return []
    head = text[:min(base, _HEAD)]
    syntax = Syntax.parse(head, 0, spec)
    return [syntax.span(n) for n in syntax.nodes("imports")] if syntax else []


def clip_prefix(text: str, lo: int, cursor: int, budget: int, keep: Sequence[tuple[int, int, int]]) -> str:
    """At most ~`budget` chars of prefix: near text (at least half), then kept spans by rank,
    then more near text. Cuts fall on line starts where the text allows."""
    if lo == 0 and cursor <= budget:
        return text[:cursor]
    start = _next_line_start(text, max(lo, cursor - budget // 2), cursor)
    used, picked = cursor - start, []
    for _, s, e in sorted(set(keep)):
        if e <= start and used + (e - s) <= budget and all(e <= ps or s >= pe for ps, pe in picked):
            picked.append((s, e))
            used += e - s
    start = min(start, _next_line_start(text, max(lo, start - (budget - used)), start))
    kept = "".join(text[s:e] for s, e in sorted(picked) if e <= start)
    return kept + text[start:cursor]


def _next_line_start(text: str, offset: int, limit: int) -> int:
    """The first line start at or after `offset` (not past `limit`); `offset` if none."""
    if offset == 0 or text[offset - 1] == "\n":
        return offset
    i = text.find("\n", offset, limit)
    return offset if i < 0 else i + 1


def clip_suffix(text: str, cursor: int, budget: int) -> str:
    end = min(len(text), cursor + max(0, budget))
    if end < len(text):
        cut = text.rfind("\n", cursor, end)
        end = cut + 1 if cut > cursor else end
    return text[cursor:end]


def ranked_segments(text: str, lo: int, spans: Sequence[tuple[int, int, int]], related: str,
                    budget: int) -> tuple[ContextSegment, ...]:
    """Far-context segments for a prefix window starting at document offset `lo`: other files'
    definitions first (text from elsewhere, `at` None), then outline spans in document order (`at`
    into the window when they lie in it, else None), at most ~`budget` chars of them by rank."""
    picked, used = [], 0
    for rank, s, e in sorted(set(spans)):
        if used + (e - s) <= budget and all(e <= ps or s >= pe for _, ps, pe in picked):
            picked.append((rank, s, e))
            used += e - s
    kind = {r: next((k for bound, k in KINDS if r < bound), "outline") for r, _, _ in picked}
    out = [ContextSegment(text=related, rank=OTHER_FILES_RANK, kind="other_file")] if related else []
    out += [ContextSegment(text=text[s:e], rank=r, kind=kind[r], at=s - lo if s >= lo else None)
            for r, s, e in sorted(picked, key=lambda x: x[1])]
    return tuple(out)


def opens_line(text: str, cursor: int) -> str:
    """The line break a suggestion at `cursor` ends with: where the cursor sits at the start of a
    line that holds code (not only closers), text typed there goes on a line of its own above
    that line (a statement cannot start left of the line's own indentation, in front of it), so
    the suggestion is a whole line and its line break (the document's: `\\r\\n` or `\\n`). ""
    elsewhere."""
    if cursor > 0 and text[cursor - 1] != "\n":
        return ""
    if not holds_code(text_after(text, cursor)):
        return ""
    return "\r\n" if text[max(0, cursor - 2):cursor] == "\r\n" else "\n"


def build_context(text: str, cursor: int, spec: LangSpec | None, budget_tokens: int, max_tokens: int,
                  count: Callable[[str], int] | None = None, others: Sequence[Document] = ()) -> Context:
    """Everything the engine needs for a completion at `cursor` in `text`; `others` are the other
    open documents (definitions they hold may join the context). At the start of a line of code
    (`opens_line`) the context is the one of an empty line typed above it, and the suggestion
    ends with a line break (`Context.new_line`): the shape a held-out single line has in `dlsp
    eval`, where before the model saw the line's code right after the cursor and the suggestion
    was cut at its line break, joining the line in front of the code."""
    cursor = max(0, min(cursor, len(text)))
    eol = opens_line(text, cursor)
    if eol:
        ctx = build_context(text[:cursor] + eol + text[cursor:], cursor, spec, budget_tokens, max_tokens, count, others)
        return replace(ctx, new_line=eol)
    budget = int(max(16, budget_tokens) * chars_per_token(text, cursor, count) * 0.9)
    window = max(32768, budget * 8)
    lo = line_start(text, max(0, cursor - window))
    hi = line_end(text, min(len(text), cursor + window))
    syntax = Syntax.parse(text[lo:hi], lo, spec)
    mode = decide_mode(text, cursor, spec, syntax)
    p_budget = int(budget * _SPLIT)
    s_budget = budget - min(p_budget, cursor - lo)
    p_budget = budget - min(s_budget, hi - cursor)
    related = related_definitions(text, cursor, spec, others, p_budget // 6)
    start = _next_line_start(text, max(lo, cursor - int(budget * _WINDOW)), cursor) if cursor - lo > budget else lo
    segments = ranked_segments(text, start, outline_spans(text, cursor, syntax, spec),
                               related, p_budget // 2)
    ls = line_start(text, cursor)
    return Context(prefix=text[start:cursor], suffix=clip_suffix(text, cursor, int(s_budget * _WINDOW)), mode=mode,
                   hole_tokens=min(HOLE_TOKENS[mode], max_tokens),
                   max_new_tokens=min(max_tokens, 32) if mode in SINGLE_LINE else max_tokens,
                   line_before=text[ls:cursor], line_after=text_after(text, cursor),
                   indent_unit=indent_unit(text, cursor), segments=segments)
