"""The diffusion infill engine: model, checkpoints, samplers and the text-level `Engine` API.

Never imports pygls or lsprotocol; kernels are reached only through their dispatchers."""

from engine.engine import Engine
from engine.errors import CheckpointError, DlspError, InvalidRequestError
from engine.types import InfillRequest, InfillResult, SamplingConfig

__all__ = ["CheckpointError", "DlspError", "Engine", "InfillRequest", "InfillResult", "InvalidRequestError",
           "SamplingConfig"]
