"""Open documents: text, version and language of each URI, kept in step with the client through
full or incremental `didChange` events. Positions are converted by `lsp_server.convert`; this
module never clamps or counts code units itself."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lsprotocol import types

from lsp_server.convert import UTF16, LineIndex, range_offsets


@dataclass
class Document:
    """One open document. `text` is replaced (never mutated) on change, so a reader that took
    (text, version) holds a consistent snapshot."""

    uri: str
    language_id: str
    version: int
    text: str
    _index: LineIndex | None = field(default=None, repr=False)

    @property
    def index(self) -> LineIndex:
        if self._index is None or self._index.text is not self.text:
            self._index = LineIndex(self.text)
        return self._index

    @property
    def name(self) -> str:
        return os.path.basename(self.uri.rstrip("/")) or self.uri

    def apply(self, change: object, encoding: str) -> None:
        """Apply one content change (a ranged partial change or a whole-text change)."""
        if isinstance(change, types.TextDocumentContentChangePartial):
            a, b = range_offsets(self.index, change.range, encoding)
            self.text = self.text[:a] + change.text + self.text[b:]
        else:
            self.text = change.text  # type: ignore[attr-defined]


class DocumentStore:
    """All open documents by URI."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def open(self, uri: str, language_id: str, version: int, text: str) -> Document:
        doc = Document(uri=uri, language_id=language_id or "", version=version, text=text)
        self._docs[uri] = doc
        return doc

    def change(self, uri: str, version: int | None, changes: list, encoding: str = UTF16) -> Document | None:
        """Apply changes in order; unknown URIs are ignored (returns None)."""
        doc = self._docs.get(uri)
        if doc is None:
            return None
        for change in changes:
            doc.apply(change, encoding)
        doc.version = version if version is not None else doc.version + 1
        return doc

    def close(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def others(self, uri: str) -> list[Document]:
        return [d for u, d in self._docs.items() if u != uri]

    def __len__(self) -> int:
        return len(self._docs)
