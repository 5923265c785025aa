"""The diffusion infill engine: model, checkpoints, samplers and the text-level `Engine` API.

Never imports pygls or lsprotocol; kernels are reached only through their dispatchers."""

from engine.engine import Engine
from engine.errors import CheckpointError, DlspError, InvalidRequestError
from engine.reuse import ReusePolicy
from engine.types import ContextSegment, InfillBackend, InfillRequest, InfillResult, SamplingConfig

__all__ = ["CheckpointError", "ContextSegment", "DlspError", "Engine", "InfillBackend", "InfillRequest",
           "InfillResult", "InvalidRequestError", "ReusePolicy", "SamplingConfig"]
