"""CUDA graphs over the fixed-shape denoising step.

A cached denoising step is a few dozen small kernel launches; on a GPU their launch overhead
dominates, so the step is captured once per shape with `torch.cuda.CUDAGraph` and replayed.
Shapes are made fixed by bucketing: the query rows of a step are padded up to one of
HOLE_BUCKETS and the cache up to a multiple of CACHE_MULTIPLE, with one spare slot. Padded
query rows write their keys/values into that spare (scratch) slot, and attention ignores every
key at or past the real cache length (`kv_len`, a device scalar updated before each replay), so
a padded step computes exactly what `Transformer.step` computes on the real rows.

Works on token ids and tensors only. The bucketing and padding run (and are tested) on CPU;
`StepGraph` captures a graph only on CUDA and runs the same padded step eagerly elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.kv_cache import KVCache
from engine.model import Transformer

HOLE_BUCKETS: tuple[int, ...] = (8, 16, 32, 64)
CACHE_MULTIPLE = 256


@dataclass(frozen=True)
class Bucket:
    """A captured step's shape: `rows` query rows against a cache of `cache` positions.
    The real cache is shorter than `cache`: its last slot is the scratch slot of padded rows."""

    rows: int
    cache: int

    @property
    def scratch(self) -> int:
        return self.cache - 1


def bucket_for(n_rows: int, cache_len: int, buckets: tuple[int, ...] = HOLE_BUCKETS,
               multiple: int = CACHE_MULTIPLE) -> Bucket | None:
    """The bucket of a step that runs `n_rows` query rows (hole plus shift neighbour) against a
    cache of `cache_len` positions; None when the block is larger than every bucket (run eagerly).

    The cache is rounded up to the next multiple that leaves at least one spare slot.
    """
    if n_rows < 1 or cache_len < 1:
        raise ValueError(f"need n_rows >= 1 and cache_len >= 1, got {n_rows}, {cache_len}")
    rows = next((b for b in sorted(buckets) if b >= n_rows), None)
    if rows is None:
        return None
    return Bucket(rows=rows, cache=(cache_len // multiple + 1) * multiple)


def pad_rows(ids: torch.Tensor, index: torch.Tensor, bucket: Bucket,
             pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a step's rows to the bucket.

    Args:
        ids: (B, Q) token ids; index: (Q,) canvas positions, all < the real cache length.
    Returns:
        ids (B, rows) padded with `pad_id`, index (rows,) padded with the scratch slot,
        valid (rows,) bool, True for the first Q rows.
    """
    b, q = ids.shape
    if q > bucket.rows:
        raise ValueError(f"{q} rows do not fit a bucket of {bucket.rows}")
    ids_p = torch.full((b, bucket.rows), pad_id, dtype=ids.dtype, device=ids.device)
    ids_p[:, :q] = ids
    index_p = torch.full((bucket.rows,), bucket.scratch, dtype=index.dtype, device=index.device)
    index_p[:q] = index
    valid = torch.arange(bucket.rows, device=ids.device) < q
    return ids_p, index_p, valid


def pad_cache(cache: KVCache, bucket: Bucket) -> tuple[KVCache, torch.Tensor]:
    """Copy a cache into zero-padded tensors of the bucket's length.

    Returns:
        a cache of per-layer (B, Hkv, bucket.cache, hd) holding `cache.length` rows, and
        kv_len: 0-d int64, the real length.
    """
    length = cache.length
    if length >= bucket.cache:
        raise ValueError(f"a cache of {length} does not fit a bucket of {bucket.cache} (one slot is scratch)")
    k0 = cache.keys[0]
    out = KVCache.zeros(len(cache), (*k0.shape[:2], bucket.cache, k0.shape[3]), k0.dtype, k0.device, length)
    for (kp, vp), (k, v) in zip(out, cache):
        kp[:, :, :length] = k[:, :, :length]
        vp[:, :, :length] = v[:, :, :length]
    return out, torch.tensor(length, device=k0.device)


def padded_step(model: Transformer, ids: torch.Tensor, index: torch.Tensor, cache: KVCache,
                kv_len: torch.Tensor) -> torch.Tensor:
    """`Transformer.step` against a padded cache: keys at positions >= kv_len are ignored.

    Args:
        ids: (B, rows); index: (rows,); cache: per-layer (B, Hkv, C, hd), rows written in place;
        kv_len: 0-d int64 tensor on the model's device.
    Returns:
        hidden (B, rows, D) after the final norm (padded rows are garbage).
    """
    return model.step(ids, index, cache, kv_len)


