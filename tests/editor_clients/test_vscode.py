"""The VS Code extension (editor_clients/vscode): its manifest agrees with the server, and it
installs, compiles and passes its own tests: node's test runner on the pure TS modules, plus
src/test/e2e.test.ts, which starts this Python's `python -m lsp_server` on a tiny model the way the
extension does and feeds the answers through the same modules.

The npm steps run on a copy of the extension in a temporary directory, so the working tree's
node_modules/ and out/ are left alone; they are skipped when npm is not on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lsp_server import actions
from lsp_server.server import STATS, STATUS, TITLES
from lsp_server.settings import KEYS, Settings

REPO = Path(__file__).resolve().parents[2]
EXT = REPO / "editor_clients" / "vscode"
CLIENT_ONLY = {"pythonPath", "serverArgs", "serverEnv"}
NPM_TIMEOUT_S = 600


def _manifest() -> dict:
    return json.loads((EXT / "package.json").read_text(encoding="utf-8"))


def test_settings_mirror_the_server_keys():
    props = _manifest()["contributes"]["configuration"]["properties"]
    declared = {key.removeprefix("dlsp.") for key in props}
    assert declared - CLIENT_ONLY == set(KEYS)
    defaults = Settings()
    for key, (field, _) in KEYS.items():
        default = props[f"dlsp.{key}"]["default"]
        server_default = getattr(defaults, field)
        if isinstance(server_default, tuple):
            server_default = list(server_default)
        assert default == server_default, f"dlsp.{key}: package.json default {default!r} != server {server_default!r}"


def test_commands_match_the_server():
    contributed = {c["command"]: c["title"] for c in _manifest()["contributes"]["commands"]}
    for name in (actions.REGENERATE, actions.FILL_HOLES, actions.COMPLETE_BODY):
        assert contributed.get(name) == TITLES[name]
    source = "\n".join(p.read_text(encoding="utf-8") for p in (EXT / "src").glob("*.ts"))
    for name in (actions.REGENERATE, actions.FILL_HOLES, actions.COMPLETE_BODY, STATUS, STATS):
        assert f'"{name}"' in source, f"{name} is not used by the extension"


def test_manifest_entry_points():
    m = _manifest()
    assert m["main"] == "./out/extension.js"
    assert m["engines"]["vscode"].startswith("^")
    assert set(m["scripts"]) >= {"compile", "test", "package"}
    assert (EXT / "package-lock.json").is_file(), "commit package-lock.json (npm ci needs it)"
    assert "vscode-languageclient" in m["dependencies"]


def _run(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None) -> str:
    env = {**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false",
           "npm_config_audit": "false", **(extra_env or {})}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not on PATH (install Node.js >= 20 to test the VS Code extension)")
def test_npm_ci_compile_and_unit_tests(tmp_path, tiny_ckpt):
    work = tmp_path / "vscode"
    shutil.copytree(EXT, work, ignore=shutil.ignore_patterns("node_modules", "out", "*.vsix"))
    npm = shutil.which("npm")
    _run([npm, "ci", "--prefer-offline"], work)
    _run([npm, "run", "compile"], work)
    assert (work / "out" / "extension.js").is_file()
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    out = _run([npm, "test"], work, {"DLSP_E2E_PYTHON": sys.executable, "DLSP_E2E_MODEL": str(tiny_ckpt),
                                     "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"})
    assert "set DLSP_E2E_PYTHON to run" not in out, "the end-to-end node tests were skipped"
