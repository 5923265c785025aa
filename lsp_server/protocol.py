"""pygls protocol and server classes for dlsp.

- Document sync is ours (`lsp_server.documents`): pygls's workspace copy is skipped, so there is
  one source of truth and one position codec (`lsp_server.convert`).
- Malformed input (framing, JSON, params, lifecycle) is answered in `lsp_server.transport`
  before it reaches pygls.
- Server errors are logged (with parameters redacted), not shown as pop-ups.
- The cattrs converter is made here and kept public (`converter`), so handlers never reach for
  the protocol's private one.
"""

from __future__ import annotations

import logging
from typing import Any

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, default_converter
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)


class DlspProtocol(LanguageServerProtocol):
    def _user(self, method: str, params: Any):
        if (handler := self.fm.features.get(method)) is not None:
            yield handler, (params,), None

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        yield from self._user(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        yield from self._user(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        yield from self._user(types.TEXT_DOCUMENT_DID_CLOSE, params)


class HardenedServer(LanguageServer):
    """A LanguageServer with a public converter that logs server errors without their text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.converter = default_converter()
        super().__init__(*args, converter_factory=lambda: self.converter, **kwargs)

    def report_server_error(self, error: Exception, source: Any) -> None:
        log.warning("server error (%s): %s", getattr(source, "__name__", source), type(error).__name__)


class RedactFilter(logging.Filter):
    """Drops the arguments of pygls's own log records (they can hold document text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pygls") and record.args:
            record.msg = f"{record.msg} [arguments redacted]"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True
