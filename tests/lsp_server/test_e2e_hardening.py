"""End to end, issue 12: framing, lifecycle and TCP sessions against the real server process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tests.lsp_server.lsp_client import REPO, LspClient, LspError, server_env

pytestmark = pytest.mark.e2e
URI = "file:///w/a.py"
SRC = "import os\n\ndef add(a, b):\n    return \n"


def _raw(client: LspClient, data: bytes) -> None:
    with client._write_lock:
        client.writer.write(data)
        client.writer.flush()


def _msg(msg_id, method, params=None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()


def _spawn(tiny_ckpt, tmp_path, *extra: str) -> LspClient:
    return LspClient.spawn("--model", str(tiny_ckpt), "--device", "cpu", *extra, stderr_path=tmp_path / "err.log")


def _stats_ok(client: LspClient) -> None:
    assert client.request("dlsp/stats", timeout=30)["state"] in ("ready", "loading", "failed")


def test_framing_errors_cost_one_message_not_the_session(tiny_ckpt, tmp_path):
    client = _spawn(tiny_ckpt, tmp_path)
    try:
        client.initialize({"debounceMs": 0})
        for delta in (-3, -1, 2, 5):  # a length counted in characters, not UTF-8 bytes, and worse
            body = _msg(f"off{delta}", "dlsp/stats", {"note": "é😀 ünïcode"})
            _raw(client, b"Content-Length: %d\r\n\r\n" % (len(body) + delta) + body)
            assert client.request("dlsp/stats", timeout=30)["state"] == "ready"
        _raw(client, b"Content-Length: 1000000000000\r\n\r\n{}")
        assert "too large" in client.wait(None, timeout=30)["error"]["message"]
        _stats_ok(client)
        _raw(client, b"Content-Length: banana\r\n\r\n{}")
        _raw(client, b"this is not a header\r\n\r\n")
        _stats_ok(client)
        body = _msg("long", "dlsp/stats")  # declared too long and nothing follows: still answered
        _raw(client, b"Content-Length: %d\r\n\r\n" % (len(body) + 7) + body)
        assert "result" in client.wait("long", timeout=30)
        assert client.proc.poll() is None
    finally:
        client.close()
    assert client.proc.returncode == 0


def test_malformed_messages_get_errors_without_tracebacks(tiny_ckpt, tmp_path):
    client = _spawn(tiny_ckpt, tmp_path)
    try:
        client.initialize({"debounceMs": 0})
        client.open(URI, SRC)
        client.send({"jsonrpc": "2.0", "id": "intmethod", "method": 42, "params": {}})
        err = client.wait("intmethod", timeout=30)["error"]
        assert err["code"] == -32600 and "data" not in err
        for rng in ({"start": {"line": "x"}, "end": 3}, {"start": {"line": 0, "character": 0}}):
            with pytest.raises(LspError) as bad:
                client.request("workspace/executeCommand", {"command": "dlsp.regenerateSelection",
                                                            "arguments": [{"uri": URI, "range": rng}]})
            assert bad.value.code == -32602 and "data" not in bad.value.error
        nested = {"jsonrpc": "2.0", "id": "ghost", "method": "dlsp/stats", "params": {}}
        with pytest.raises(LspError):
            client.request("workspace/executeCommand", {"command": "dlsp.fillHoles", "arguments": [nested]})
        _stats_ok(client)
        time.sleep(0.5)
        assert "ghost" not in client.responses  # a message inside params is data, never answered
    finally:
        client.close()


def test_lifecycle_per_spec(tiny_ckpt, tmp_path):
    client = _spawn(tiny_ckpt, tmp_path)
    try:
        with pytest.raises(LspError) as early:
            client.request("textDocument/inlineCompletion", client.inline_params(URI, 0, 0), timeout=30)
        assert early.value.code == -32002
        with pytest.raises(LspError) as early:
            client.request("dlsp/stats", timeout=30)
        assert early.value.code == -32002
        client.initialize({"debounceMs": 0})
        with pytest.raises(LspError) as again:
            client.request("initialize", {"processId": None, "rootUri": None, "capabilities": {}}, timeout=30)
        assert again.value.code == -32600
        client.request("shutdown", timeout=30)
        with pytest.raises(LspError) as late:
            client.request("dlsp/stats", timeout=30)
        assert late.value.code == -32600
        client.notify("exit")
        assert client.proc.wait(timeout=30) == 0
    finally:
        client.close()


def test_exit_without_shutdown_is_code_1(tiny_ckpt, tmp_path):
    client = _spawn(tiny_ckpt, tmp_path)
    try:
        client.initialize({"debounceMs": 0})
        client.notify("exit")
        assert client.proc.wait(timeout=30) == 1
    finally:
        client.close()


@pytest.mark.parametrize("how", ["shutdown", "exit", "eof"])
def test_exit_while_the_model_loads_is_clean(tiny_ckpt, tmp_path, how):
    client = _spawn(tiny_ckpt, tmp_path)
    try:
        client.initialize(wait_ready=False)  # the loader thread is starting torch now
        if how == "shutdown":
            client.request("shutdown", timeout=30)
            client.notify("exit")
        elif how == "exit":
            client.notify("exit")
        else:
            client._answer = lambda msg: None  # type: ignore[method-assign]  # stdin is gone
            client.proc.stdin.close()
        code = client.proc.wait(timeout=60)
        assert code == (0 if how == "shutdown" else 1), client.stderr()[-2000:]
    finally:
        client.close()


def test_serve_with_a_missing_model_fails_at_once(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lsp_server", "--model", str(tmp_path / "nope")],
                          capture_output=True, env=server_env(), cwd=str(REPO), timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and b"no such directory" in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tcp_server(tiny_ckpt, tmp_path, *extra: str) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    err = open(tmp_path / "tcp.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "lsp_server", "--tcp", "--port", str(port), "--model",
                             str(tiny_ckpt), "--device", "cpu", *extra], stdout=subprocess.DEVNULL, stderr=err,
                            env=server_env(), cwd=str(REPO))
    return proc, port


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_tcp_second_client_is_refused_and_first_keeps_its_session(tiny_ckpt, tmp_path):
    proc, port = _tcp_server(tiny_ckpt, tmp_path)
    try:
        a = LspClient.connect(port, timeout=60)
        a.initialize({"debounceMs": 0})
        a.open(URI, SRC)
        b = LspClient.connect(port)
        shown = b.wait_notification("window/showMessage", timeout=30)["params"]
        assert "another client" in shown["message"]
        deadline = time.monotonic() + 30
        while not b.closed and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b.closed  # refused: B can neither complete nor run commands on A's documents
        b.close()
        assert "items" in a.inline(URI, 3, 11)  # A's answers still come to A
        a.request("shutdown")
        a.notify("exit")
        assert proc.wait(timeout=30) == 0
        a.close()
    finally:
        _reap(proc)


def test_tcp_beyond_loopback_warns(tiny_ckpt, tmp_path):
    proc, port = _tcp_server(tiny_ckpt, tmp_path, "--host", "0.0.0.0")
    try:
        a = LspClient.connect(port, timeout=60)
        a.initialize({"debounceMs": 0}, wait_ready=False)
        shown = a.wait_notification("window/showMessage", lambda p: p["type"] == 2, timeout=30)["params"]
        assert "0.0.0.0" in shown["message"]
        a.close()
        assert proc.wait(timeout=30) == 0
        assert "beyond this machine" in (tmp_path / "tcp.log").read_text()
    finally:
        _reap(proc)


def _answer_time(client: LspClient, method: str, params) -> float:
    """Seconds until a request sent now is answered."""
    t0 = time.perf_counter()
    msg_id = client.request_async(method, params)
    client.wait(msg_id, timeout=120)
    return client.received_at.get(msg_id, time.perf_counter()) - t0


def test_deep_nesting_and_big_edits_do_not_stall_the_loop(tiny_ckpt, tmp_path):
    """An unrelated request is answered while deep-nesting work and huge edits are in flight.
    The bound (10 s) is generous: before issue 12 these cases took 20-95 s."""
    client = _spawn(tiny_ckpt, tmp_path)
    try:
        client.initialize({"debounceMs": 0})
        n = 16000
        deep = "def f():\n    x = " + "(" * n + "1" + ")" * n + "\n"
        client.open("file:///w/deep.py", deep)
        col = deep.splitlines()[1].index("1")
        action = client.request_async("textDocument/codeAction", {
            "textDocument": {"uri": "file:///w/deep.py"}, "context": {"diagnostics": []},
            "range": {"start": {"line": 1, "character": col}, "end": {"line": 1, "character": col}}})
        inline = client.request_async("textDocument/inlineCompletion", client.inline_params("file:///w/deep.py", 1, col))
        time.sleep(0.2)
        assert _answer_time(client, "dlsp/stats", None) < 10
        assert "result" in client.wait(action, timeout=120) and "result" in client.wait(inline, timeout=120)
        client.open("file:///w/open.py", "x = " + "(" * 32000)
        inline = client.request_async("textDocument/inlineCompletion", client.inline_params("file:///w/open.py", 0, 32004))
        time.sleep(0.2)
        assert _answer_time(client, "dlsp/stats", None) < 10
        assert "result" in client.wait(inline, timeout=120)

        big = "def g(x):\n    return x + 1\n\n" * 180_000  # ~5 MB
        client.open("file:///w/big.py", big)
        changes = [{"range": {"start": {"line": 3 * i, "character": 0}, "end": {"line": 3 * i, "character": 0}},
                    "text": "#"} for i in range(300)]
        client.change("file:///w/big.py", 2, changes)
        assert _answer_time(client, "dlsp/stats", None) < 10
        result = client.request("textDocument/inlineCompletion", client.inline_params("file:///w/big.py", 3 * 299, 1))
        assert "items" in result
    finally:
        client.close()
