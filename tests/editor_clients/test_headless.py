"""The headless client, `dlsp demo` and `dlsp profile` against the real server (tiny model)."""

from __future__ import annotations

import json
import random

import pytest

from editor_clients.headless import demo, profile
from editor_clients.headless.client import LspClient
from editor_clients.headless.text import TextDocument, apply_text_edits, offset, position

pytestmark = pytest.mark.e2e


# -- text model (no server) ---------------------------------------------------------------------
def test_positions_round_trip_in_every_encoding():
    text = "a = '𝄞é'\r\nb\n\nc = 1"
    for enc in ("utf-8", "utf-16", "utf-32"):
        for i in range(len(text) + 1):
            if text[i - 1:i + 1] == "\r\n":  # inside a CRLF: not a position
                continue
            assert offset(text, position(text, i, enc), enc) == i, (enc, i)
    assert position(text, text.index("é"), "utf-16") == {"line": 0, "character": 7}  # 𝄞 = 2 units
    assert position(text, text.index("é"), "utf-8") == {"line": 0, "character": 9}  # 𝄞 = 4 bytes


def test_incremental_changes_replay_to_the_same_text():
    doc = TextDocument("file:///x.py", "def f():\n    return 1\n")
    mirror = doc.text
    rng = random.Random(0)
    for _ in range(50):
        a = rng.randint(0, len(doc.text))
        b = rng.randint(a, min(len(doc.text), a + 3))
        event = doc.replace(a, b, rng.choice(["x", "\n", "é", "𝄞", ""]))
        mirror = apply_text_edits(mirror, [{"range": event["range"], "newText": event["text"]}])
        assert mirror == doc.text
    assert doc.version == 51


def test_trace_chunks_rebuild_the_typed_text(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(20)))
    traces = profile.make_traces([src], n=3, lines=2, seed=1, speed=1.0)
    assert len(traces) == 3
    for tr in traces:
        assert "".join(c.text for c in tr.chunks) == tr.typed
        assert tr.text[:tr.at] + tr.typed + tr.text[tr.at:] == src.read_text()
        assert all(0 < c.pause_s < 1 for c in tr.chunks)
    assert [t.at for t in traces] == [t.at for t in profile.make_traces([src], 3, 2, 1, 1.0)]  # seeded


def test_match_rule():
    assert profile._match("return x\n", "return x + 1\n") == (True, 8)
    assert profile._match("return y", "return x") == (False, 7)
    assert profile._match("", "abc") == (False, 0)


# -- against the server -------------------------------------------------------------------------
@pytest.fixture()
def client(tiny_ckpt, tmp_path):
    c = LspClient.spawn("--model", str(tiny_ckpt), "--device", "cpu", stderr_path=tmp_path / "server.log")
    c.initialize({"debounceMs": 0})
    yield c
    c.close()
    assert c.proc.returncode == 0, c.stderr()[-2000:]


def test_typing_inline_and_code_action_round_trip(client):
    assert client.status["state"] == "ready"
    text = "def add(a, b):\n    pass\n\n\ndef sub(a, b):\n    return a - b\n"
    doc = client.open("file:///t/m.py", text)
    client.type(doc, len(text), "x = ad")
    items = client.inline_at(doc, len(doc.text))
    assert isinstance(items, list)
    for it in items:  # ranges are valid positions in the client's text
        assert doc.offset(it["range"]["start"]) <= len(doc.text)
    actions = client.code_actions(doc, text.index("pass"))
    body = [a for a in actions if a["command"]["command"] == "dlsp.completeBody"]
    assert body, actions
    version = doc.version
    client.run_action(body[0])
    # the server's workspace/applyEdit was applied to the buffer and echoed as a didChange
    assert doc.version == version + 1
    assert doc.text.startswith("def add(a, b):\n") and doc.text.endswith("def sub(a, b):\n    return a - b\nx = ad")
    assert "    pass\n" not in doc.text.split("def sub")[0]  # the body was replaced
    # the server saw the change: a completion at the new end of the document is served
    assert isinstance(client.inline_at(doc, len(doc.text)), list)
    stats = client.stats()
    assert stats["stages"]["total"]["count"] >= 2


def test_superseded_requests_are_cancelled_and_last_is_answered(client):
    doc = client.open("file:///t/c.py", "import os\n\n")
    ids = []
    for ch in "def walk(path):":
        client.type(doc, len(doc.text), ch)
        if ids:
            client.cancel(ids[-1])
        pos = doc.position(len(doc.text))
        ids.append(client.request_async("textDocument/inlineCompletion",
                                        client.inline_params(doc.uri, pos["line"], pos["character"])))
    last = client.wait(ids[-1], timeout=30)
    assert "result" in last, last
    for i in ids[:-1]:
        msg = client.wait(i, timeout=30)  # every request gets an answer: a result or an error
        assert "result" in msg or msg["error"]["code"] in (-32800, -32801)


def test_demo_runs_on_a_model_and_writes_json(tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert demo.main(["--model", str(tiny_ckpt), "--device", "cpu", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    names = [s["name"] for s in data["steps"]]
    assert len(names) == 5 and "typing" in names[1]
    assert all(s["latency_ms"] >= 0 for s in data["steps"])
    assert data["status"]["state"] == "ready"
    assert "server stages" in printed and names[0] in printed
    assert "superseded requests cancelled" in data["steps"][1]["note"]


def test_demo_reports_a_broken_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    assert demo.main(["--model", str(tmp_path), "--device", "cpu", "--threads", "1"]) == 1
    assert "did not load" in capsys.readouterr().err


def test_profile_writes_table_json_and_png(tiny_ckpt, tmp_path, capsys):
    src = tmp_path / "m.py"
    src.write_text("".join(f"def f{i}(x):\n    y = x * {i}\n    return y\n\n" for i in range(15)))
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    rc = profile.main(["--model", str(tiny_ckpt), "--device", "cpu", "--threads", "1", "--files", str(src),
                       "--traces", "2", "--lines", "1", "--speed", "4", "--out", str(out), "--png", str(png)])
    assert rc == 0
    data = json.loads(out.read_text())
    s = data["summary"]
    assert s["requests"] == len(data["requests"]) > 0
    assert s["answered"] + s["empty"] + s["cancelled_by_client"] + s["dropped_by_server"] + s["errors"] == s["requests"]
    assert s["errors"] == 0
    assert s["last_request_latency_ms"]["n"] == 2  # the last request of each trace was answered
    assert "total" in data["server_stats"]["stages"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "p50" in capsys.readouterr().out


def test_profile_rejects_missing_files(tmp_path, capsys):
    assert profile.main(["--files", str(tmp_path / "nope.py")]) == 2
    assert "no such file" in capsys.readouterr().err