class StepGraph:
    """One captured denoising step of a fixed bucket, with its own static padded cache.

    Usage: `g = StepGraph(model, bucket)`, after each prefill `g.load_cache(cache)`, then per step
    `hidden = g(ids, index)`. On CUDA the step is a replayed CUDA graph; elsewhere (or with
    `use_graph=False`) the same padded step runs eagerly, which is how the CPU tests check it.
    """

    def __init__(self, model: Transformer, bucket: Bucket, batch: int = 1, use_graph: bool | None = None,
                 pad_id: int = 0) -> None:
        p = next(model.parameters())
        a = model.args
        self.model, self.bucket, self.pad_id = model, bucket, pad_id
        self.use_graph = p.is_cuda if use_graph is None else use_graph
        if self.use_graph and not p.is_cuda:
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.ids = torch.full((batch, bucket.rows), pad_id, dtype=torch.long, device=p.device)  # (B, rows)
        self.index = torch.full((bucket.rows,), bucket.scratch, dtype=torch.long, device=p.device)  # (rows,)
        self.kv_len = torch.ones((), dtype=torch.long, device=p.device)
        shape = (batch, a.n_kv_heads, bucket.cache, a.head_dim)
        self.cache = KVCache.zeros(len(model.layers), shape, p.dtype, p.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        if self.use_graph:
            self._capture()

    def _run(self) -> torch.Tensor:
        with torch.inference_mode():
            return padded_step(self.model, self.ids, self.index, self.cache, self.kv_len)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up: compile Triton kernels, settle the allocator
            for _ in range(2):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._run()

    def load_cache(self, cache: KVCache) -> None:
        """Copy a cache's rows (`cache.length` < bucket.cache) into the static cache."""
        length = cache.length
        if length >= self.bucket.cache:
            raise ValueError(f"a cache of {length} does not fit a bucket of {self.bucket.cache}")
        for (ks, vs), (k, v) in zip(self.cache, cache):
            ks[:, :, :length].copy_(k[:, :, :length])
            vs[:, :, :length].copy_(v[:, :, :length])
        self.cache.length = length
        self.kv_len.fill_(length)

    def __call__(self, ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Run the step on real rows: ids (B, Q), index (Q,) with Q <= bucket.rows -> hidden (B, Q, D).
        The rows' keys/values are written into the static cache, as `Transformer.step` does."""
        q = ids.shape[1]
        if q > self.bucket.rows:
            raise ValueError(f"{q} rows do not fit a bucket of {self.bucket.rows}")
        self.ids.fill_(self.pad_id)
        self.ids[:, :q].copy_(ids)
        self.index.fill_(self.bucket.scratch)
        self.index[:q].copy_(index)
        if self.graph is not None:
            self.graph.replay()
            out = self.out
        else:
            out = self._run()
        return out[:, :q]


class StepGraphs:
    """The fast sampler's pool of captured steps, one per bucket (least recently used evicted).

    `step(ids, index, cache)` runs a cached denoising step through the bucket's graph, loading
    `cache` into the graph's static cache unless the graph holds this very object at its current
    `epoch` (a new run, a prefill, a refresh or a splice each make it reload); from then on the
    graph's static cache is the one being updated. Returns None when no bucket fits (the caller
    runs `Transformer.step` eagerly).

    The loaded cache is held by reference, never by `id()`: an id is reused by a new cache once
    the old one is freed, and the step would then run on the previous request's keys/values.
    Every row a step attends from the hole is rewritten by that step, so a run may switch
    between eager and graphed steps (or between buckets) without copying the cache back.
    """

    def __init__(self, model: Transformer, use_graph: bool | None = None, max_graphs: int = 8) -> None:
        self.model, self.use_graph, self.max_graphs = model, use_graph, max_graphs
        self.graphs: dict[Bucket, StepGraph] = {}
        self.loaded: dict[Bucket, tuple[KVCache, int]] = {}  # bucket -> (the cache it holds, its epoch)
        self.captures = 0

    def step(self, ids: torch.Tensor, index: torch.Tensor, cache: KVCache) -> torch.Tensor | None:
        bucket = bucket_for(ids.shape[1], cache.length)
        if bucket is None or ids.shape[0] != 1:
            return None
        g = self.graphs.pop(bucket, None)
        if g is None:
            if len(self.graphs) >= self.max_graphs:
                old = next(iter(self.graphs))
                del self.graphs[old]
                self.loaded.pop(old, None)
            g = StepGraph(self.model, bucket, use_graph=self.use_graph)
            self.captures += 1
        self.graphs[bucket] = g  # most recently used last
        held = self.loaded.get(bucket)
        if held is None or held[0] is not cache or held[1] != cache.epoch:
            g.load_cache(cache)
            self.loaded[bucket] = (cache, cache.epoch)
        return g(ids, index)
