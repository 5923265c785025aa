"""End to end in a real headless Neovim: the dlsp plugin, the real server over stdio and a tiny
random checkpoint. The Lua driver (`editor_clients/nvim/tests/e2e.lua`) types in insert mode,
reads ghost text from extmarks, accepts it through the plugin's keymaps, runs a code action and
reads `:DlspStatus`; it writes what it saw as JSON and this test checks it.

The tiny model writes garbage, but deterministic garbage: the checks are on shapes (the ghost is
what the server suggests, accepting inserts exactly it), never on content.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "editor_clients" / "nvim"
DRIVER = PLUGIN / "tests" / "e2e.lua"
NVIM = shutil.which("nvim")
KEYS = {"accept": "<M-l>", "accept_word": "<M-w>", "accept_line": "<M-j>", "dismiss": "<M-e>", "trigger": "<M-\\>"}
SRC = """import os


def add(a, b):
    return a + b


def scale(p, k):
    x = p * k
    return x


class Point:
    def __init__(self, x, y):
        self.x = x

    def mul(self, k):
        pass
"""
CANDIDATE_ROWS = [i + 1 for i, line in enumerate(SRC.splitlines()) if line.strip()]
MULTILINE = "foo bar\n    baz()\nqux"
INIT = """vim.opt.runtimepath:prepend({plugin})
vim.opt.swapfile = false
vim.lsp.log.set_level("WARN")
"""
SETUP = """require("dlsp").setup({{
  cmd = {cmd},
  inline = {mode},
  settings = {{ debounceMs = 5 }},
  debounce_ms = 30,
}})
"""
PLAIN = """-- no setup(): the lsp/dlsp.lua config, with only cmd overridden
vim.lsp.config("dlsp", {{ cmd = {cmd} }})
vim.lsp.enable("dlsp")
"""


def _lua(value: object) -> str:
    """A Lua literal for a str or a list of str (JSON string escapes are valid Lua escapes)."""
    if isinstance(value, list):
        return "{ " + ", ".join(_lua(v) for v in value) + " }"
    return json.dumps(value)


def _next_word(s: str) -> str:
    """The plugin's word rule, written independently of it (Lua patterns in text.lua)."""
    for pat in (r"[ \t]*[A-Za-z0-9_]+", r"[ \t]*[^A-Za-z0-9_\s]+", r"\n[ \t]*", r"\s+"):
        m = re.match(pat, s)
        if m:
            return m.group(0)
    return s[:1]


def _next_line(s: str) -> str:
    return "\n" + s[1:].split("\n", 1)[0] if s.startswith("\n") else s.split("\n", 1)[0]


def _insert_at_eol(text: str, row: int, piece: str) -> str:
    lines = text.split("\n")
    lines[row - 1] += piece
    return "\n".join(lines)


def _run_nvim(tmp_path: Path, ckpt: Path, mode: str) -> tuple[dict, float, str]:
    src = tmp_path / "point.py"
    src.write_text(SRC)
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "lsp_server", "--model", str(ckpt), "--device", "cpu"]
    init = tmp_path / "init.lua"
    body = PLAIN.format(cmd=_lua(cmd)) if mode == "plain" else SETUP.format(cmd=_lua(cmd), mode=_lua(mode))
    init.write_text(INIT.format(plugin=_lua(str(PLUGIN))) + body)
    config = tmp_path / "e2e.json"
    config.write_text(json.dumps({
        "mode": mode, "src": str(src), "out": str(out), "rows": CANDIDATE_ROWS, "keys": KEYS,
        "action_line": "        pass", "action_col": 8, "action_title": "dlsp: Complete body",
        "multiline": MULTILINE,
        "watchdog_ms": 100_000, "t0_ms": 0}))
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), DLSP_E2E_CONFIG=str(config))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        env[var] = str(tmp_path / var.lower())
    t0 = time.monotonic()
    proc = subprocess.run([NVIM, "--headless", "--clean", "-n", "-i", "NONE", "-u", str(init),
                           "-c", f"luafile {DRIVER}"], env=env, cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=150)
    elapsed = time.monotonic() - t0
    logs = sorted((tmp_path / "xdg_state_home").rglob("lsp.log"))
    diag = (f"nvim rc={proc.returncode}\n--- nvim stdout/stderr ---\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
            f"\n--- lsp.log (server stderr) ---\n{logs[0].read_text()[-6000:] if logs else '(none)'}")
    assert out.exists(), f"the driver wrote no result\n{diag}"
    result = json.loads(out.read_text())
    diag = f"{diag}\n--- nvim messages ---\n{result.get('messages')}\n--- events ---\n" + "\n".join(
        result.get("events", []))
    return result, elapsed, diag


@pytest.mark.skipif(NVIM is None, reason="nvim not on PATH")
@pytest.mark.parametrize("mode", ["native", "extmark", "plain"])
def test_nvim_inline_completion_code_action_and_status(tmp_path, tiny_ckpt, mode):
    r, elapsed, diag = _run_nvim(tmp_path, tiny_ckpt, mode)
    print(f"nvim e2e ({mode}): {elapsed:.1f} s")
    assert "error" not in r, f"{r['error']}\n{diag}"
    assert r["status"]["state"] == "ready" and r["status"]["device"] == "cpu", diag
    # "plain" (lsp/dlsp.lua without setup) takes the native path where Neovim has one.
    want = "extmark" if mode == "extmark" or not r["has_native"] else "native"
    assert r["inline_path"] == want and r["native_enabled"] == (want == "native"), diag

    # The ghost text is what the server suggests at that position.
    text, row = r["server_text"], r["row"]
    assert text and r["ghost"] == text and r["suggestion"] == text, diag
    assert r["dismissed"] and r.get("ghost_after_dismiss") is None and r["ghost_after_trigger"] == text, diag

    # Accept a word, then a line, then the rest: each step inserts exactly the next piece, and
    # what is left of the suggestion stays on screen.
    buf, done = SRC.rstrip("\n"), ""
    assert r["steps"], diag
    for step, rule in zip(r["steps"], (_next_word, _next_line, lambda s: s)):
        done += rule(text[len(done):])
        assert step["text"] == _insert_at_eol(buf, row, done), f"after {step['key']}\n{diag}"
        assert step.get("ghost_after", "") == text[len(done):], f"ghost after {step['key']}\n{diag}"
    assert done == text and r["steps"][-1]["text"] == _insert_at_eol(buf, row, text), diag

    if r["inline_path"] == "extmark":  # a known multi-line ghost: virt_lines, then line by line
        ml = r["multiline"]
        assert ml["ghost"] == MULTILINE, diag
        base, done = r["steps"][-1]["text"], ""
        for i, (step, rule) in enumerate(zip(ml["steps"], (_next_word, _next_line, _next_line, lambda s: s))):
            done += rule(MULTILINE[len(done):])
            assert step["text"] == _insert_at_eol(base, row, done), f"multi-line {step['key']}\n{diag}"
            if i < 3:
                assert step["ghost_after"] == MULTILINE[len(done):], f"multi-line ghost {i}\n{diag}"
        assert done == MULTILINE, diag

    # "Complete body" through vim.lsp.buf.code_action: the header stays, the placeholder body goes.
    before, after = r["before_action"], r["after_action"]
    assert r["action_changed"] and after != before, diag
    header = "    def mul(self, k):"
    assert after.startswith(before[:before.index(header) + len(header)]), diag
    assert after[before.index(header) + len(header):].startswith("\n        "), diag

    out = r["status_output"]
    assert "[dlsp]" in out and "state=ready" in out and "device=cpu" in out and "last latency" in out, out
