"""A reusable headless LSP client: spawns `dlsp serve` (as `python -m lsp_server`) over stdio or
connects over TCP, initializes, opens documents and scripts editor interactions.

It behaves like an editor where it matters for measurement: typing sends incremental
`didChange` events, superseded inline-completion requests are cancelled with `$/cancelRequest`,
and a server's `workspace/applyEdit` is applied to the open document and echoed back as a
`didChange` (so code actions round-trip the way they do in VS Code or Neovim).

Messages are read on a background thread; callers wait on responses and notifications.
Used by `dlsp demo`, `dlsp profile` and the end-to-end tests.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from editor_clients.headless.text import UTF16, TextDocument

REPO = Path(__file__).resolve().parents[2]
REQUEST_CANCELLED = -32800
CONTENT_MODIFIED = -32801


class LspError(Exception):
    """An error response from the server."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.error = error


def server_env(threads: int | None = 1) -> dict[str, str]:
    """Environment for a server that shares the machine politely (passive OpenMP waits)."""
    env = dict(os.environ)
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def server_command(model: str | None = None, device: str | None = None, *extra: str) -> list[str]:
    """The command line of `dlsp serve` run with this interpreter."""
    cmd = [sys.executable, "-m", "lsp_server"]
    if model:
        cmd += ["--model", str(model)]
    if device:
        cmd += ["--device", device]
    return cmd + list(extra)


