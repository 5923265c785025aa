"""The native bidirectional transformer shared by every model family.

RMSNorm, RoPE, SwiGLU, grouped-query attention, optional QKV bias, tied or untied embeddings.
Two entry points serve the samplers:
  * `prefill(ids)`: full forward over the canvas, returns hidden states and a per-layer cache
    of keys/values after RoPE;
  * `step(ids, index, cache)`: forward of a few canvas rows (the masked block) against the
    cached keys/values of every other row; the rows' own keys/values are written into the cache.
The LM head is separate (`logits(h)`) so that callers run it on the rows they need only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelArgs
from engine.kv_cache import KVCache
from kernels.attention import attention, causal_attention, future_mask, grouped_sdpa, ordered_rows_attention
from kernels.norm import rms_norm
from kernels.rope import apply_rope, rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)[0]


class Block(nn.Module):
    def __init__(self, a: ModelArgs) -> None:
        super().__init__()
        hd = a.head_dim
        self.n_heads, self.n_kv, self.hd = a.n_heads, a.n_kv_heads, hd
        self.attn_norm = RMSNorm(a.dim, a.norm_eps)
        self.ffn_norm = RMSNorm(a.dim, a.norm_eps)
        self.wq = nn.Linear(a.dim, a.n_heads * hd, bias=a.qkv_bias)
        self.wk = nn.Linear(a.dim, a.n_kv_heads * hd, bias=a.qkv_bias)
        self.wv = nn.Linear(a.dim, a.n_kv_heads * hd, bias=a.qkv_bias)
        self.wo = nn.Linear(a.n_heads * hd, a.dim, bias=False)
        self.w_gate = nn.Linear(a.dim, a.intermediate_size, bias=False)
        self.w_up = nn.Linear(a.dim, a.intermediate_size, bias=False)
        self.w_down = nn.Linear(a.intermediate_size, a.dim, bias=False)
        # inference only (`engine.quantize`): one matmul for q/k/v and one for gate/up, which
        # replace the separate ones (same per-output-channel arithmetic, fewer calls per step)
        self.fused_qkv: nn.Module | None = None
        self.fused_gate_up: nn.Module | None = None

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, n, _ = x.shape
        h = self.attn_norm(x)
        if self.fused_qkv is not None:
            # queries and keys lie side by side in the fused output: one rotation for both
            # (fewer small ops per layer: a one-row CPU step is bound by per-op overhead)
            hq = self.n_heads + self.n_kv
            out = self.fused_qkv(h)  # (B, n, (Hq + 2 Hkv) hd)
            qk = apply_rope(out[..., :hq * self.hd].view(b, n, hq, self.hd).transpose(1, 2), cos, sin)
            v = out[..., hq * self.hd:].view(b, n, self.n_kv, self.hd).transpose(1, 2)
            return qk[:, :self.n_heads], qk[:, self.n_heads:], v
        else:
            q, k, v = self.wq(h), self.wk(h), self.wv(h)
        q = q.view(b, n, self.n_heads, self.hd).transpose(1, 2)  # (B, H, n, hd)
        k = k.view(b, n, self.n_kv, self.hd).transpose(1, 2)  # (B, Hkv, n, hd)
        v = v.view(b, n, self.n_kv, self.hd).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = o.shape
        x = x + self.wo(o.transpose(1, 2).reshape(b, n, -1))
        h = self.ffn_norm(x)
        if self.fused_gate_up is not None:
            gate, up = self.fused_gate_up(h).chunk(2, -1)
        else:
            gate, up = self.w_gate(h), self.w_up(h)
        return x + self.w_down(F.silu(gate) * up)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # inference: with `tap` = i, `prefill` and `step` keep the input of layer i (the rows' hidden
        # states after the layers below) in `tapped`, for a second stack of upper layers
        # (`engine.expert`); the lower layers are then computed once for both
        self.tap: int | None = None
        self.tapped: torch.Tensor | None = None
        # inference: the dtype a prefill keeps keys/values in (None = the model's own); steps write
        # into the cache as it is and attention widens what it reads (`kernels.attention.grouped_sdpa`)
        self.cache_dtype: torch.dtype | None = None

    # ---- full forward ------------------------------------------------------------------
    def prefill(self, ids: torch.Tensor, keep_cache: bool = True,
                open_frac: float | None = None, drafts: DraftRows | None = None) -> tuple[torch.Tensor, KVCache]:
        """Full forward (the first `args.causal_layers` layers causal, the rest bidirectional).

        Args:
            ids: (B, L) token ids; positions are 0..L-1.
            open_frac: training only: in the bidirectional layers, attention to keys ahead of the
                query is scaled by this factor (0 = causal, 1 or None = fully open); attention is
                opened gradually while an AR-initialised model adapts.
            drafts: rows checked in the same forward (see `DraftRows`); needs `keep_cache`.
        Returns:
            hidden (B, L, D) after the final norm, and the per-layer cache (empty if not kept).
        """
        n = ids.shape[1]
        pos = torch.arange(n, device=ids.device)
        cos, sin = rope_tables(self.args.head_dim, pos, self.args.rope_theta)
        bias = None
        if open_frac is not None and open_frac < 1.0:
            ahead = pos[None, :] > pos[:, None]  # (L, L)
            bias = torch.zeros(n, n, device=ids.device).masked_fill(ahead, math.log(max(open_frac, 1e-12)))
        x = self.tok_emb(ids)
        cache = KVCache.empty()
        if drafts is not None and not keep_cache:
            raise ValueError("draft rows are checked against the cache: prefill(keep_cache=True)")
        after = None if drafts is None else _DraftPass(self, drafts, cos, sin)
        for i, layer in enumerate(self.layers):
            if i == self.tap:
                self.tapped = x
                if after is not None:
                    after.tapped = after.x
            if after is None:
                x, k, v = self.layer_forward(i, x, cos, sin, bias)
                if keep_cache:
                    cache.append(k, v, dtype=self.cache_dtype)
                continue
            q, k, v, n = after.qkv(layer, x)  # the canvas's rows and the drafts', in one call
            o = self._full_attention(i, q[:, :, :n], k[:, :, :n], v[:, :, :n], bias)
            cache.append(k[:, :, :n], v[:, :, :n], dtype=self.cache_dtype)
            x = after.finish(i, layer, x, o, q, k, v, cache)
        h = self.norm(x)
        return (h, cache) if after is None else (after.hidden(h), cache)

    def layer_forward(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Layer `i` of a full forward: (B, L, D) -> (B, L, D), with its keys and values
        (B, Hkv, L, hd) after RoPE. `bias`: see `prefill`'s `open_frac`."""
        layer = self.layers[i]
        q, k, v = layer.qkv(x, cos, sin)
        return layer.finish(x, self._full_attention(i, q, k, v, bias)), k, v

    def _full_attention(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
        if i < self.args.causal_layers:
            return causal_attention(q, k, v)
        if bias is not None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                                  enable_gqa=k.shape[1] != q.shape[1])
        return attention(q, k, v)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits for every position: (B, L) -> (B, L, V). Used by tests and the naive sampler."""
        return self.logits(self.prefill(ids, keep_cache=False)[0])

    # ---- cached step -------------------------------------------------------------------
    def step(self, ids: torch.Tensor, index: torch.Tensor, cache: KVCache,
             kv_len: torch.Tensor | None = None,
             prior: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """Forward of selected canvas rows against the cache.

        Args:
            ids: (B, Q) token ids of the rows; index: (Q,) their canvas positions.
            cache: keys/values of the whole canvas, per layer (B, Hkv, L, hd); rows `index` are
                overwritten with the fresh keys/values of this step (in place).
            kv_len: 0-d int64 tensor: keys at positions >= kv_len are ignored (a fixed-shape
                padded cache, as captured by `engine.cuda_graphs`); None = all of them.
            prior: per layer, the rows' keys/values before this step, (B, Hkv, Q, hd) each, with
                `index` ascending: in the bidirectional layers each row then sees the rows after
                it as they were (`ordered_rows_attention`), so row i computes exactly what it
                would in a step of its own before rows i+1.. changed (speculative checking).
                Causal layers never see later rows. Not with `kv_len`.
        Returns:
            hidden (B, Q, D) after the final norm.
        """
        cos, sin = rope_tables(self.args.head_dim, index, self.args.rope_theta)
        x = self.tok_emb(ids)
        # causal layers on the host: keys past the last row are never visible, so attend to the
        # cache up to it (a view) with one mask for every layer, none for a single row
        upto = causal_mask = None
        if kv_len is None and index.device.type == "cpu" and self.args.causal_layers > 0:
            upto = int(index.max()) + 1
            causal_mask = None if index.numel() == 1 else future_mask(index, upto)
        for i, (layer, (kc, vc)) in enumerate(zip(self.layers, cache)):
            if i == self.tap:
                self.tapped = x
            q, k, v = layer.qkv(x, cos, sin)
            kc[:, :, index] = k.to(kc.dtype)
            vc[:, :, index] = v.to(vc.dtype)
            if i < self.args.causal_layers and upto is not None:
                o = grouped_sdpa(q, kc[:, :, :upto], vc[:, :, :upto], causal_mask)
            elif i < self.args.causal_layers:
                o = causal_attention(q, kc, vc, index, kv_len)
            elif prior is not None:
                o = ordered_rows_attention(q, kc, vc, index, *prior[i], spare=_spare_rows(cache, i, len(index)))
            else:
                o = attention(q, kc, vc, kv_len)
            x = layer.finish(x, o)
        return self.norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """LM head: (..., D) -> (..., V) in float32."""
        return self.lm_head(h).float()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The training init: matrices normal(0, 0.02), output projections (wo, w_down) scaled by
        1/sqrt(2 * layers), biases zero, norms one."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scaled = name.endswith(("wo.weight", "w_down.weight"))
                p.normal_(0.0, 0.02 / (2 * self.args.n_layers) ** 0.5 if scaled else 0.02)
            elif "norm" not in name:
                p.zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class DraftRows:
    """Rows a prefill checks beside its own, layer by layer (speculative decoding's check folded
    into the prefill that encodes the canvas: `engine.speculate`). They hold drafted tokens at
    canvas positions the prefill runs too (as masks). At each layer they share the prefill's
    matmuls (one call over both sets of rows: the weights are read once); after the canvas's
    rows have attended and their keys/values are cached, the draft rows attend against the cache
    as a `step(prior=...)` of them would (each sees the rows after it as the prefill left them)
    and overwrite the keys/values at their positions. The prefill returns its hidden states with
    the draft rows' in place of those positions' (and so does `tapped`), and `prior` holds what
    the draft rows overwrote, per layer, for putting back the rows whose drafts do not hold. Their
    own attention is ~8 small ops per layer: on a CPU about what a one-row step of their own
    costs, so they pay beside a long forward (a prefill), not beside a few-row step (a reuse step
    after a keystroke measured ~20 ms slower with them, and `step` takes none).

    Attributes:
        ids: (1, Q) the drafted tokens; index: (Q,) their canvas positions, ascending.
        prior: set by the forward: per layer, (k, v) (1, Hkv, Q, hd) at `index` before the drafts.
    """

    ids: torch.Tensor
    index: torch.Tensor
    prior: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def placed(self, tokens: list[int]) -> list[int]:
        """A canvas's `tokens` (from position 0) with the drafted ones in their places: what a
        prefill that checked these rows ran there (its hidden states and `tapped` hold theirs)."""
        out = list(tokens)
        for p, t in zip(self.index.tolist(), self.ids[0].tolist()):
            out[p] = t
        return out


class _DraftPass:
    """The draft rows of one forward, carried through its layers (`DraftRows`). At each layer they
    share the forward's matmuls (q/k/v, output projection, MLP: one call over both sets of rows,
    so the weights are read once); only their attention is their own, run after the forward's
    rows have written their keys/values."""

    def __init__(self, model: Transformer, drafts: DraftRows, cos: torch.Tensor, sin: torch.Tensor) -> None:
        self.m, self.d = model, drafts
        index = drafts.index
        dcos, dsin = rope_tables(model.args.head_dim, index, model.args.rope_theta)
        self.cos, self.sin = torch.cat([cos, dcos]), torch.cat([sin, dsin])  # (R + Q, hd)
        self.x = model.tok_emb(drafts.ids)  # (1, Q, D)
        self.tapped: torch.Tensor | None = None
        # the causal layers as `step` runs them (the same kernels: a right draft's row is the
        # one a check of its own would compute)
        self.upto = int(index.max()) + 1 if index.device.type == "cpu" else None
        self.mask = None if self.upto is None or index.numel() == 1 else future_mask(index, self.upto)
        drafts.prior = []

    def qkv(self, layer: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """q, k, v of the forward's rows `x` (B, R, D) followed by the drafts' (R + Q along dim 2),
        and R."""
        return (*layer.qkv(torch.cat([x, self.x], 1), self.cos, self.sin), x.shape[1])

    def finish(self, i: int, layer: Block, x: torch.Tensor, o: torch.Tensor, q: torch.Tensor,
               k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """After the forward's rows attended (`o`, their keys/values in the cache): the drafts'
        attention, then the layer's output projection and MLP over both. Returns the forward's
        rows; the drafts' are kept."""
        m, d, n = self.m, self.d, x.shape[1]
        kc, vc = cache.keys[i], cache.values[i]
        k_old, v_old = kc[:, :, d.index].clone(), vc[:, :, d.index].clone()
        d.prior.append((k_old, v_old))
        q, k, v = q[:, :, n:], k[:, :, n:], v[:, :, n:]
        kc[:, :, d.index] = k.to(kc.dtype)
        vc[:, :, d.index] = v.to(vc.dtype)
        if i < m.args.causal_layers and self.upto is not None:
            od = grouped_sdpa(q, kc[:, :, :self.upto], vc[:, :, :self.upto], self.mask)
        elif i < m.args.causal_layers:
            od = causal_attention(q, kc, vc, d.index)
        else:
            od = ordered_rows_attention(q, kc, vc, d.index, k_old, v_old,
                                        spare=_spare_rows(cache, i, len(d.index)))
        out = layer.finish(torch.cat([x, self.x], 1), torch.cat([o, od.to(o.dtype)], 2))
        self.x = out[:, n:]
        return out[:, :n]

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """The forward's hidden states (and `tapped`) with the draft rows' in their places."""
        at = self.d.index
        h = h.clone()
        h[:, at] = self.m.norm(self.x)
        if self.tapped is not None and self.m.tapped is not None:
            tapped = self.m.tapped.clone()
            tapped[:, at] = self.tapped
            self.m.tapped = tapped
        return h


def _spare_rows(cache: KVCache, layer: int, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The storage a layer's cached keys/values lead, when it has `n` spare rows after them."""
    if cache.storage is None or len(cache.storage) != len(cache.keys):
        return None
    (sk, sv), k, v = cache.storage[layer], cache.keys[layer], cache.values[layer]
    for store, t in ((sk, k), (sv, v)):
        if (store.data_ptr() != t.data_ptr() or store.stride() != t.stride()
                or store.shape[2] < t.shape[2] + n or store.shape[:2] != t.shape[:2]):
            return None
    return sk, sv


_INITS = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "ones_", "zeros_")


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """`torch.nn.init` functions as no-ops (module constructors call them). Not thread-safe
    against other threads building modules meanwhile; only `skeleton` uses it."""
    saved = {name: getattr(nn.init, name) for name in _INITS}
    try:
        for name in _INITS:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def skeleton(args: ModelArgs) -> Transformer:
    """The model's modules on the meta device, their initialisers not run: on meta tensors they
    go through `torch._refs`, whose first use imports `torch._dynamo` (and with it triton):
    ~140 MB more resident memory in every process that only loads a checkpoint."""
    with torch.device("meta"), _no_init():
        return Transformer(args)
