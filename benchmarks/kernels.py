"""Time every Triton kernel against its PyTorch reference on a CUDA GPU.

Reports the median time of each, the speedup, and the kernel's achieved memory bandwidth (bytes
it must read and write / time) as a fraction of the device's peak. The shapes are those of a
short infill step on a Qwen2-7B-sized model (vocab 151,936, 28 query / 4 kv heads of 128).

    python -m benchmarks.kernels --out kernels.json      (or python benchmarks/kernels.py)

Without a GPU it says so and exits 0. Never part of the pass/fail suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: this file must not shadow the `kernels` package

import argparse  # noqa: E402
import json  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

NO_GPU_MESSAGE = "benchmarks/kernels.py needs a CUDA GPU; none found, nothing to time."

# peak DRAM bandwidth in bytes/s by device-name substring (vendor data sheets), used when the
# device properties do not expose the memory clock and bus width
PEAK_BANDWIDTH = {
    "H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.039e12, "A100": 1.555e12,
    "L40S": 864e9, "L4": 300e9, "A10G": 600e9, "A10": 600e9, "T4": 320e9, "V100": 900e9,
    "RTX 4090": 1.008e12, "RTX 3090": 936e9,
}


def peak_bandwidth(props) -> tuple[float, str]:
    """Peak bytes/s of a device and where the number came from."""
    for key, bw in PEAK_BANDWIDTH.items():
        if key in props.name:
            return bw, f"table ({key})"
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8, "memory clock x bus width (double data rate)"
    return float("nan"), "unknown"


def time_ms(fn: Callable[[], object], warmup: int, iters: int) -> float:
    """Median milliseconds per call, measured with CUDA events after warmup."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def cases(dtype: torch.dtype) -> list[tuple[str, Callable, Callable, int]]:
    """(name, triton fn, reference fn, bytes the op must move at least)."""
    from kernels.attention import attention_ref
    from kernels.attention_triton import attention_triton
    from kernels.confidence import commit_mask_ref, confidence_ref
    from kernels.confidence_triton import commit_mask_triton, confidence_triton
    from kernels.norm import rms_norm_ref
    from kernels.norm_triton import rms_norm_triton
    from kernels.rope import apply_rope_ref, rope_tables
    from kernels.rope_triton import apply_rope_triton

    dev = "cuda"
    out = []
    logits = torch.randn(64, 151936, device=dev, dtype=dtype)  # 64 masked rows
    out.append(("confidence 64x151936", lambda: confidence_triton(logits, 0.7),
                lambda: confidence_ref(logits, 0.7), _nbytes(logits) + 64 * 20))
    conf, masked = torch.rand(256, device=dev), torch.rand(256, device=dev) > 0.3
    hole, n_min = torch.randint(0, 4, (256,), device=dev), torch.ones(4, dtype=torch.long, device=dev)
    out.append(("commit_mask 256 rows", lambda: commit_mask_triton(conf, masked, hole, 0.9, n_min),
                lambda: commit_mask_ref(conf, masked, hole, 0.9, n_min), 256 * 18))
    for lq, lk in ((16, 2048), (64, 8192)):
        q = torch.randn(1, 28, lq, 128, device=dev, dtype=dtype)
        k = torch.randn(1, 4, lk, 128, device=dev, dtype=dtype)
        v = torch.randn_like(k)
        out.append((f"attention q{lq} kv{lk}", lambda q=q, k=k, v=v: attention_triton(q, k, v),
                    lambda q=q, k=k, v=v: attention_ref(q, k, v), _nbytes(q, k, v, q)))
    x = torch.randn(64, 3584, device=dev, dtype=dtype)
    r, w = torch.randn_like(x), torch.ones(3584, device=dev, dtype=dtype)
    out.append(("rms_norm+residual 64x3584", lambda: rms_norm_triton(x, w, 1e-6, r),
                lambda: rms_norm_ref(x, w, 1e-6, r), _nbytes(x, r, w, x, x)))
    kq = torch.randn(1, 28, 64, 128, device=dev, dtype=dtype)
    cos, sin = rope_tables(128, torch.arange(64, device=dev) + 1000, 1e6)
    out.append(("rope 28x64x128", lambda: apply_rope_triton(kq, cos, sin), lambda: apply_rope_ref(kq, cos, sin),
                _nbytes(kq, cos, sin, kq)))
    kc = torch.randn(1, 4, 8192, 128, device=dev, dtype=dtype)
    c1, s1 = rope_tables(128, torch.tensor([8], device=dev), 1e6)
    out.append(("rerotate keys 4x8192x128", lambda: apply_rope_triton(kc, c1, s1, out=kc),
                lambda: apply_rope_ref(kc, c1, s1), _nbytes(kc, kc)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--iters", type=int, default=50)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU_MESSAGE)
        return 0
    props = torch.cuda.get_device_properties(0)
    peak, source = peak_bandwidth(props)
    rows = []
    with torch.inference_mode():
        for name, fast, ref, nbytes in cases(getattr(torch, args.dtype)):
            t_fast = time_ms(fast, args.warmup, args.iters)
            t_ref = time_ms(ref, args.warmup, args.iters)
            bw = nbytes / (t_fast * 1e-3)
            rows.append({"kernel": name, "triton_ms": t_fast, "reference_ms": t_ref, "speedup": t_ref / t_fast,
                         "bytes": nbytes, "bandwidth_gbs": bw / 1e9, "fraction_of_peak": bw / peak})
    print(f"{props.name}: peak {peak / 1e9:.0f} GB/s ({source}), dtype {args.dtype}")
    print(f"{'kernel':<28}{'triton ms':>11}{'ref ms':>10}{'speedup':>9}{'GB/s':>9}{'of peak':>9}")
    for r in rows:
        print(f"{r['kernel']:<28}{r['triton_ms']:>11.4f}{r['reference_ms']:>10.4f}{r['speedup']:>9.2f}"
              f"{r['bandwidth_gbs']:>9.0f}{r['fraction_of_peak']:>9.1%}")
    if args.out is not None:
        args.out.write_text(json.dumps({"device": props.name, "peak_bandwidth_bytes_s": peak,
                                        "peak_source": source, "dtype": args.dtype, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
