"""`KVCache`: the keys and values of every canvas position, per layer, after RoPE.

One object per generation run (or per document, when a run is reused across keystrokes), shared
by the eager step and the captured CUDA-graph steps. Identity matters: `engine.cuda_graphs`
decides whether to reload a graph's static cache by holding the cache object itself (never its
`id()`, which a new cache can reuse once the old one is freed) together with `epoch`, which every
write outside a denoising step bumps. Works on tensors only.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from kernels.rope import rerotate_keys

# spare rows a prefilled or spliced cache keeps, so that typing grows it in place (~46 KB per row at
# the 135M shape; a splice that outgrows them reallocates with as many spare rows again)
HEADROOM = 64


class KVCache:
    """Per layer keys and values, (B, Hkv, C, hd) each, of which the first `length` positions hold
    real canvas rows (C > length only for a fixed-shape padded cache, see `engine.cuda_graphs`).

    Attributes:
        keys, values: one tensor per layer.
        length: canvas positions held.
        epoch: bumped by `touch()` whenever the contents change other than through a step
            (prefill, refresh, splice); a graph that loaded this cache at an older epoch reloads it.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: int | None = None) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} key tensors but {len(values)} value tensors")
        self.keys, self.values = keys, values
        self.length = keys[0].shape[2] if length is None and keys else (length or 0)
        self.epoch = 0
        # per layer: the storage `keys`/`values` are views of when it has spare rows (splice_in_place)
        self.storage: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def empty(cls) -> KVCache:
        return cls([], [], 0)

    @classmethod
    def zeros(cls, n_layers: int, shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device,
              length: int = 0) -> KVCache:
        """A zero cache of `n_layers` layers, each (B, Hkv, C, hd) = `shape`, holding `length` rows."""
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)], length)

    def append(self, k: torch.Tensor, v: torch.Tensor, headroom: int = HEADROOM,
               dtype: torch.dtype | None = None) -> None:
        """Add one layer's (B, Hkv, L, hd) keys and values (prefill builds the cache layer by layer),
        copied into storage with `headroom` spare rows: the first keystroke's splice then grows
        in place instead of copying the whole cache (and freeing this one: ~60 MB churned per
        prefill at the 135M shape), and the values stop being a view of the fused q/k/v
        projection's whole output (L x 960 floats per layer, L x 192 of them values), which
        kept a 1k-token session's cache at ~160 MB instead of ~54 MB. `dtype`: the storage's
        (None = the keys' own; see `Transformer.cache_dtype`)."""
        if self.storage is None:
            self.storage = list(zip(self.keys, self.values))
        b, h, n, d = k.shape
        store_k = k.new_empty(b, h, n + headroom, d, dtype=dtype)  # (B, Hkv, L + headroom, hd)
        store_v = v.new_empty(b, h, n + headroom, v.shape[3], dtype=dtype)
        store_k[:, :, :n], store_v[:, :, :n] = k, v
        self.storage.append((store_k, store_v))
        self.keys.append(store_k[:, :, :n])
        self.values.append(store_v[:, :, :n])
        self.length = n

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(zip(self.keys, self.values))

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[layer], self.values[layer]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    def touch(self) -> None:
        """Record a write that did not go through a step (graphs holding this cache reload it)."""
        self.epoch += 1

    @property
    def dtype(self) -> torch.dtype | None:
        return self.keys[0].dtype if self.keys else None

    def to(self, dtype: torch.dtype, headroom: int = HEADROOM) -> KVCache:
        """A copy of the `length` rows in `dtype` with `headroom` spare rows (a cache that is only
        kept, never spliced, needs none)."""
        out = KVCache.empty()
        for k, v in self:
            out.append(k[:, :, :self.length].to(dtype), v[:, :, :self.length].to(dtype), headroom)
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def splice(old: KVCache, new_length: int, head: int, tail: int, theta: float) -> KVCache:
    """A cache for an edited canvas from the cache of the previous one, without a forward pass.

    The first `head` positions are the same tokens at the same positions: copied. The last `tail`
    positions are the same tokens as the old canvas's last `tail`, moved by
    `delta = new_length - old.length`: copied with their keys re-rotated from p to p + delta
    (R(p + d) = R(d) R(p), `kernels.rope.rerotate_keys`). Rows in between are zero: the caller
    computes them with a step (`Transformer.step` writes the rows it runs).

    Args:
        old: the previous canvas's cache (`old.length` rows).
        new_length: the edited canvas's length; head + tail <= min(new_length, old.length).
        theta: the model's RoPE base.
    Returns:
        a new `KVCache` of `new_length` rows (the old one is left untouched).
    """
    if head + tail > min(new_length, old.length) or head < 0 or tail < 0:
        raise ValueError(f"head {head} + tail {tail} do not fit {old.length} -> {new_length} rows")
    delta, n = new_length - old.length, old.length
    keys, values = [], []
    for k, v in old:
        b, h, _, d = k.shape
        k2 = k.new_zeros(b, h, new_length, d)  # (B, Hkv, L', hd)
        v2 = v.new_zeros(b, h, new_length, d)
        k2[:, :, :head] = k[:, :, :head]
        v2[:, :, :head] = v[:, :, :head]
        if tail:
            src = k[:, :, n - tail:n]
            k2[:, :, new_length - tail:] = src if delta == 0 else rerotate_keys(src, delta, theta)
            v2[:, :, new_length - tail:] = v[:, :, n - tail:n]
        keys.append(k2)
        values.append(v2)
    return KVCache(keys, values, new_length)


def splice_in_place(cache: KVCache, new_length: int, head: int, tail: int, theta: float) -> KVCache:
    """`splice` without copying the head: the tail moves within the same storage (re-rotated; it
    stays put when the length does, as when a typed character joins the last token: ~3 ms of
    copies saved at 1 thread, 5-17 ms at 2 passive ones), the
    rows in between are left for the caller's step to write, and `cache` now holds
    `new_length` rows (its layer tensors are views of storage with `HEADROOM` spare rows; a
    cache too small for the edit is reallocated). Bumps the epoch. `splice` is the reference.

    Returns:
        `cache` itself.
    """
    if head + tail > min(new_length, cache.length) or head < 0 or tail < 0:
        raise ValueError(f"head {head} + tail {tail} do not fit {cache.length} -> {new_length} rows")
    old, delta = cache.length, new_length - cache.length
    storage = []
    for i, (k, v) in enumerate(cache):
        store_k, store_v = cache.storage[i] if cache.storage is not None else (k, v)
        if store_k.shape[2] < new_length:  # grow: new storage, head copied
            b, h, _, d = k.shape
            grown_k = k.new_empty(b, h, new_length + HEADROOM, d)  # (B, Hkv, C, hd)
            grown_v = v.new_empty(b, h, new_length + HEADROOM, d)
            grown_k[:, :, :head] = k[:, :, :head]
            grown_v[:, :, :head] = v[:, :, :head]
            store_k, store_v = grown_k, grown_v
        if tail and delta:  # same length: the tail is where it was (a grown storage needs delta > 0)
            src_k = k[:, :, old - tail:old]
            moved_k = rerotate_keys(src_k, delta, theta)  # a copy: source and destination overlap
            moved_v = v[:, :, old - tail:old].clone()
            store_k[:, :, new_length - tail:new_length] = moved_k
            store_v[:, :, new_length - tail:new_length] = moved_v
        cache.keys[i], cache.values[i] = store_k[:, :, :new_length], store_v[:, :, :new_length]
        storage.append((store_k, store_v))
    cache.storage = storage
    cache.length = new_length
    cache.touch()
    return cache
