"""Smoke test of benchmarks/kernels.py: without a GPU it says so and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("how", [["benchmarks/kernels.py"], ["-m", "benchmarks.kernels"]], ids=["script", "module"])
def test_benchmark_cli_without_gpu(how, tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    out = tmp_path / "k.json"
    proc = subprocess.run([sys.executable, *how, "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stdout
    assert not out.exists()
