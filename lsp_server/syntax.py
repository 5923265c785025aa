"""A parsed window of a document: tree-sitter nodes as absolute string offsets.

Tree-sitter counts UTF-8 bytes; everything here answers in code-point offsets of the whole
document (`base` is where the parsed window starts). Only a window around the cursor is parsed,
so a 5 MB file costs what a small one does.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from lsp_server.languages import SPECS, LangSpec, parser_for

log = logging.getLogger(__name__)
_COMMENT_TYPES = ("comment", "line_comment", "block_comment")
_STRING_WORDS = ("string", "comment", "char_literal", "template")


@cache
def _query(name: str, kind: str) -> Any | None:
    """A compiled query capturing the scope/import/comment node types of one language."""
    import tree_sitter

    spec = SPECS[name]
    types = {"scopes": spec.scopes, "imports": spec.imports, "comments": _COMMENT_TYPES}[kind]
    language = parser_for(name).language
    patterns = []
    for t in sorted(types):
        try:  # a node type a grammar does not have is skipped, not fatal
            tree_sitter.Query(language, f"({t}) @n")
            patterns.append(f"({t}) @n")
        except Exception:
            continue
    return tree_sitter.Query(language, " ".join(patterns)) if patterns else None


class Syntax:
    """The parse of `text` (a window of a document that starts at offset `base`)."""

    def __init__(self, text: str, base: int, spec: LangSpec) -> None:
        self.text, self.base, self.spec = text, base, spec
        self._data = text.encode("utf-8", "surrogatepass")
        self._ascii = len(self._data) == len(text)
        self.tree = parser_for(spec.name).parse(self._data)

    @classmethod
    def parse(cls, text: str, base: int, spec: LangSpec | None) -> Syntax | None:
        if spec is None or parser_for(spec.name) is None:
            return None
        try:
            return cls(text, base, spec)
        except Exception as exc:  # never let a parser problem fail a request
            log.warning("parse failed (%s): %s", spec.name, type(exc).__name__)
            return None

    # -- offsets ---------------------------------------------------------------------------
    def c2b(self, offset: int) -> int:
        rel = max(0, min(offset - self.base, len(self.text)))
        return rel if self._ascii else len(self.text[:rel].encode("utf-8", "surrogatepass"))

    def b2c(self, b: int) -> int:
        if self._ascii:
            return self.base + b
        return self.base + len(self._data[:b].decode("utf-8", "replace"))

    def span(self, node: Any) -> tuple[int, int]:
        return self.b2c(node.start_byte), self.b2c(node.end_byte)

    # -- queries ---------------------------------------------------------------------------
    def nodes(self, kind: str, start: int | None = None, end: int | None = None) -> list[Any]:
        """Nodes of a kind ("scopes", "imports", "comments") overlapping [start, end)."""
        import tree_sitter

        query = _query(self.spec.name, kind)
        if query is None:
            return []
        cursor = tree_sitter.QueryCursor(query)
        if start is not None and end is not None:
            cursor.set_byte_range(self.c2b(start), self.c2b(end))
        found = cursor.captures(self.tree.root_node).get("n", [])
        return sorted(found, key=lambda n: n.start_byte)

    def node_at(self, offset: int) -> Any:
        b = self.c2b(offset)
        return self.tree.root_node.descendant_for_byte_range(b, b)

    def ancestors(self, offset: int) -> list[Any]:
        """Innermost first."""
        out, node = [], self.node_at(offset)
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def enclosing_scopes(self, offset: int, strict: bool = True) -> list[Any]:
        """Scope nodes around `offset`, innermost first (strict: offset is inside, not at an edge)."""
        out = []
        for n in self.ancestors(offset):
            s, e = self.span(n)
            if n.type in self.spec.scopes and (not strict or s < offset <= e):
                out.append(n)
        return out

    def in_comment_or_string(self, offset: int) -> bool:
        node = self.node_at(offset)
        while node is not None and node.parent is not None:
            if any(w in node.type for w in _STRING_WORDS):
                s, e = self.span(node)
                return s < offset < e or (node.type in _COMMENT_TYPES and s < offset)
            node = node.parent
        return False

    def header_end(self, node: Any) -> int:
        """Offset where a definition's header ends: the end of what precedes its body."""
        body = node.child_by_field_name("body")
        if body is None or body.prev_sibling is None:
            return self.span(node)[1]
        return self.b2c(body.prev_sibling.end_byte)


def line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def line_end(text: str, offset: int) -> int:
    """Offset just past the newline of the line holding `offset` (or the end of the text)."""
    i = text.find("\n", offset)
    return len(text) if i < 0 else i + 1
