"""The language server: thin pygls handlers over `lsp_server.service.Service`.

Each handler looks up what it needs, calls the service, and converts the answer with
`lsp_server.convert`. Model state changes arrive from the loading thread and are published on
the event loop (`dlsp/status`, work-done progress, `window/showMessage` on failure).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

from lsprotocol import types

from lsp_server import actions, convert
from lsp_server.errors import BadParams, lsp_errors
from lsp_server.model_host import Loader, ModelHost, default_loader
from lsp_server.protocol import DlspProtocol, HardenedServer
from lsp_server.service import Service
from lsp_server.settings import Settings

log = logging.getLogger(__name__)
STATUS, STATS = "dlsp/status", "dlsp/stats"
HEAVY_CHANGES, HEAVY_BYTES = 16, 1 << 16  # a didChange past either is applied off the loop
TITLES = {actions.REGENERATE: "Regenerate selection", actions.FILL_HOLES: "Fill holes",
          actions.COMPLETE_BODY: "Complete body"}
_tokens = itertools.count(1)


class ClientLogHandler(logging.Handler):
    """Forwards warnings of our own loggers to the client as `window/logMessage`."""

    LEVELS = {logging.ERROR: types.MessageType.Error, logging.WARNING: types.MessageType.Warning}

    def __init__(self, ls: DlspServer) -> None:
        super().__init__(logging.WARNING)
        self.ls = ls

    def emit(self, record: logging.LogRecord) -> None:
        loop = self.ls.loop
        if loop is None or loop.is_closed() or not record.name.startswith(("lsp_server", "engine")):
            return
        kind = self.LEVELS.get(record.levelno, types.MessageType.Error)
        params = types.LogMessageParams(type=kind, message=f"dlsp: {record.getMessage()}")
        loop.call_soon_threadsafe(self.ls.window_log_message, params)


def set_log_level(level: str) -> None:
    """Our loggers' level (the stderr handler is set up by `lsp_server.__main__`)."""
    if level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"):
        for name in ("lsp_server", "engine"):
            logging.getLogger(name).setLevel(level.upper())


