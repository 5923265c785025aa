"""Protocol conversion: the one module that knows how LSP counts characters.

LSP positions are (line, character) with `character` in UTF-16 code units by default, or UTF-8 /
UTF-32 units when negotiated. Everything else in `lsp_server` works on plain string offsets (code
points). This module turns positions into offsets and back (clamping anything out of range), and
turns suggestions and edits (offset spans plus text) into lsprotocol objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lsprotocol import types

from lsp_server.lineindex import LineIndex

__all__ = ["LineIndex", "UTF8", "UTF16", "UTF32", "ENCODINGS", "units", "column_to_index", "to_offset",
           "to_position", "to_range", "range_offsets", "negotiate_encoding", "inline_items", "completion_items",
           "workspace_edit", "apply_edits"]
UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
ENCODINGS = (UTF8, UTF16, UTF32)


def units(s: str, encoding: str) -> int:
    """Length of `s` in the code units of `encoding` (lone surrogates count as one UTF-16 unit)."""
    if encoding == UTF32 or s.isascii():
        return len(s)
    if encoding == UTF8:
        return len(s.encode("utf-8", "surrogatepass"))
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _char_units(ch: str, encoding: str) -> int:
    o = ord(ch)
    if encoding == UTF8:
        return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4
    return 2 if o > 0xFFFF else 1


def column_to_index(line: str, column: int, encoding: str) -> int:
    """Index into `line` (no EOL) of a column in code units; past the end clamps to the end and a
    column inside a multi-unit character (half a surrogate pair) rounds down to its start."""
    if column <= 0:
        return 0
    if encoding == UTF32 or line.isascii():
        return min(column, len(line))
    n = 0
    for i, ch in enumerate(line):
        if n >= column:
            return i
        n += _char_units(ch, encoding)
        if n > column:
            return i
    return len(line)


def to_offset(index: LineIndex, pos: types.Position, encoding: str) -> int:
    return index.offset(pos.line, pos.character, encoding)


def to_position(index: LineIndex, offset: int, encoding: str) -> types.Position:
    line, character = index.position(offset, encoding)
    return types.Position(line=line, character=character)


def to_range(index: LineIndex, start: int, end: int, encoding: str) -> types.Range:
    return types.Range(start=to_position(index, start, encoding), end=to_position(index, end, encoding))


def range_offsets(index: LineIndex, rng: types.Range, encoding: str) -> tuple[int, int]:
    """Offsets of a range, ordered (a reversed range is read as its mirror)."""
    a, b = to_offset(index, rng.start, encoding), to_offset(index, rng.end, encoding)
    return (a, b) if a <= b else (b, a)


def negotiate_encoding(offered: Sequence[str] | None) -> str:
    """The client's first offered encoding that we support; UTF-16 when none (the LSP default)."""
    for enc in offered or ():
        if str(enc) in ENCODINGS:
            return str(enc)
    return UTF16


def inline_items(index: LineIndex, spans: Iterable[tuple[int, int, str]],
                 encoding: str) -> types.InlineCompletionList:
    """Inline completion items from (start, end, insert_text) spans of the document."""
    items = [types.InlineCompletionItem(insert_text=text, range=to_range(index, s, e, encoding))
             for s, e, text in spans if text]
    return types.InlineCompletionList(items=items)


def completion_items(index: LineIndex, spans: Iterable[tuple[int, int, str]], encoding: str,
                     detail: str = "dlsp") -> types.CompletionList:
    """Completion items whose text edit replaces (start, end) with the text; the label is the first
    line of the text. `is_incomplete` makes clients ask again as the user types."""
    items = []
    for i, (s, e, text) in enumerate(spans):
        if not text.strip():
            continue
        label = text.strip().splitlines()[0][:80]
        items.append(types.CompletionItem(
            label=label, kind=types.CompletionItemKind.Text, detail=detail, sort_text=f"{i:04d}",
            insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=to_range(index, s, e, encoding), new_text=text)))
    return types.CompletionList(is_incomplete=True, items=items)


def workspace_edit(index: LineIndex, uri: str, version: int | None, edits: Iterable[tuple[int, int, str]],
                   encoding: str, document_changes: bool) -> types.WorkspaceEdit:
    """One WorkspaceEdit of (start, end, new_text) edits on one document. With `document_changes`
    the edit names the document version, so a client rejects it if the text moved on."""
    text_edits = [types.TextEdit(range=to_range(index, s, e, encoding), new_text=t) for s, e, t in edits]
    if document_changes:
        ident = types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version)
        return types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(text_document=ident, edits=text_edits)])
    return types.WorkspaceEdit(changes={uri: text_edits})


def apply_edits(text: str, edits: Iterable[tuple[int, int, str]]) -> str:
    """Apply non-overlapping (start, end, new_text) offset edits to a text."""
    out, pos = [], 0
    for s, e, t in sorted(edits, key=lambda x: (x[0], x[1])):
        out.append(text[pos:s])
        out.append(t)
        pos = e
    out.append(text[pos:])
    return "".join(out)