class LspClient:
    """JSON-RPC over a byte stream pair, with the editor-side state of open documents."""

    def __init__(self, reader: BinaryIO, writer: BinaryIO, proc: subprocess.Popen | None = None,
                 stderr_path: Path | None = None) -> None:
        self.reader, self.writer, self.proc, self.stderr_path = reader, writer, proc, stderr_path
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self.responses: dict[Any, dict] = {}
        self.received_at: dict[Any, float] = {}  # response id -> time.perf_counter() on arrival
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.documents: dict[str, TextDocument] = {}
        self.encoding = UTF16
        self.apply_edit_ok = True  # answer workspace/applyEdit with applied=True and apply it
        self.configuration: Any = None  # answer to workspace/configuration items
        self.status: dict[str, Any] = {}  # last dlsp/status
        self.closed = False
        self.init_result: dict[str, Any] | None = None
        threading.Thread(target=self._read_loop, daemon=True, name="lsp-reader").start()

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def spawn(cls, *args: str, stderr_path: Path | None = None, cmd: list[str] | None = None,
              threads: int | None = 1, cwd: str | Path | None = None) -> LspClient:
        """Start a server process (default `python -m lsp_server ARGS`) and talk to it over stdio.
        The server's stderr (its log) goes to `stderr_path`, or is discarded."""
        err: Any = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(cmd or [*server_command(), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, env=server_env(threads), cwd=str(cwd or REPO))
        return cls(proc.stdout, proc.stdin, proc, stderr_path)

    @classmethod
    def connect(cls, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> LspClient:
        """Connect to a server started with `dlsp serve --tcp`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        sock.settimeout(None)
        client = cls(sock.makefile("rb"), sock.makefile("wb"))
        client._sock = sock  # type: ignore[attr-defined]
        return client

    # -- wire -------------------------------------------------------------------------------
    def _read_message(self) -> dict | None:
        length = None
        while True:
            line = self.reader.readline()
            if not line:
                return None
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.decode("ascii").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = self.reader.read(length or 0)
        return json.loads(body)

    def _read_loop(self) -> None:
        while True:
            try:
                msg = self._read_message()
            except (ValueError, OSError):
                msg = None
            if msg is None:
                with self._cond:
                    self.closed = True
                    self._cond.notify_all()
                return
            if "method" in msg and "id" in msg:
                self._answer(msg)
            with self._cond:
                if "method" in msg and "id" in msg:
                    self.server_requests.append(msg)
                elif "method" in msg:
                    if msg["method"] == "dlsp/status" and isinstance(msg.get("params"), dict):
                        self.status = msg["params"]
                    self.notifications.append(msg)
                else:
                    self.responses[msg.get("id")] = msg
                    self.received_at[msg.get("id")] = time.perf_counter()
                self._cond.notify_all()

    def _answer(self, msg: dict) -> None:
        method = msg["method"]
        if method == "workspace/applyEdit":
            applied = self.apply_edit_ok and self._apply_workspace_edit(msg.get("params", {}).get("edit") or {})
            result: Any = {"applied": applied}
        elif method == "workspace/configuration":
            result = [self.configuration for _ in msg.get("params", {}).get("items", [])]
        else:  # window/workDoneProgress/create, client/registerCapability, ...
            result = None
        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    def _apply_workspace_edit(self, edit: dict[str, Any]) -> bool:
        """Apply a WorkspaceEdit to open documents and tell the server (didChange), like an editor."""
        per_uri: list[tuple[str, list[dict]]] = list((edit.get("changes") or {}).items())
        for change in edit.get("documentChanges") or []:
            if "textDocument" in change:
                per_uri.append((change["textDocument"]["uri"], change.get("edits", [])))
        if not per_uri or any(uri not in self.documents for uri, _ in per_uri):
            return False
        for uri, edits in per_uri:
            doc = self.documents[uri]
            events = doc.apply_lsp_edits(edits)
            self.change(uri, doc.version, events)
        return True

    def send_raw(self, body: bytes) -> None:
        with self._write_lock:
            self.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.writer.flush()

    def send(self, msg: dict) -> None:
        self.send_raw(json.dumps(msg).encode("utf-8"))

    # -- requests ---------------------------------------------------------------------------
    def request_async(self, method: str, params: Any = None) -> int:
        msg_id = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return msg_id

    def wait(self, msg_id: Any, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while msg_id not in self.responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise TimeoutError(f"no response to {msg_id} ({'closed' if self.closed else 'timeout'})")
                self._cond.wait(left)
            return self.responses.pop(msg_id)

    def poll(self, msg_id: Any) -> dict | None:
        """The response to `msg_id` if it has arrived (removed from the inbox), else None."""
        with self._cond:
            return self.responses.pop(msg_id, None)

    def result(self, msg_id: Any, timeout: float = 60.0) -> Any:
        msg = self.wait(msg_id, timeout)
        if "error" in msg:
            raise LspError(msg["error"])
        return msg.get("result")

    def request(self, method: str, params: Any = None, timeout: float = 60.0) -> Any:
        return self.result(self.request_async(method, params), timeout)

    def cancel(self, msg_id: int) -> None:
        self.notify("$/cancelRequest", {"id": msg_id})

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def wait_notification(self, method: str, pred: Any = None, timeout: float = 60.0, start: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for msg in self.notifications[start:]:
                    if msg["method"] == method and (pred is None or pred(msg.get("params"))):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise TimeoutError(f"no {method} notification")
                self._cond.wait(left)

    # -- lifecycle --------------------------------------------------------------------------
    def initialize(self, options: dict | None = None, encodings: list[str] | None = None,
                   wait_ready: bool = True, timeout: float = 120.0) -> dict:
        """initialize + initialized; with `wait_ready`, wait until the model is loaded (or failed)."""
        caps: dict[str, Any] = {
            "window": {"workDoneProgress": True, "showMessage": {}},
            "workspace": {"applyEdit": True, "workspaceEdit": {"documentChanges": True}, "configuration": True},
            "textDocument": {"synchronization": {"dynamicRegistration": False}, "inlineCompletion": {},
                             "completion": {}, "codeAction": {}},
        }
        if encodings:
            caps["general"] = {"positionEncodings": encodings}
        result = self.request("initialize", {"processId": os.getpid(), "rootUri": None, "capabilities": caps,
                                             "initializationOptions": options or {}}, timeout=timeout)
        self.encoding = result.get("capabilities", {}).get("positionEncoding") or UTF16
        self.init_result = result
        self.notify("initialized", {})
        if wait_ready:
            self.wait_notification("dlsp/status", lambda p: p["state"] in ("ready", "failed"), timeout=timeout)
        return result

    def close(self) -> None:
        """shutdown + exit, then reap the process (killed if it does not exit in 10 s)."""
        try:
            if not self.closed:
                self.request("shutdown", None, timeout=10)
                self.notify("exit")
        except Exception:
            pass
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    def __enter__(self) -> LspClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    # -- documents --------------------------------------------------------------------------
    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> TextDocument:
        doc = TextDocument(uri, text, language, version, self.encoding)
        self.documents[uri] = doc
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})
        return doc

    def change(self, uri: str, version: int, changes: list[dict]) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": changes})

    def type(self, doc: TextDocument, at: int, text: str, replace_to: int | None = None) -> None:
        """Insert `text` at offset `at` (replacing up to `replace_to`) and send the incremental change."""
        event = doc.replace(at, at if replace_to is None else replace_to, text)
        self.change(doc.uri, doc.version, [event])

    def close_document(self, uri: str) -> None:
        self.documents.pop(uri, None)
        self.notify("textDocument/didClose", {"textDocument": {"uri": uri}})

    # -- features ---------------------------------------------------------------------------
    def inline_params(self, uri: str, line: int, character: int, trigger: int = 2) -> dict[str, Any]:
        return {"textDocument": {"uri": uri}, "position": {"line": line, "character": character},
                "context": {"triggerKind": trigger}}

    def inline(self, uri: str, line: int, character: int, timeout: float = 60.0) -> Any:
        return self.request("textDocument/inlineCompletion", self.inline_params(uri, line, character), timeout)

    def inline_at(self, doc: TextDocument, at: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Inline completion items at an offset of an open document (explicit trigger)."""
        pos = doc.position(at)
        result = self.inline(doc.uri, pos["line"], pos["character"], timeout)
        return (result or {}).get("items", []) if isinstance(result, dict) else (result or [])

    def code_actions(self, doc: TextDocument, start: int, end: int | None = None) -> list[dict[str, Any]]:
        rng = {"start": doc.position(start), "end": doc.position(start if end is None else end)}
        return self.request("textDocument/codeAction", {"textDocument": {"uri": doc.uri}, "range": rng,
                                                         "context": {"diagnostics": []}}) or []

    def run_action(self, action: dict[str, Any], timeout: float = 120.0) -> Any:
        """Execute a code action's command (the server answers with workspace/applyEdit first)."""
        cmd = action.get("command") or {}
        return self.request("workspace/executeCommand", {"command": cmd["command"],
                                                          "arguments": cmd.get("arguments", [])}, timeout)

    def stats(self) -> dict[str, Any]:
        return self.request("dlsp/stats", None) or {}