class DlspServer(HardenedServer):
    def __init__(self, loader: Loader = default_loader, settings: Settings | None = None) -> None:
        super().__init__("dlsp", "0.1.0", protocol_cls=DlspProtocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.host = ModelHost(loader, on_change=self._model_changed)
        self.service = Service(self.host, settings)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._progress: str | None = None
        self._progress_lock: asyncio.Lock | None = None
        self.bind_warning: str | None = None  # shown to the client once it is initialized

    def close(self, timeout: float = 0.0) -> bool:
        """Stop model work and abandon loading; False if a load is still running after `timeout`."""
        self.service.close()
        return self.host.close(timeout)

    def offload(self, data: dict[str, Any], size: int) -> bool:
        """Take a heavy `didChange` (over `HEAVY_CHANGES` ranges or `HEAVY_BYTES`, or one for a
        document whose earlier change is still applying) off the event loop: its params are
        structured and applied on the documents thread, in order (`DocumentStore`). False: the
        message goes the usual way."""
        params = data.get("params")
        if data.get("method") != types.TEXT_DOCUMENT_DID_CHANGE or not isinstance(params, dict):
            return False
        doc, changes = params.get("textDocument"), params.get("contentChanges")
        uri = doc.get("uri") if isinstance(doc, dict) else None
        docs = self.service.docs
        if not isinstance(uri, str) or not (docs.busy(uri) or size > HEAVY_BYTES or
                                            isinstance(changes, list) and len(changes) > HEAVY_CHANGES):
            return False
        converter, encoding = self.converter, self.service.encoding

        def read() -> tuple[int | None, list] | None:
            # structured a slice at a time, pausing between slices (see `DocumentStore.PAUSE_S`)
            raw = changes if isinstance(changes, list) else [changes]
            out, version = [], None
            try:
                for k in range(0, max(1, len(raw)), docs.SLICE):
                    if k:
                        docs.pause()
                    p = converter.structure({**params, "contentChanges": raw[k:k + docs.SLICE]},
                                            types.DidChangeTextDocumentParams)
                    out += p.content_changes
                    version = p.text_document.version
            except Exception:
                log.info("invalid params for %s", types.TEXT_DOCUMENT_DID_CHANGE)
                return None
            return version, out

        docs.change_off_loop(uri, read, encoding)
        return True

    def client_supports(self, path: str) -> bool:
        node: Any = getattr(self.protocol, "client_capabilities", None)
        for part in path.split("."):
            node = getattr(node, part, None)
        return bool(node)

    def load_model(self) -> None:
        s = self.service.settings
        self.host.load(s.model_path, s.device)

    def _model_changed(self, status: dict[str, Any]) -> None:
        """Called from the loading thread: hop onto the event loop."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._publish(status)))

    async def _publish(self, status: dict[str, Any]) -> None:
        self.protocol.notify(STATUS, status)
        if status["state"] == "failed":
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error,
                                                             message=f"dlsp: {status['message']}"))
        if status["state"] == "ready":
            self.service.cache.clear()
        if self._progress_lock is None:
            self._progress_lock = asyncio.Lock()
        async with self._progress_lock:
            await self._report_progress(status)

    async def _report_progress(self, status: dict[str, Any]) -> None:
        progress = self.work_done_progress
        if status["state"] == "loading" and self.client_supports("window.work_done_progress"):
            token = f"dlsp-load-{next(_tokens)}"
            try:
                await asyncio.wait_for(progress.create_async(token), 10)
            except Exception:
                return
            self._progress = token
            progress.begin(token, types.WorkDoneProgressBegin(title="dlsp", message=status["message"]))
        elif status["state"] != "loading" and self._progress is not None:
            progress.end(self._progress, types.WorkDoneProgressEnd(message=status["message"]))
            self._progress = None


def create_server(loader: Loader = default_loader, settings: Settings | None = None) -> DlspServer:
    ls = DlspServer(loader, settings)
    logging.getLogger("lsp_server").addHandler(ClientLogHandler(ls))
    _register_lifecycle(ls)
    _register_features(ls)
    return ls


def _action_target(ls: DlspServer, args: tuple) -> tuple[str, types.Range]:
    """(uri, range) from command arguments: [{uri, range|position}] or [uri, range|position]."""
    if len(args) == 1 and isinstance(args[0], dict):
        d = args[0]
        uri = d.get("uri") or (d.get("textDocument") or {}).get("uri")
        where = d.get("range") or d.get("position")
    elif len(args) >= 2:
        uri, where = args[0], args[1]
    else:
        raise BadParams("expected [{uri, range}] or [uri, range]")
    if not isinstance(uri, str) or not isinstance(where, dict):
        raise BadParams("expected a document URI and a range or position")
    try:
        if "line" in where:
            pos = ls.converter.structure(where, types.Position)
            return uri, types.Range(start=pos, end=pos)
        return uri, ls.converter.structure(where, types.Range)
    except Exception:  # cattrs names the field in a structured exception; the client gets a line
        raise BadParams("malformed range or position") from None


async def _run_action(ls: DlspServer, name: str, args: tuple) -> dict[str, Any]:
    uri, rng = _action_target(ls, args)
    index, version, edits = await ls.service.edit(name, uri, rng)
    edit = convert.workspace_edit(index, uri, version, edits, ls.service.encoding,
                                  ls.client_supports("workspace.workspace_edit.document_changes"))
    applied = False
    if edits and ls.client_supports("workspace.apply_edit"):
        params = types.ApplyWorkspaceEditParams(edit=edit, label=f"dlsp: {TITLES[name]}")
        result = await asyncio.wait_for(ls.workspace_apply_edit_async(params), 60)
        applied = bool(getattr(result, "applied", False))
    return {"applied": applied, "edit": ls.converter.unstructure(edit)}


def _register_lifecycle(ls: DlspServer) -> None:
    @ls.feature(types.INITIALIZE)
    def initialize(ls: DlspServer, params: types.InitializeParams) -> None:
        ls.loop = asyncio.get_running_loop()
        general = params.capabilities.general
        ls.service.encoding = convert.negotiate_encoding(general.position_encodings if general else None)
        ls.service.configure(params.initialization_options)
        set_log_level(ls.service.settings.log_level)

    @ls.feature(types.INITIALIZED)
    def initialized(ls: DlspServer, params: types.InitializedParams) -> None:
        if ls.bind_warning:
            ls.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning,
                                                           message=f"dlsp: {ls.bind_warning}"))
        ls.load_model()

    @ls.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: DlspServer, params: types.DidOpenTextDocumentParams) -> None:
        d = params.text_document
        ls.service.docs.open(d.uri, d.language_id, d.version, d.text)

    @ls.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: DlspServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.service.did_change(params.text_document.uri, params.text_document.version, params.content_changes)

    @ls.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: DlspServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.service.did_close(params.text_document.uri)

    @ls.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: DlspServer, params: types.DidChangeConfigurationParams) -> None:
        raw = params.settings
        if raw is None and ls.client_supports("workspace.configuration"):  # pull-model clients
            items = [types.ConfigurationItem(section="dlsp")]
            pulled = await asyncio.wait_for(ls.workspace_configuration_async(types.ConfigurationParams(items=items)), 10)
            raw = pulled[0] if pulled else None
        if ls.service.configure(raw):
            ls.load_model()
        set_log_level(ls.service.settings.log_level)

    @ls.feature(STATS)
    def stats(ls: DlspServer, params: Any) -> dict[str, Any]:
        return ls.service.snapshot_stats()

    @ls.feature(types.SHUTDOWN)
    def shutdown(ls: DlspServer, params: Any) -> None:
        ls.close()


def _register_features(ls: DlspServer) -> None:
    @ls.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    @lsp_errors
    async def inline_completion(ls: DlspServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
        found = await ls.service.suggest(params.text_document.uri, params.position)
        return convert.inline_items(*found, ls.service.encoding) if found else types.InlineCompletionList(items=[])

    @ls.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", "[", " "]))
    @lsp_errors
    async def completion(ls: DlspServer, params: types.CompletionParams) -> types.CompletionList:
        found = await ls.service.complete_word(params.text_document.uri, params.position)
        if not found:
            return types.CompletionList(is_incomplete=True, items=[])
        return convert.completion_items(*found, ls.service.encoding)

    @ls.feature(types.TEXT_DOCUMENT_CODE_ACTION,
                types.CodeActionOptions(code_action_kinds=[types.CodeActionKind.RefactorRewrite]))
    @lsp_errors
    async def code_action(ls: DlspServer, params: types.CodeActionParams) -> list[types.CodeAction]:
        uri = params.text_document.uri
        arg = {"uri": uri, "range": ls.converter.unstructure(params.range)}
        return [types.CodeAction(title=f"dlsp: {TITLES[name]}", kind=types.CodeActionKind.RefactorRewrite,
                                 command=types.Command(title=TITLES[name], command=name, arguments=[arg]))
                for name in await ls.service.available_actions(uri, params.range)]

    for name in TITLES:
        ls.command(name)(_command_handler(name))


def _command_handler(name: str) -> Any:
    @lsp_errors
    async def run(ls: DlspServer, *args: Any) -> dict[str, Any]:
        return await _run_action(ls, name, args)

    run.__name__ = name.replace(".", "_")
    return run
