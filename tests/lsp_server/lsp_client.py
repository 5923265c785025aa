"""The end-to-end tests' client: the headless editor client (`editor_clients.headless.client`),
except that a server's `workspace/applyEdit` is acknowledged without being applied, so that tests
inspect the edit the server proposed against the unchanged document."""

from __future__ import annotations

from typing import Any

from editor_clients.headless.client import REPO, LspError, server_env
from editor_clients.headless.client import LspClient as _EditorClient

__all__ = ["REPO", "LspClient", "LspError", "server_env"]


class LspClient(_EditorClient):
    def _apply_workspace_edit(self, edit: dict[str, Any]) -> bool:
        return True
