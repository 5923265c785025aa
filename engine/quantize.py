"""int8 matmuls for CPU inference: `Int8Linear` beside its fp32 reference `int8_linear_ref`.

Weights are quantized once per output channel (symmetric, scale = max |w| / 127); activations are
quantized per call (fbgemm's dynamic quantization, `torch.ops.quantized.linear_dynamic`). On a
2-core x86 machine a denoising step of the 135M shape runs ~2x faster than in fp32 and the weights
take a quarter of the memory. Weight-only int8 (`torch._weight_int8pack_mm`, fp32 activations)
was measured too and is ~30x slower than fp32 on that machine, so it is not used.

Quality: the relative error of a layer's output is ~1-2% on random weights (a parity check
only); the adapted model's quality against fp32 is for `dlsp eval` to measure. Works on modules
and tensors only.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

MIN_PARAMS = 50_000_000  # benchmarks quantize models at least this large (the 135M shape); the engine only on request


def _quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """(N, K) float -> qint8 per output channel."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
    with warnings.catch_warnings():  # quantized tensor creation is marked for removal; still the fbgemm path
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0,
                                          torch.qint8)


class Int8Linear(nn.Module):
    """A drop-in for an inference-only `nn.Linear`: int8 weights, dynamically quantized inputs.

    Args:
        linear: the layer to replace (its weight is read once; the module keeps no float copy).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._packed = torch.ops.quantized.linear_prepack(_quantize_weight(linear.weight), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) float32 -> (..., N) float32."""
        # reduce_range: 7-bit activations, so int8 x int8 sums cannot saturate without VNNI
        return torch.ops.quantized.linear_dynamic(x, self._packed, True)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight (N, K) as the int8 values times their scales, and the bias."""
        w, b = torch.ops.quantized.linear_unpack(self._packed)
        return w.dequantize(), b

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def int8_linear_ref(x: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
    """Reference: fp32 matmul with the dequantized int8 weight (inputs not quantized).

    Args:
        x: (..., K). Returns (..., N) float32.
    """
    w, b = layer.dequantized()
    return F.linear(x.float(), w, b)


@functools.cache
def int8_available() -> bool:
    """Whether this torch build runs the fbgemm dynamic int8 linear (x86 CPU builds do)."""
    try:
        layer = Int8Linear(nn.Linear(8, 4))
        return layer(torch.randn(2, 8)).shape == (2, 4)
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def quantize_int8(model: nn.Module) -> int:
    """Replace every `nn.Linear` of an inference model (on CPU) with `Int8Linear`, in place; a
    tied LM head gets its own int8 copy, the embedding table stays as it is. Returns the count."""
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, Int8Linear(mod))
    return len(targets)
