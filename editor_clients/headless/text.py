"""The client's copy of an open document: text, version, and LSP positions in the negotiated
encoding. It turns offset edits into incremental `didChange` events and applies the server's
`TextEdit`s, the way an editor buffer would.

Offsets are Python string indices (code points). Lines end at \\n, \\r\\n or \\r, as in LSP.
Knows nothing about transport; `editor_clients.headless.client` sends what this builds.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
_EOL = re.compile(r"\r\n|\r|\n")


def units(s: str, encoding: str) -> int:
    """Length of `s` in code units of a position encoding."""
    if encoding == UTF32 or s.isascii():
        return len(s)
    if encoding == UTF8:
        return len(s.encode("utf-8", "surrogatepass"))
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in _EOL.finditer(text)]


def position(text: str, offset: int, encoding: str = UTF16) -> dict[str, int]:
    """The LSP position `{line, character}` of an offset (clamped into the text)."""
    offset = max(0, min(offset, len(text)))
    starts = _line_starts(text)
    line = bisect_right(starts, offset) - 1
    return {"line": line, "character": units(text[starts[line]:offset], encoding)}


def offset(text: str, pos: dict[str, int], encoding: str = UTF16) -> int:
    """The offset of an LSP position (clamped to its line and to the text)."""
    starts = _line_starts(text)
    line, column = int(pos["line"]), int(pos["character"])
    if line < 0:
        return 0
    if line >= len(starts):
        return len(text)
    start = starts[line]
    end = starts[line + 1] if line + 1 < len(starts) else len(text)
    while end > start and text[end - 1] in "\r\n":
        end -= 1
    n = 0
    for i in range(start, end):
        if n >= column:
            return i
        n += units(text[i], encoding)
        if n > column:  # inside a multi-unit character: round down to its start
            return i
    return end


def apply_text_edits(text: str, edits: list[dict[str, Any]], encoding: str = UTF16) -> str:
    """Apply LSP `TextEdit`s (non-overlapping, positions relative to `text`)."""
    spans = sorted(((offset(text, e["range"]["start"], encoding), offset(text, e["range"]["end"], encoding),
                     e["newText"]) for e in edits), key=lambda s: (s[0], s[1]))
    out, pos = [], 0
    for a, b, new in spans:
        out += [text[pos:a], new]
        pos = b
    out.append(text[pos:])
    return "".join(out)


@dataclass
class TextDocument:
    """An open document as the client sees it. Thread-safe: the reader thread may apply a
    server's `workspace/applyEdit` while the main thread types."""

    uri: str
    text: str
    language_id: str = "python"
    version: int = 1
    encoding: str = UTF16
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def position(self, at: int) -> dict[str, int]:
        return position(self.text, at, self.encoding)

    def offset(self, pos: dict[str, int]) -> int:
        return offset(self.text, pos, self.encoding)

    def replace(self, start: int, end: int, new_text: str) -> dict[str, Any]:
        """Replace text[start:end]; returns the incremental change event (range in the old text)
        and bumps the version."""
        with self._lock:
            event = {"range": {"start": self.position(start), "end": self.position(end)}, "text": new_text}
            self.text = self.text[:start] + new_text + self.text[end:]
            self.version += 1
            return event

    def apply_lsp_edits(self, edits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply server `TextEdit`s; returns the equivalent change events (last edit first, so
        that each range is valid when the server applies the events in order)."""
        with self._lock:
            spans = sorted(((self.offset(e["range"]["start"]), self.offset(e["range"]["end"]), e["newText"])
                            for e in edits), key=lambda s: (s[0], s[1]), reverse=True)
            events = []
            for a, b, new in spans:
                events.append({"range": {"start": self.position(a), "end": self.position(b)}, "text": new})
                self.text = self.text[:a] + new + self.text[b:]
            self.version += 1
            return events
