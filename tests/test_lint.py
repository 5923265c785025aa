"""Repository-wide checks: ruff is clean and imports flow one way (lsp_server -> engine -> kernels)."""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {  # package -> top-level imports it must never make
    "kernels": {"engine", "lsp_server", "editor_clients", "pygls", "lsprotocol", "tokenizers"},
    "engine": {"lsp_server", "editor_clients", "pygls", "lsprotocol"},
    "lsp_server": {"editor_clients"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_layers(package):
    bad = []
    for f in (ROOT / package).rglob("*.py"):
        hit = _imports(f) & FORBIDDEN[package]
        if hit:
            bad.append(f"{f.relative_to(ROOT)} imports {sorted(hit)}")
    assert not bad, "\n".join(bad)


def test_kernels_import_triton_only_in_triton_files():
    for f in (ROOT / "kernels").rglob("*.py"):
        if not f.name.endswith("_triton.py") and f.name != "capabilities.py":
            assert "triton" not in _imports(f), f


def test_lsp_server_never_touches_tensors():
    for f in (ROOT / "lsp_server").rglob("*.py"):
        assert "torch" not in _imports(f), f


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_import_linter_contract():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed")
    proc = subprocess.run([exe], capture_output=True, text=True, cwd=ROOT, env=None)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
