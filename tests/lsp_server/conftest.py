"""Fixtures that spawn the real server over stdio with a tiny random checkpoint."""

from __future__ import annotations

import pytest

from tests.lsp_server.lsp_client import LspClient


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    """A running server (default log level) with the tiny model loaded, shared by a module."""
    err = tmp_path_factory.mktemp("server") / "stderr.log"
    client = LspClient.spawn("--model", str(tiny_ckpt), "--device", "cpu", stderr_path=err)
    client.init_result = client.initialize({"debounceMs": 5})
    yield client
    client.close()
    assert client.proc.returncode == 0, client.stderr()[-3000:]
