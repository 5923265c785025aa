"""Post-processing of a model fill before the editor shows it: stop rules for single-line fills,
no repetition of what the suffix already says, brackets balanced against the suffix, indentation
fitted to the cursor and the document. Pure string functions of (fill, `Context`)."""

from __future__ import annotations

from lsp_server.context import OPENERS, PAIRS, Context, brackets, indent_width

MAX_LINES = 40


def postprocess(text: str, ctx: Context) -> str:
    """The text to insert at the cursor ("" = nothing worth showing)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = fit_first_line(text, ctx)
    text = stop(text, ctx)
    text = cut_suffix_overlap(text, ctx)
    text = balance(text, ctx)
    text = fit_indent(text, ctx)
    text = text.rstrip()
    return text + ctx.new_line if text.strip() else ""


def fit_first_line(text: str, ctx: Context) -> str:
    """The cursor already sits after the line's indentation: drop indentation the model repeats.
    At column 0, a first line indented by one lone space (in a document that does not indent by
    one space) loses it: after a blank line the prefix ends in a two-newline token, which code
    has only before indentation, and byte-level BPE models go on with a space-led word (` def`)."""
    if ctx.line_before and not ctx.line_before.strip():
        first, nl, rest = text.partition("\n")
        return first.lstrip(" \t") + nl + rest
    if not ctx.line_before and ctx.indent_unit != " " and text[:1] == " " and text[1:2].strip():
        return text[1:]
    return text


def block_floor(ctx: Context) -> int:
    """Lines of a multi-line fill must stay indented at least this much (else the block ended);
    the engine stops there too (`InfillRequest.min_indent`)."""
    if ctx.mode == "block":
        return indent_width(ctx.line_before) if not ctx.line_before.strip() else 0
    header = ctx.line_before
    if not header.strip():  # cursor on an empty line below the header
        lines = [ln for ln in ctx.prefix[:len(ctx.prefix) - len(ctx.line_before)].split("\n") if ln.strip()]
        header = lines[-1] if lines else ""
    return indent_width(header) + 1


def stop(text: str, ctx: Context) -> str:
    """Single-line fills end at the first newline; multi-line fills end where the code dedents
    out of the block, at a run of blank lines, or after MAX_LINES lines."""
    if not ctx.multiline:
        return text.split("\n", 1)[0]
    lines = text.split("\n")
    floor = block_floor(ctx)
    out: list[str] = []
    blank = 0
    for i, line in enumerate(lines[:MAX_LINES]):
        if i > 0 and line.strip() and indent_width(line) < floor:
            break
        blank = blank + 1 if not line.strip() else 0
        if blank >= 2:
            break
        out.append(line)
    return "\n".join(out)


def cut_suffix_overlap(text: str, ctx: Context) -> str:
    """Cut the fill where it starts repeating the text after the cursor."""
    if not ctx.multiline:
        right = ctx.line_after.strip()
        if not right or set(right) <= set(")]}\"'`;,:"):
            return text
        i = text.find(right)
        if i >= 0:
            return text[:i]
        for k in range(min(len(right), len(text)), 2, -1):  # overlap of 3+ chars at the tail
            if text.endswith(right[:k]):
                return text[:-k]
        return text
    return cut_repeated_line(text, ctx.suffix, first_line_counts=not ctx.line_before.strip())


def cut_repeated_line(text: str, following: str, first_line_counts: bool = True) -> str:
    """A multi-line fill up to the first of its lines that repeats the first non-blank line of
    `following` (the text after the hole): a model that reaches the suffix copies it. Its first
    line counts only where it starts a line of its own (`first_line_counts`)."""
    first = next((ln.strip() for ln in following.split("\n") if ln.strip()), "")
    if not first or (len(first) < 2 and first not in PAIRS):
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == first and (i > 0 or first_line_counts):
            return "\n".join(lines[:i])
    return text


def complete_lines(text: str) -> str:
    """The longest run of `text`'s leading lines that leaves no bracket open: a block fill that
    stopped inside an expression (`return line.split(` and the end) is cut back to its last
    complete statement, or to nothing, rather than leaving broken code in the buffer. (Quotes
    are not judged: ' and " close at a line's end here, and an apostrophe in a comment would
    look like an open string.)"""
    lines = text.split("\n")
    for n in range(len(lines), 0, -1):
        head = "\n".join(lines[:n])
        if not _open_stack(head)[0]:
            return head.rstrip()
    return ""


def _open_stack(s: str) -> tuple[list[str], str | None]:
    """Openers of `s` left unclosed (innermost last; a mismatch resets: not code) and the quote
    state at its end."""
    found, quote = brackets(s)
    stack: list[str] = []
    for _, ch in found:
        if ch in OPENERS:
            stack.append(ch)
        elif stack and stack[-1] == PAIRS[ch]:
            stack.pop()
        else:
            stack = []
    return stack, quote


def _suffix_closes(s: str, quote: str | None) -> int:
    """How many enclosing openers the start of the suffix closes."""
    depth, closes = 0, 0
    for _, ch in brackets(s, quote)[0]:
        if ch in OPENERS:
            depth += 1
        elif depth:
            depth -= 1
        else:
            closes += 1
    return closes


def balance(text: str, ctx: Context) -> str:
    """Cut the fill at a closer that the suffix already provides or that matches nothing."""
    if ctx.multiline:
        before, after = ctx.prefix[-1000:], ctx.suffix[:1000]
    else:
        before, after = ctx.line_before, ctx.line_after
    outer, quote = _open_stack(before)
    found, end_quote = brackets(text, quote)
    suffix_closes = _suffix_closes(after, end_quote)
    local: list[str] = []
    for i, ch in found:
        if ch in OPENERS:
            local.append(ch)
        elif local:
            if local[-1] != PAIRS[ch]:
                return text[:i]
            local.pop()
        elif not outer or outer[-1] != PAIRS[ch] or suffix_closes > 0:
            return text[:i]
        else:
            outer.pop()
    return text


def fit_indent(text: str, ctx: Context) -> str:
    """Re-indent continuation lines with the document's indentation character."""
    lines = text.split("\n")
    for i in range(1, len(lines)):
        line = lines[i]
        body = line.lstrip(" \t")
        lead = line[:len(line) - len(body)]
        if not lead:
            continue
        if ctx.indent_unit == "\t":
            n = len(lead.expandtabs(4))
            lines[i] = "\t" * (n // 4) + " " * (n % 4) + body
        else:
            lines[i] = lead.expandtabs(len(ctx.indent_unit)) + body
    return "\n".join(lines)
