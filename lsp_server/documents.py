"""Open documents: text, version and language of each URI, kept in step with the client through
full or incremental `didChange` events. Positions are converted by `lsp_server.convert`; this
module never clamps or counts code units itself.

A document's text lives in its `LineIndex` (`lsp_server.lineindex`): a ranged change costs the
few chunks it touches, and the whole text is joined only when read, once per version."""

from __future__ import annotations

import os

from lsprotocol import types

from lsp_server.convert import UTF16, LineIndex, range_offsets


class Document:
    """One open document. Its index (and text) is replaced, never mutated, on change, so a
    reader that took (text, version) or (index, version) holds a consistent snapshot."""

    def __init__(self, uri: str, language_id: str, version: int, text: str = "",
                 index: LineIndex | None = None) -> None:
        self.uri, self.language_id, self.version = uri, language_id, version
        self.index = index if index is not None else LineIndex(text)

    @property
    def text(self) -> str:
        return self.index.text

    @property
    def name(self) -> str:
        return os.path.basename(self.uri.rstrip("/")) or self.uri

    def snapshot(self) -> Document:
        """A copy that later changes do not touch (for work off the event loop)."""
        return Document(self.uri, self.language_id, self.version, index=self.index)

    def apply(self, change: object, encoding: str) -> None:
        """Apply one content change (a ranged partial change or a whole-text change)."""
        if isinstance(change, types.TextDocumentContentChangePartial):
            a, b = range_offsets(self.index, change.range, encoding)
            self.index = self.index.edited(a, b, change.text)
        else:
            self.index = LineIndex(change.text)  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"Document({self.uri!r}, {self.language_id!r}, v{self.version}, {len(self.index)} chars)"


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
        """Snapshots of the other open documents."""
        return [d.snapshot() for u, d in self._docs.items() if u != uri]

    def __len__(self) -> int:
        return len(self._docs)
