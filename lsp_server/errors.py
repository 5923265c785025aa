"""The one place that maps failures to LSP errors (in the spirit of llm-ls's `impl From<Error>`).

Handlers wrap their work in `lsp_errors`; whatever escapes becomes a JSON-RPC error response
with a short message and no source text.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pygls.exceptions import (
    JsonRpcContentModified,
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)

from engine.errors import CheckpointError, DlspError, InvalidRequestError

log = logging.getLogger(__name__)
REQUEST_FAILED = -32803  # LSP 3.17 RequestFailed
T = TypeVar("T")


class ModelNotReady(DlspError):
    """No model is loaded (still loading, or loading failed)."""


class StaleDocument(DlspError):
    """The document changed (or closed) while its request was running."""


class BadParams(DlspError):
    """Request parameters the server cannot use (unknown document, wrong shape)."""


def to_lsp(exc: BaseException) -> JsonRpcException:
    """The JSON-RPC error for an exception."""
    if isinstance(exc, JsonRpcException):
        return exc
    if isinstance(exc, (InvalidRequestError, BadParams)):
        return JsonRpcInvalidParams(f"invalid request: {exc}")
    if isinstance(exc, StaleDocument):
        return JsonRpcContentModified(f"content modified: {exc}")
    if isinstance(exc, (CheckpointError, ModelNotReady)):
        return JsonRpcException(f"model unavailable: {exc}", code=REQUEST_FAILED)
    if isinstance(exc, DlspError):
        return JsonRpcException(str(exc), code=REQUEST_FAILED)
    if isinstance(exc, (TypeError, ValueError, AttributeError, KeyError, IndexError)):
        return JsonRpcInvalidParams(f"invalid params: {type(exc).__name__}")
    return JsonRpcInternalError(f"internal error: {type(exc).__name__}")


def cancelled() -> JsonRpcException:
    return JsonRpcRequestCancelled("request cancelled")


def lsp_errors(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Decorate an async handler so every exception leaves as an LSP error."""

    @functools.wraps(handler)
    async def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return await handler(*args, **kwargs)
        except JsonRpcException:
            raise
        except Exception as exc:
            err = to_lsp(exc)
            level = logging.ERROR if isinstance(err, JsonRpcInternalError) else logging.INFO
            log.log(level, "%s failed: %s", handler.__name__, err.message, exc_info=level >= logging.ERROR)
            raise err from None

    return wrapped
