"""A parsed window of a document: tree-sitter nodes as absolute string offsets.

Tree-sitter counts UTF-8 bytes; everything here answers in code-point offsets of the whole
document (`base` is where the parsed window starts). Only a window around the cursor is parsed,
so a 5 MB file costs what a small one does.

Bounded in time (issue 12): py-tree-sitter holds the GIL for a whole parse, so text is fed to
the parser in chunks (each chunk lets other threads run), and a parse that passes the current
thread's `budget` stops early and counts as no parse (plain text); past the budget, node listings
find nothing. Parses are cached by their
exact window, so asking twice at one document version parses once. Walks to the root go down
from the root (py-tree-sitter's `parent` walks from the root on every call, which made
ancestor walks quadratic in nesting depth) and stop at `MAX_DEPTH`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lsp_server.languages import SPECS, LangSpec, parser_for

log = logging.getLogger(__name__)
_COMMENT_TYPES = ("comment", "line_comment", "block_comment")
_STRING_WORDS = ("string", "comment", "char_literal", "template")
MAX_DEPTH = 10_000  # ancestors walked at most
MAX_WALK_DEPTH = 512  # how deep `Syntax.nodes` looks for scopes, imports and comments
_CHUNK = 1024  # bytes handed to the parser per call (~0.5 ms of parsing between GIL hand-overs)
_CACHED = 16  # parses kept
_local = threading.local()
_cache: OrderedDict[tuple[str, int, str], Syntax] = OrderedDict()
_cache_lock = threading.Lock()


class OverBudget(Exception):
    """The thread's time budget for syntax work is spent."""


@contextmanager
def budget(seconds: float) -> Iterator[None]:
    """Parses in this thread stop (and count as none) once `seconds` have passed."""
    previous = getattr(_local, "deadline", math.inf)
    _local.deadline = min(previous, time.perf_counter() + seconds)
    try:
        yield
    finally:
        _local.deadline = previous


def over_budget() -> bool:
    return time.perf_counter() > getattr(_local, "deadline", math.inf)


def _parser(name: str) -> Any:
    """This thread's parser for a language (a parser must not be shared between threads)."""
    parsers = _local.__dict__.setdefault("parsers", {})
    if name not in parsers:
        import tree_sitter

        parsers[name] = tree_sitter.Parser(parser_for(name).language)
    return parsers[name]


