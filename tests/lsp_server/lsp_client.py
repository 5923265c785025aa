"""A minimal JSON-RPC client for end-to-end tests: spawns `python -m lsp_server` (or connects
over TCP), reads messages on a thread, answers the server's own requests (progress creation,
applyEdit, configuration) and lets tests wait for responses and notifications."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


class LspError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.error = error


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    return env


class LspClient:
    def __init__(self, reader: Any, writer: Any, proc: subprocess.Popen | None = None,
                 stderr_path: Path | None = None) -> None:
        self.reader, self.writer, self.proc, self.stderr_path = reader, writer, proc, stderr_path
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()
        self.responses: dict[Any, dict] = {}
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.apply_edit_ok = True
        self.configuration: Any = None
        self.closed = False
        threading.Thread(target=self._read_loop, daemon=True).start()

    @classmethod
    def spawn(cls, *args: str, stderr_path: Path) -> LspClient:
        err = open(stderr_path, "wb")
        proc = subprocess.Popen([sys.executable, "-m", "lsp_server", *args], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, env=server_env(), cwd=str(REPO))
        return cls(proc.stdout, proc.stdin, proc, stderr_path)

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
                    self.notifications.append(msg)
                else:
                    self.responses[msg.get("id")] = msg
                self._cond.notify_all()

    def _answer(self, msg: dict) -> None:
        method = msg["method"]
        if method == "workspace/applyEdit":
            result: Any = {"applied": self.apply_edit_ok}
        elif method == "workspace/configuration":
            result = [self.configuration for _ in msg.get("params", {}).get("items", [])]
        else:
            result = None
        self.send({"jsonrpc": "2.0", "id": msg["id"], "result": result})

    def send_raw(self, body: bytes) -> None:
        with self._write_lock:
            self.writer.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.writer.flush()

    def send(self, msg: dict) -> None:
        self.send_raw(json.dumps(msg).encode("utf-8"))

    # -- API --------------------------------------------------------------------------------
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

    def result(self, msg_id: Any, timeout: float = 60.0) -> Any:
        msg = self.wait(msg_id, timeout)
        if "error" in msg:
            raise LspError(msg["error"])
        return msg.get("result")

    def request(self, method: str, params: Any = None, timeout: float = 60.0) -> Any:
        return self.result(self.request_async(method, params), timeout)

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

    # -- LSP helpers ------------------------------------------------------------------------
    def initialize(self, options: dict | None = None, encodings: list[str] | None = None,
                   wait_ready: bool = True) -> dict:
        caps: dict[str, Any] = {
            "window": {"workDoneProgress": True},
            "workspace": {"applyEdit": True, "workspaceEdit": {"documentChanges": True}, "configuration": True},
            "textDocument": {"inlineCompletion": {}, "completion": {}, "codeAction": {}},
        }
        if encodings:
            caps["general"] = {"positionEncodings": encodings}
        result = self.request("initialize", {"processId": None, "rootUri": None, "capabilities": caps,
                                             "initializationOptions": options or {}})
        self.notify("initialized", {})
        if wait_ready:
            self.wait_notification("dlsp/status", lambda p: p["state"] in ("ready", "failed"), timeout=120)
        return result

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language,
                                                              "version": version, "text": text}})

    def change(self, uri: str, version: int, changes: list[dict]) -> None:
        self.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": version},
                                               "contentChanges": changes})

    def inline(self, uri: str, line: int, character: int, timeout: float = 60.0) -> Any:
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2}}, timeout)

    def close(self) -> None:
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

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""
