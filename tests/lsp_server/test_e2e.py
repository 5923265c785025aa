"""End to end over stdio: the real server, a tiny real model, a real JSON-RPC client."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from lsp_server.convert import UTF8, LineIndex, apply_edits
from tests.lsp_server.lsp_client import REPO, LspClient, LspError, server_env

pytestmark = pytest.mark.e2e
SECRET = "zebra_secret_identifier_42"
SRC = f"""import os

def add(a, b):
    {SECRET} = a
    return{" "}

class Point:
    def __init__(self, x, y):
        # TODO store the coordinates
        pass

    def norm(self):
        ...
"""
URI = "file:///w/point.py"


def _apply(text: str, edit: dict, encoding: str = "utf-16") -> str:
    """Apply a WorkspaceEdit (documentChanges form) to a text, client-side."""
    index = LineIndex(text)
    edits = []
    for doc in edit["documentChanges"]:
        for e in doc["edits"]:
            r = e["range"]
            a = index.offset(r["start"]["line"], r["start"]["character"], encoding)
            b = index.offset(r["end"]["line"], r["end"]["character"], encoding)
            edits.append((a, b, e["newText"]))
    return apply_edits(text, edits)


def _action(client, command, line, character, end=None):
    start = {"line": line, "character": character}
    rng = {"start": start, "end": end or start}
    before = len(client.server_requests)
    result = client.request("workspace/executeCommand", {"command": command, "arguments": [{"uri": URI, "range": rng}]})
    sent = [m for m in client.server_requests[before:] if m["method"] == "workspace/applyEdit"]
    return result, sent


def test_initialize_capabilities_status_and_progress(server):
    caps = server.init_result["capabilities"]
    assert caps["positionEncoding"] == "utf-16"
    assert caps["textDocumentSync"]["change"] == 2
    assert "inlineCompletionProvider" in caps and "completionProvider" in caps
    assert set(caps["executeCommandProvider"]["commands"]) == {
        "dlsp.regenerateSelection", "dlsp.fillHoles", "dlsp.completeBody"}
    # the progress messages travel beside the initialize answer: wait for them, never race them
    server.wait_notification("$/progress", lambda p: p["value"]["kind"] == "end", timeout=30)
    kinds = [n["params"]["value"]["kind"] for n in server.notifications if n["method"] == "$/progress"]
    assert kinds[0] == "begin"
    status = server.wait_notification("dlsp/status", lambda p: p["state"] == "ready")["params"]
    assert status["device"] == "cpu" and status["model"]


def test_inline_completion_and_completion(server):
    server.open(URI, SRC)
    items = server.inline(URI, 4, 11)["items"]
    assert len(items) <= 1
    for item in items:
        assert item["range"] == {"start": {"line": 4, "character": 11}, "end": {"line": 4, "character": 11}}
        assert item["insertText"] and "\n" not in item["insertText"]  # "return |" asks for one line
    again = server.inline(URI, 4, 11)["items"]
    assert again == items
    stats = server.request("dlsp/stats")
    assert stats["requests"]["cached"] >= 1 and stats["state"] == "ready"
    assert stats["model"]["vocab_size"] > 0
    assert {"context", "tokenize", "prefill", "steps", "postprocess", "total"} <= set(stats["stages"])
    assert all(v["p50_ms"] <= v["p95_ms"] for v in stats["stages"].values())
    result = server.request("textDocument/completion", {"textDocument": {"uri": URI},
                                                        "position": {"line": 3, "character": 10}})
    assert result["isIncomplete"] is True
    for item in result["items"]:
        r = item["textEdit"]["range"]
        assert r["end"] == {"line": 3, "character": 10} and r["start"]["line"] == 3
        assert item["textEdit"]["newText"].startswith(SRC.splitlines()[3][r["start"]["character"]:10])


def test_code_actions_apply_expected_shapes(server):
    server.open(URI, SRC, version=1)
    listed = server.request("textDocument/codeAction", {
        "textDocument": {"uri": URI}, "context": {"diagnostics": []},
        "range": {"start": {"line": 9, "character": 8}, "end": {"line": 9, "character": 12}}})
    assert {a["command"]["command"] for a in listed} == {
        "dlsp.regenerateSelection", "dlsp.fillHoles", "dlsp.completeBody"}

    with pytest.raises(LspError) as empty:  # nothing selected: nothing to regenerate
        _action(server, "dlsp.regenerateSelection", 4, 11, {"line": 4, "character": 11})
    assert empty.value.code == -32602
    result, sent = _action(server, "dlsp.regenerateSelection", 3, 4, {"line": 3, "character": 30})
    assert sent and sent[0]["params"]["edit"] == result["edit"] and result["applied"] is True
    new = _apply(SRC, result["edit"])
    lines = SRC.splitlines(True)
    assert new.startswith("".join(lines[:3]) + "    ") and new.endswith("".join(lines[4:]))

    result, sent = _action(server, "dlsp.fillHoles", 9, 8)
    new = _apply(SRC, result["edit"])
    edits = result["edit"]["documentChanges"][0]["edits"]
    assert len(edits) <= 2 and {e["range"]["start"]["line"] for e in edits} <= {8, 9}
    assert new.startswith(SRC[:SRC.index("        # TODO")]) and new.endswith("    def norm(self):\n        ...\n")
    if len(edits) == 2:
        assert "# TODO store" not in new and "        pass\n" not in new

    result, sent = _action(server, "dlsp.completeBody", 12, 10)
    new = _apply(SRC, result["edit"])
    assert new.startswith(SRC[:SRC.index("    def norm(self):") + len("    def norm(self):")])
    assert new.count("def ") == SRC.count("def ") or SECRET in new


def test_typing_burst_with_cancellations_leaves_no_backlog(server):
    uri = "file:///w/burst.py"
    text = "def f(x):\n    return "
    server.open(uri, text)
    ids = []
    for i in range(300):
        server.change(uri, i + 2, [{"range": {"start": {"line": 1, "character": 11 + i},
                                              "end": {"line": 1, "character": 11 + i}}, "text": "x"}])
        ids.append(server.request_async("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 1, "character": 12 + i}, "context": {"triggerKind": 2}}))
        if i % 3:
            server.notify("$/cancelRequest", {"id": ids[-2]})
    t0 = time.monotonic()
    last = server.wait(ids[-1], timeout=60)
    assert time.monotonic() - t0 < 60 and "result" in last
    answered = [server.wait(i, timeout=60) for i in ids[:-1]]
    assert all("result" in m or m["error"]["code"] == -32800 for m in answered)
    stats = server.request("dlsp/stats")["requests"]
    assert stats["cancelled"] + stats["dropped"] >= 100
    assert server.inline(uri, 1, 11 + 300) is not None


def test_malformed_input_gets_errors_and_server_keeps_serving(server):
    server.open(URI, SRC)
    assert server.inline("file:///nowhere.py", 0, 0) == {"items": []}
    assert "items" in server.inline(URI, 10_000, 10_000)
    assert "items" in server.inline(URI, 2, 10_000)
    with pytest.raises(LspError) as bad:
        server.request("textDocument/inlineCompletion", {"textDocument": {"uri": URI},
                                                         "position": {"line": "three", "character": None}})
    assert bad.value.code == -32602
    with pytest.raises(LspError) as bad:
        server.request("textDocument/completion", {"textDocument": 7})
    assert bad.value.code == -32602
    with pytest.raises(LspError) as bad:
        server.request("workspace/executeCommand", {"command": "dlsp.fillHoles", "arguments": [42]})
    assert bad.value.code == -32602
    with pytest.raises(LspError) as bad:
        server.request("workspace/executeCommand", {"command": "dlsp.fillHoles",
                                                    "arguments": [{"uri": "file:///nowhere.py", "position": {"line": 0, "character": 0}}]})
    assert bad.value.code == -32602
    with pytest.raises(LspError) as bad:
        server.request("dlsp/noSuchMethod", {})
    assert bad.value.code == -32601
    server.notify("textDocument/didChange", {"textDocument": {"uri": URI}, "contentChanges": "garbage"})
    server.send_raw(b"{this is not json")
    assert server.wait(None, timeout=30)["error"]["code"] == -32700
    server.send_raw(b"[1, 2, 3]")
    assert server.wait(None, timeout=30)["error"]["code"] == -32600
    server.send({"id": "no-version", "method": "textDocument/completion"})
    assert server.wait("no-version", timeout=30)["error"]["code"] == -32600
    server.send_raw(b"\xff\xfe\x00garbage")
    assert server.wait(None, timeout=30)["error"]["code"] == -32700
    assert "items" in server.inline(URI, 4, 11)
    assert server.request("dlsp/stats")["state"] == "ready"


def test_huge_binary_and_unknown_language_documents(server):
    huge = ("def f(x):\n    return x + 1\n\n" * 200_000)[:5_000_000]
    server.open("file:///w/huge.py", huge)
    index = LineIndex(huge)
    end = index.position(len(huge))
    assert "items" in server.inline("file:///w/huge.py", *end, timeout=120)
    assert "items" in server.inline("file:///w/huge.py", 100_000, 8, timeout=120)
    server.change("file:///w/huge.py", 2, [{"range": {"start": {"line": 5, "character": 0},
                                                      "end": {"line": 5, "character": 0}}, "text": "y = "}])
    assert "items" in server.inline("file:///w/huge.py", 5, 4, timeout=120)
    server.notify("textDocument/didClose", {"textDocument": {"uri": "file:///w/huge.py"}})
    binary = "".join(chr(c) for c in range(0, 32)) + "\ufffd\U0001F600\x7f" * 50
    server.open("file:///w/blob.bin", binary, language="python")
    assert "items" in server.inline("file:///w/blob.bin", 0, 40)
    server.open("file:///w/prog.cob", "IDENTIFICATION DIVISION.\nPROGRAM-ID. ", language="cobol")
    assert "items" in server.inline("file:///w/prog.cob", 1, 12)
    assert server.request("textDocument/codeAction", {
        "textDocument": {"uri": "file:///w/prog.cob"}, "context": {"diagnostics": []},
        "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 5}}})


def test_configuration_enabled_languages(server):
    server.open(URI, SRC)
    server.notify("workspace/didChangeConfiguration", {"settings": {"dlsp": {"enabledLanguages": ["rust"]}}})
    assert server.inline(URI, 4, 11) == {"items": []}
    assert server.request("textDocument/codeAction", {
        "textDocument": {"uri": URI}, "context": {"diagnostics": []},
        "range": {"start": {"line": 9, "character": 8}, "end": {"line": 9, "character": 12}}}) == []
    server.configuration = {"enabledLanguages": []}  # pull-model: settings null, server asks
    before = len(server.server_requests)
    server.notify("workspace/didChangeConfiguration", {"settings": None})
    assert "items" in server.inline(URI, 4, 11)
    asked = [m for m in server.server_requests[before:] if m["method"] == "workspace/configuration"]
    assert asked and asked[0]["params"]["items"] == [{"section": "dlsp"}]
    # the pulled settings apply when the client's answer arrives, which a loaded machine may
    # deliver after the next request: poll for the result, not for a time
    deadline, actions = time.monotonic() + 30, []
    while not actions and time.monotonic() < deadline:
        actions = server.request("textDocument/codeAction", {
            "textDocument": {"uri": URI}, "context": {"diagnostics": []},
            "range": {"start": {"line": 9, "character": 8}, "end": {"line": 9, "character": 12}}})
    assert actions


def test_logs_hold_no_source_text_at_default_level(server):
    server.request("dlsp/stats")
    log = server.stderr()
    assert SECRET not in log and "def add" not in log


def test_utf8_encoding_over_the_wire(tiny_ckpt, tmp_path):
    client = LspClient.spawn("--model", str(tiny_ckpt), "--device", "cpu", "--log-level", "debug",
                             stderr_path=tmp_path / "err.log")
    try:
        caps = client.initialize({"debounceMs": 0}, encodings=["utf-8", "utf-16"])["capabilities"]
        assert caps["positionEncoding"] == UTF8
        text = "s = 'é\U0001F600'\nt = 1\n"
        client.open(URI, text)
        # replace the emoji: bytes 7..11 of line 0 in UTF-8
        client.change(URI, 2, [{"range": {"start": {"line": 0, "character": 7}, "end": {"line": 0, "character": 11}},
                                "text": "!"}])
        result = client.request("workspace/executeCommand", {"command": "dlsp.regenerateSelection", "arguments": [
            {"uri": URI, "range": {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 8}}}]})
        edits = result["edit"]["documentChanges"][0]["edits"]
        assert result["edit"]["documentChanges"][0]["textDocument"]["version"] == 2
        for e in edits:  # "é!" is 3 bytes from column 5
            assert e["range"] == {"start": {"line": 0, "character": 5}, "end": {"line": 0, "character": 8}}
        new = _apply("s = 'é!'\nt = 1\n", result["edit"], UTF8)
        assert new.startswith("s = '") and new.endswith("'\nt = 1\n")
    finally:
        client.close()


def test_failed_model_load_is_reported_and_server_stays_up(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    client = LspClient.spawn("--model", str(broken), stderr_path=tmp_path / "err.log")
    try:
        client.initialize()
        shown = client.wait_notification("window/showMessage", timeout=60)["params"]
        assert shown["type"] == 1 and "could not load" in shown["message"]
        assert client.wait_notification("dlsp/status", lambda p: p["state"] == "failed")
        client.open(URI, SRC)
        assert client.inline(URI, 4, 11) == {"items": []}
        assert client.request("textDocument/codeAction", {
            "textDocument": {"uri": URI}, "context": {"diagnostics": []},
            "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 3}}}) == []
        stats = client.request("dlsp/stats")
        assert stats["state"] == "failed" and stats["model"] is None
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_transport(tiny_ckpt, tmp_path):
    port = _free_port()
    err = open(tmp_path / "err.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "lsp_server", "--tcp", "--port", str(port), "--model",
                             str(tiny_ckpt)], stdout=subprocess.DEVNULL, stderr=err, env=server_env(), cwd=str(REPO))
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        client = LspClient(sock.makefile("rb"), sock.makefile("wb"))
        client.initialize()
        client.open(URI, SRC)
        assert "items" in client.inline(URI, 4, 11)
        client.request("shutdown")
        client.notify("exit")
        assert proc.wait(timeout=30) == 0
        sock.close()
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
