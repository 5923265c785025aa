"""Open documents: text, version and language of each URI, kept in step with the client through
full or incremental `didChange` events. Positions are converted by `lsp_server.convert`; this
module never clamps or counts code units itself.

A document's text lives in its `LineIndex` (`lsp_server.lineindex`): a ranged change costs the
few chunks it touches, and the whole text is joined only when read, once per version."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lsprotocol import types

from lsp_server.convert import UTF16, LineIndex, range_offsets
from lsp_server.lineindex import Editor

log = logging.getLogger(__name__)


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

    def apply_all(self, changes: list, encoding: str, pause: Callable[[], None] | None = None) -> None:
        """Apply content changes in order, each against the text the previous ones left; a run
        of ranged changes is one batch over the index (`lsp_server.lineindex.Editor`).
        `pause()` is called between slices of `DocumentStore.SLICE` changes."""
        editor: Editor | None = None
        for k, change in enumerate(changes):
            if pause is not None and k and k % DocumentStore.SLICE == 0:
                pause()
            if isinstance(change, types.TextDocumentContentChangePartial):
                editor = editor or Editor(self.index)
                a, b = range_offsets(editor, change.range, encoding)  # type: ignore[arg-type]
                editor.edit(a, b, change.text)
            else:  # the whole text: what came before it no longer matters
                editor = None
                self.index = LineIndex(change.text)  # type: ignore[attr-defined]
        if editor is not None:
            self.index = editor.index()

    def __repr__(self) -> str:
        return f"Document({self.uri!r}, {self.language_id!r}, v{self.version}, {len(self.index)} chars)"


class DocumentStore:
    """All open documents by URI.

    A heavy change (a `didChange` with many ranges, or a large one) is applied on a documents
    thread so that the event loop keeps answering (issue 12: 300 ranges of a 5 MB file held it
    ~20 ms). Until it is applied the document is `busy`: later opens, changes and closes of it
    queue behind it in order, and readers `await settled(uri)` before they look.
    """

    SLICE = 32  # ranged changes applied between two pauses on the documents thread
    PAUSE_S = 0.0005  # a pause: the GIL is free for the event loop (see `pause`)

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}
        self._pending: dict[str, asyncio.Future] = {}  # uri -> its last queued mutation
        self._thread: ThreadPoolExecutor | None = None

    def open(self, uri: str, language_id: str, version: int, text: str) -> None:
        doc = Document(uri=uri, language_id=language_id or "", version=version, text=text)
        self._mutate(uri, lambda: self._docs.__setitem__(uri, doc))

    def change(self, uri: str, version: int | None, changes: list, encoding: str = UTF16) -> bool:
        """Apply changes in order; False for a URI that is not open (ignored)."""
        if self.busy(uri):
            self._queue(uri, lambda: self._change(uri, version, changes, encoding))
            return True
        return self._change(uri, version, changes, encoding)

    def change_off_loop(self, uri: str, read: Callable[[], tuple[int | None, list] | None],
                        encoding: str = UTF16) -> None:
        """`read()` (the change's params, parsed on the documents thread; None if malformed)
        applied there, after every earlier queued mutation of `uri`."""
        def work() -> None:
            found = read()
            if found is not None and not self._change(uri, *found, encoding, self.pause):
                log.info("change for a document that is not open (ignored)")

        self._queue(uri, work)

    @classmethod
    def pause(cls) -> None:
        """Sleep briefly on the documents thread. Holding the GIL it would make the loop wait a
        switch interval for every hand-over (reading, dispatching and writing a reply take
        several): ~2.5 ms per unrelated request while 300 ranges apply; pausing every slice
        leaves the loop free windows."""
        time.sleep(cls.PAUSE_S)

    def _change(self, uri: str, version: int | None, changes: list, encoding: str,
                pause: Callable[[], None] | None = None) -> bool:
        doc = self._docs.get(uri)
        if doc is None:
            return False
        doc.apply_all(changes, encoding, pause)
        doc.version = version if version is not None else doc.version + 1
        return True

    def close(self, uri: str) -> None:
        self._mutate(uri, lambda: self._docs.pop(uri, None))

    # -- mutations off the loop ------------------------------------------------------------
    def busy(self, uri: str) -> bool:
        """A queued mutation of `uri` has not finished."""
        fut = self._pending.get(uri)
        return fut is not None and not fut.done()

    async def settled(self, uri: str) -> None:
        """Wait until every queued mutation of `uri` is applied."""
        while (fut := self._pending.get(uri)) is not None:
            if not fut.done():
                await asyncio.wait({fut})
            if self._pending.get(uri) is fut:
                del self._pending[uri]

    def _mutate(self, uri: str, work: Callable[[], Any]) -> None:
        """`work()` now, or queued behind the document's pending mutations."""
        if self.busy(uri):
            self._queue(uri, work)
        else:
            work()

    def _queue(self, uri: str, work: Callable[[], Any]) -> None:
        """Run `work` on the documents thread (one thread: mutations apply in the order queued).
        Called on the event loop."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlsp-docs")
        fut = asyncio.wrap_future(self._thread.submit(work))
        self._pending[uri] = fut

        def done(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.warning("document change failed: %s", type(f.exception()).__name__)
            if self._pending.get(uri) is f:
                del self._pending[uri]

        fut.add_done_callback(done)

    def shutdown(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)

    def get(self, uri: str) -> Document | None:
        return self._docs.get(uri)

    def others(self, uri: str) -> list[Document]:
        """Snapshots of the other open documents."""
        return [d.snapshot() for u, d in self._docs.items() if u != uri]

    def __len__(self) -> int:
        return len(self._docs)
