"""The fast sampler keeps the host and the device apart: inside the step loop it reads the
device once per step (the hole slots); the rest of its decisions are made on the device or from
that read."""

from __future__ import annotations

import pytest
import torch

from engine.checkpoint import load_model
from engine.generate import generate
from engine.types import SamplingConfig


class _SyncCounter(torch.overrides.TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device."""

    READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique", "bincount",
             "masked_select", "any", "all"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in ("any", "all") and not kwargs and len(args) == 1:
            name = ""  # a device-side reduction; only reading it back (bool) syncs
        if name in self.READS:
            self.count += 1
        elif name == "__getitem__" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))):
            self.count += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("cfg", [SamplingConfig(threshold=0.5, factor=1.0),
                                 SamplingConfig(threshold=0.95, min_per_step=2, eos_fill=True)])
def test_at_most_one_host_sync_per_step(tiny_ckpt, cfg):
    """Inside the step loop the sampler reads the device once per step (the hole slots); the
    rest of its decisions are made on the device or from that read."""
    model, _ = load_model(tiny_ckpt)
    segs = [[5, 6, 7, 8], [9, 10]]
    stop = torch.zeros(model.args.vocab_size, dtype=torch.bool)
    stop[11] = True
    with torch.inference_mode():
        generate(model, segs, cfg, False, hole_tokens=12, max_new_tokens=12, stop_ids=stop)  # warm
        counter = _SyncCounter()
        with counter:
            out = generate(model, segs, cfg, False, hole_tokens=12, max_new_tokens=12, stop_ids=stop)
    steps = len(out.tokens_per_step)
    assert steps >= 2
    # + the per-run setup (layout, stop sets) and the one read of the fills' scores after the run
    assert counter.count <= steps + 7, (counter.count, steps)
