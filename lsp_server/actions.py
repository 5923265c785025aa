"""The code-edit actions, as plans: which spans of a document become holes, what text the model
sees around them, and how fills turn back into edits. Offsets in, offset edits out.

- Regenerate selection: the selection is one hole between both sides.
- Fill holes: every placeholder (`<|hole|>`, `...`, `pass`, own-line TODO comments) of the
  enclosing function or class becomes a hole, all filled jointly in one run.
- Complete body: the body of the function/block at the cursor is one hole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lsp_server.context import chars_per_token, clip_prefix, clip_suffix, indent_unit, outline_spans
from lsp_server.languages import LangSpec
from lsp_server.postprocess import complete_lines, cut_repeated_line
from lsp_server.syntax import Syntax, line_end, line_start

REGENERATE, FILL_HOLES, COMPLETE_BODY = "dlsp.regenerateSelection", "dlsp.fillHoles", "dlsp.completeBody"
HOLE_MARKER = "<|hole|>"
_BODY_FIELDS = ("body", "consequence")


@dataclass(frozen=True)
class EditPlan:
    """Holes of one action. The document reads text[:spans[0][0]], hole 0, ..., text[spans[-1][1]:];
    each fill is written as lead + fill + trail over its span (the original is kept if empty).
    `block`: the fills belong inside a block (a body, a placeholder in one), so a fill is cut at
    its first line that dedents below the hole's indentation (the model went on past the block).
    `hint`: per hole, text the model reads right before it that is not written back (a TODO
    comment's own words, so the fill that replaces the comment does what it asks); empty by default."""

    spans: tuple[tuple[int, int], ...]
    lead: tuple[str, ...]
    trail: tuple[str, ...]
    hole_tokens: int
    max_new_tokens: int
    block: bool = False
    hint: tuple[str, ...] = ()

    def hint_at(self, i: int) -> str:
        return self.hint[i] if i < len(self.hint) else ""


@dataclass(frozen=True)
class Segments:
    prefix: str
    middles: tuple[str, ...]
    suffix: str


def segments(text: str, plan: EditPlan, spec: LangSpec | None, budget_tokens: int,
             count: Callable[[str], int] | None) -> Segments:
    """The text around and between the holes, the outer sides clipped to the budget."""
    first, last = plan.spans[0][0], plan.spans[-1][1]
    budget = int(max(16, budget_tokens) * chars_per_token(text, first, count) * 0.9)
    lo = line_start(text, max(0, first - max(32768, budget * 8)))
    syntax = Syntax.parse(text[lo:min(len(text), last + 4096)], lo, spec)
    s_budget = max(budget // 4, budget - (first - lo))
    prefix = clip_prefix(text, lo, first, budget - min(s_budget, len(text) - last),
                         outline_spans(text, first, syntax, spec))
    middles = tuple(plan.trail[i] + text[plan.spans[i][1]:plan.spans[i + 1][0]] + plan.hint_at(i + 1)
                    + plan.lead[i + 1] for i in range(len(plan.spans) - 1))
    return Segments(prefix + plan.hint_at(0) + plan.lead[0], middles, plan.trail[-1] + clip_suffix(text, last, s_budget))


def edits(text: str, plan: EditPlan, fills: Sequence[str], unit: str) -> list[tuple[int, int, str]]:
    """(start, end, new_text) per hole; empty fills keep the original span."""
    out = []
    for (s, e), lead, trail, fill in zip(plan.spans, plan.lead, plan.trail, fills):
        fill = _tidy(fill, unit)
        if plan.block:
            own_line, _, fill = _block_cut(text, (s, e), lead, trail, fill, unit)
            if own_line:
                if not lead.startswith("\n"):  # the hole starts after its line's indentation
                    fill = fill.lstrip(" \t")
                fill = complete_lines(fill)
        if fill.strip():
            out.append((s, e, lead + fill + trail))
    return out


def copied_lines(text: str, plan: EditPlan, fills: Sequence[str], unit: str) -> tuple[str, ...]:
    """Per hole, the line after it when `edits` drops the hole's fill as nothing but a copy of
    that line (a TODO filled with the code below it), else "": what a second run avoids
    (`InfillRequest.avoid`). Own-line holes of block plans only, as `edits` cuts them."""
    out = []
    for (s, e), lead, trail, fill in zip(plan.spans, plan.lead, plan.trail, fills):
        copied = ""
        if plan.block:
            own_line, whole, cut = _block_cut(text, (s, e), lead, trail, _tidy(fill, unit), unit)
            if own_line and whole.strip() and not cut.strip():
                copied = next((ln.strip() for ln in (trail + text[e:]).split("\n") if ln.strip()), "")
        out.append(copied)
    return tuple(out)


def _block_cut(text: str, span: tuple[int, int], lead: str, trail: str, fill: str, unit: str) -> tuple[bool, str, str]:
    """A block plan's fill (tidied) cut where it leaves its block and where it runs into the code
    after its hole and copies it (a TODO filled with the line below it; a fill that is nothing but
    the copy leaves the hole as it was). Returns whether the hole starts a line of its own, the
    fill within its block, and that fill cut before the copy."""
    s, e = span
    whole = _within_block(fill, _hole_indent(text, s, lead, unit), unit)
    own_line = lead.startswith("\n") or not text[line_start(text, s):s].strip()
    return own_line, whole, cut_repeated_line(whole, trail + text[e:], first_line_counts=own_line).rstrip()


def block_floor(text: str, plan: EditPlan, unit: str) -> int | None:
    """The indentation (columns) below which the engine may stop a block plan's fills
    (`InfillRequest.min_indent`): the shallowest of its holes' floors (`edits` cuts each at its
    own); None for a plan whose fills are not cut (a selection)."""
    if not plan.block:
        return None
    return min(_hole_indent(text, s, lead, unit) for (s, _), lead in zip(plan.spans, plan.lead))


def _width(ws: str, unit: str) -> int:
    return len(ws.expandtabs(len(unit) if unit != "\t" else 4))


def _hole_indent(text: str, start: int, lead: str, unit: str) -> int:
    """Indentation (columns) a fill's later lines must keep: the lead's when it opens a new line,
    else that of the line the hole starts on."""
    if lead.startswith("\n") and not lead[1:].strip():
        return _width(lead[1:], unit)
    return _width(_indent_of(text, start), unit)


def _within_block(fill: str, floor: int, unit: str) -> str:
    """The fill up to (not including) its first non-blank line indented less than `floor` columns."""
    lines = fill.split("\n")
    out = lines[:1]
    for line in lines[1:]:
        if line.strip() and _width(line[:len(line) - len(line.lstrip(" \t"))], unit) < floor:
            break
        out.append(line)
    return "\n".join(out).rstrip()


def _tidy(fill: str, unit: str) -> str:
    fill = fill.replace("\r\n", "\n").replace("\r", "\n").rstrip()
    if unit == "\t":
        return fill
    return "\n".join(ln.expandtabs(len(unit)) if ln.startswith("\t") else ln for ln in fill.split("\n"))


def _tokens(text: str, count: Callable[[str], int] | None) -> int:
    try:
        return count(text) if count else len(text) // 3
    except Exception:
        return len(text) // 3


def regenerate_plan(text: str, start: int, end: int, max_tokens: int,
                    count: Callable[[str], int] | None) -> EditPlan | None:
    """The selection [start, end) as one hole sized like the selected text."""
    if end <= start:
        return None
    selected = text[start:end]
    body = selected.rstrip("\n")
    n = max(4, min(4 * max_tokens, _tokens(body, count) + 2))
    return EditPlan(spans=((start, start + len(body)),), lead=("",), trail=("",), hole_tokens=n,
                    max_new_tokens=max(n + 8, max_tokens))


_MARKER = re.compile(re.escape(HOLE_MARKER))


def _line_pattern(spec: LangSpec | None) -> re.Pattern[str]:
    leaders = {"#": "#", "//": "//"}.get(spec.comment, "//") if spec else "#|//"
    words = r"\.\.\.;?|pass" if spec is None or spec.name == "python" else r"\.\.\.;?"
    return re.compile(rf"^[ \t]*({words}|(?:{leaders})[ \t]*TODO\b[^\n]*?)[ \t]*$"
                      + (r"|:[ \t]*(\.\.\.|pass)[ \t]*$" if spec is None or spec.name == "python" else ""), re.M)


def find_holes(text: str, lo: int, hi: int, spec: LangSpec | None, syntax: Syntax | None) -> list[tuple[int, int]]:
    """Placeholder spans in text[lo:hi], sorted and non-overlapping."""
    found = [(m.start(), m.end()) for m in _MARKER.finditer(text, lo, hi)]
    for m in _line_pattern(spec).finditer(text, lo, hi):
        g = 1 if m.group(1) is not None else 2
        s, e = m.start(g), m.end(g)
        is_comment = "TODO" in m.group(g)
        if syntax is not None and not is_comment and syntax.in_comment_or_string(s):
            continue
        if syntax is not None and is_comment and not syntax.in_comment_or_string(s + 1):
            continue
        found.append((s, e))
    out: list[tuple[int, int]] = []
    for s, e in sorted(found):
        if not out or s >= out[-1][1]:
            out.append((s, e))
    return out


def scope_range(text: str, cursor: int, syntax: Syntax | None, pick: Callable[[int, int], bool]) -> tuple[int, int]:
    """The innermost enclosing function/class for which `pick(start, end)` holds, else a window."""
    if syntax is not None:
        for node in syntax.enclosing_scopes(cursor, strict=False):
            s, e = syntax.span(node)
            if pick(s, e):
                return s, e
    return line_start(text, max(0, cursor - 16384)), line_end(text, min(len(text), cursor + 16384))


def fill_holes_plan(text: str, cursor: int, spec: LangSpec | None, syntax: Syntax | None,
                    max_tokens: int) -> EditPlan | None:
    """Every placeholder of the enclosing scope (the innermost one that has any)."""
    lo, hi = scope_range(text, cursor, syntax, lambda s, e: bool(find_holes(text, s, e, spec, syntax)))
    holes = find_holes(text, lo, hi, spec, syntax)
    if not holes:
        return None
    n = len(holes)
    return EditPlan(spans=tuple(holes), lead=("",) * n, trail=("",) * n,
                    hole_tokens=min(16, max_tokens), max_new_tokens=max_tokens, block=True,
                    hint=tuple(_todo_hint(text, s, e) for s, e in holes))


def _todo_hint(text: str, start: int, end: int) -> str:
    """For an own-line TODO comment hole: the comment, a newline and its indentation, so the model
    reads what the TODO asks on the line above the code that replaces it; else ""."""
    hole = text[start:end]
    if "TODO" not in hole or HOLE_MARKER in hole or text[line_start(text, start):start].strip():
        return ""
    return hole + "\n" + text[line_start(text, start):start]


def _indent_of(text: str, offset: int) -> str:
    ls = line_start(text, offset)
    line = text[ls:line_end(text, offset)]
    return line[:len(line) - len(line.lstrip(" \t"))]


def body_plan(text: str, cursor: int, spec: LangSpec | None, syntax: Syntax | None,
              max_tokens: int) -> EditPlan | None:
    """The body of the innermost function/block at the cursor (or after a bare header)."""
    unit = indent_unit(text, cursor)
    for node in syntax.ancestors(cursor) if syntax is not None else ():
        body = next((node.child_by_field_name(f) for f in _BODY_FIELDS if node.child_by_field_name(f)), None)
        if body is None or node.type in ("module", "program", "source_file", "translation_unit"):
            continue
        s, e = syntax.span(body)
        indent = _indent_of(text, syntax.span(node)[0])
        if text[s:s + 1] == "{":
            close = e - 1 if text[e - 1:e] == "}" and e - 1 > s else e
            return EditPlan(((s + 1, close),), ("\n" + indent + unit,), ("\n" + indent if close < e else "",),
                            min(32, max_tokens), max_tokens, block=True)
        if spec is not None and spec.opener == ":":
            start = syntax.header_end(node)
            return EditPlan(((start, max(start, e)),), ("\n" + indent + unit,), ("",), min(32, max_tokens), max_tokens,
                            block=True)
    return _bare_header_plan(text, cursor, spec, unit, max_tokens)


def _bare_header_plan(text: str, cursor: int, spec: LangSpec | None, unit: str, max_tokens: int) -> EditPlan | None:
    ls = line_start(text, cursor)
    line = text[ls:line_end(text, cursor)].rstrip()
    opener = spec.opener if spec else None
    if not opener or not line.endswith(opener):
        return None
    at = ls + len(line)
    return EditPlan(((at, at),), ("\n" + _indent_of(text, ls) + unit,), ("",), min(32, max_tokens), max_tokens,
                    block=True)