def common_head(a: bytes, b: bytes) -> int:
    """Length of the common prefix of `a` and `b` (binary search over slice compares: each a
    memcmp, so ~16 of them for 40 KB instead of a Python loop per byte)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _point(data: bytes, offset: int) -> tuple[int, int]:
    return data.count(b"\n", 0, offset), offset - (data.rfind(b"\n", 0, offset) + 1)


def edited_tree(old_data: bytes, old_tree: Any, data: bytes) -> Any:
    """A copy of `old_tree` (the parse of `old_data`) told about the one edit that turns
    `old_data` into `data` (their common head and tail kept), for an incremental parse."""
    head = common_head(old_data, data)
    room = min(len(old_data), len(data)) - head
    tail = common_head(old_data[::-1][:room], data[::-1][:room])
    tree = old_tree.copy()
    tree.edit(start_byte=head, old_end_byte=len(old_data) - tail, new_end_byte=len(data) - tail,
              start_point=_point(data, head), old_end_point=_point(old_data, len(old_data) - tail),
              new_end_point=_point(data, len(data) - tail))
    return tree


def _parse(name: str, data: bytes, old_tree: Any = None) -> Any:
    """Parse `data`; with `old_tree` (already edited to match, see `edited_tree`) incrementally:
    only the edited region and what depends on it is re-parsed (~0.2 ms instead of ~4 for a
    keystroke in a 40 KB window)."""
    parser = _parser(name)
    if len(data) <= _CHUNK:
        return parser.parse(data) if old_tree is None else parser.parse(data, old_tree)
    stopped = False

    def read(offset: int, _point: Any) -> bytes:
        nonlocal stopped
        if over_budget():
            stopped = True
            return b""
        return data[offset:offset + _CHUNK]

    tree = parser.parse(read) if old_tree is None else parser.parse(read, old_tree)
    if stopped:
        raise OverBudget
    return tree


def _kinds(name: str, kind: str) -> frozenset[str]:
    """The scope/import/comment node types of one language."""
    spec = SPECS[name]
    return frozenset({"scopes": spec.scopes, "imports": spec.imports, "comments": _COMMENT_TYPES}[kind])


class Syntax:
    """The parse of `text` (a window of a document that starts at offset `base`)."""

    def __init__(self, text: str, base: int, spec: LangSpec, previous: Syntax | None = None) -> None:
        """`previous`: an earlier parse of the same window (same language and base) to parse
        from incrementally."""
        self.text, self.base, self.spec = text, base, spec
        self._data = text.encode("utf-8", "surrogatepass")
        self._ascii = len(self._data) == len(text)
        old = None if previous is None else edited_tree(previous._data, previous.tree, self._data)
        self.tree = _parse(spec.name, self._data, old)
        self._chains: dict[int, list[Any]] = {}

    @classmethod
    def parse(cls, text: str, base: int, spec: LangSpec | None) -> Syntax | None:
        """The parse of a window (cached), or None: no grammar, a parser problem, or the
        thread's budget is spent."""
        if spec is None or parser_for(spec.name) is None or over_budget():
            return None
        key = (spec.name, base, text)
        with _cache_lock:
            if key in _cache:
                _cache.move_to_end(key)
                return _cache[key]
            # the most recent parse of a window with the same language and start: typing edits
            # one place, so the new parse starts from that tree
            previous = next((v for k, v in reversed(_cache.items()) if k[0] == spec.name and k[1] == base), None)
        try:
            syntax = cls(text, base, spec, previous)
        except OverBudget:
            log.info("parse stopped: over its time budget (plain-text context)")
            return None
        except Exception as exc:  # never let a parser problem fail a request
            log.warning("parse failed (%s): %s", spec.name, type(exc).__name__)
            return None
        with _cache_lock:
            _cache[key] = syntax
            while len(_cache) > _CACHED:
                _cache.popitem(last=False)
        return syntax

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
        """Nodes of a kind ("scopes", "imports", "comments") overlapping [start, end), in
        document order, at most `MAX_WALK_DEPTH` deep (see `nodes_of`)."""
        return self.nodes_of((kind,), start, end)[kind]

    def nodes_of(self, kinds: tuple[str, ...], start: int | None = None,
                 end: int | None = None) -> dict[str, list[Any]]:
        """`nodes` for several kinds in one walk of the tree: kind -> nodes.

        A walk with a tree cursor, not a tree-sitter query: a query holds the GIL to its end
        and is quadratic over wide error nodes (32k unclosed "(": 0.75 s, during which the event
        loop could not answer anything); the walk is Python, so other threads run every switch
        interval, it skips subtrees outside the range, and it stops at the thread's budget
        (returning what it found so far)."""
        found: dict[str, list[Any]] = {k: [] for k in kinds}
        kind_of = {t: k for k in kinds for t in _kinds(self.spec.name, k)}
        if not kind_of or over_budget():
            return found
        lo = 0 if start is None else self.c2b(start)
        hi = len(self._data) + 1 if end is None else self.c2b(end)
        cursor, depth, seen = self.tree.walk(), 0, 0
        while True:
            node = cursor.node
            seen += 1
            if seen % 4096 == 0 and over_budget():
                break
            inside = node.end_byte > lo and node.start_byte < hi or node.start_byte == node.end_byte == lo
            if inside and node.is_named and node.type in kind_of:  # `(t)` in a query: named nodes
                found[kind_of[node.type]].append(node)
            if inside and depth < MAX_WALK_DEPTH and cursor.goto_first_child():
                depth += 1
                continue
            while not cursor.goto_next_sibling():
                if depth == 0 or not cursor.goto_parent():
                    return found
                depth -= 1
        return found

    def node_at(self, offset: int) -> Any:
        b = self.c2b(offset)
        return self.tree.root_node.descendant_for_byte_range(b, b)

    def ancestors(self, offset: int) -> list[Any]:
        """The node at `offset` and its ancestors up to the root, innermost first (in nesting
        deeper than `MAX_DEPTH`, the node and the outermost `MAX_DEPTH` ancestors)."""
        if offset in self._chains:
            return self._chains[offset]
        target = self.node_at(offset)
        chain, node = [self.tree.root_node], self.tree.root_node
        while node is not None and node != target and len(chain) < MAX_DEPTH:
            node = node.child_with_descendant(target)
            if node is not None:
                chain.append(node)
        if chain[-1] != target:  # the cap cut the walk: the innermost node still comes first
            chain.append(target)
        chain.reverse()
        if len(self._chains) > 64:
            self._chains.clear()
        self._chains[offset] = chain
        return chain

    def enclosing_scopes(self, offset: int, strict: bool = True) -> list[Any]:
        """Scope nodes around `offset`, innermost first (strict: offset is inside, not at an edge)."""
        out = []
        for n in self.ancestors(offset):
            s, e = self.span(n)
            if n.type in self.spec.scopes and (not strict or s < offset <= e):
                out.append(n)
        return out

    def in_comment_or_string(self, offset: int) -> bool:
        chain = self.ancestors(offset)
        for node in chain[:-1] if len(chain) > 1 and chain[-1] == self.tree.root_node else chain:
            if any(w in node.type for w in _STRING_WORDS):
                s, e = self.span(node)
                return s < offset < e or (node.type in _COMMENT_TYPES and s < offset)
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
