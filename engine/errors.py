"""Errors the engine raises; `lsp_server` maps them to LSP errors in one place."""

from __future__ import annotations


class DlspError(Exception):
    """Base class of every error dlsp raises on purpose."""


class CheckpointError(DlspError):
    """A checkpoint directory cannot be loaded: names the file and what is wrong."""

    def __init__(self, path: object, what: str) -> None:
        self.path = str(path)
        self.what = what
        super().__init__(f"{self.path}: {what}")


class InvalidRequestError(DlspError):
    """An infill request that cannot be served (e.g. negative budget, unknown sampler)."""
