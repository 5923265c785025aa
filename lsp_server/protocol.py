"""pygls protocol and server classes hardened for editors that send odd input.

- Document sync is ours (`lsp_server.documents`): pygls's workspace copy is skipped, so there is
  one source of truth and one position codec (`lsp_server.convert`).
- A request whose params do not fit the LSP types gets an InvalidParams error instead of silence;
  invalid JSON gets a ParseError response (id null); non-message JSON gets InvalidRequest.
- Server errors are logged (with parameters redacted), not shown as pop-ups.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import attrs
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams, JsonRpcInvalidRequest, JsonRpcParseError
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.language_server import lsp_method

log = logging.getLogger(__name__)


@attrs.define
class _Ignored:
    """Stands for a message already answered with an error; `handle_message` drops it."""

    jsonrpc: str = "ignored"
    method: str = ""


def _error_message(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


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

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException:
            if isinstance(data, dict) and "id" in data and "method" in data:
                method = str(data.get("method"))[:100]
                log.info("invalid params for %s", method)
                self._send_data(_error_message(data["id"], JsonRpcInvalidParams.CODE, f"invalid params for {method}"))
            else:
                log.info("dropping a notification with invalid params")
            return _Ignored()

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Ignored):
            return
        if not hasattr(message, "jsonrpc"):  # valid JSON that is not a JSON-RPC 2.0 message
            msg_id = message.get("id") if isinstance(message, dict) else None
            self._send_data(_error_message(msg_id, JsonRpcInvalidRequest.CODE, "not a JSON-RPC 2.0 message"))
            return
        super().handle_message(message)


class HardenedServer(LanguageServer):
    """A LanguageServer that answers malformed input with errors and keeps serving."""

    def report_server_error(self, error: Exception, source: Any) -> None:
        if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
            self.protocol._send_data(_error_message(None, JsonRpcParseError.CODE, "parse error"))
            return
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
