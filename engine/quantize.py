"""int8 matmuls for CPU inference: `Int8Linear` beside its fp32 reference `int8_linear_ref`.

Weights are quantized once per output channel (symmetric, scale = max |w| / 127); activations are
quantized per call by fbgemm's dynamic quantization (`torch.ops.quantized.linear_dynamic`), which
takes one scale for the whole input. Two things keep that from costing quality:

* per-token scaling: each input row is divided by its own max |x| before the call and the output
  multiplied back, so a row with small values is not quantized on the scale of the largest row;
* SmoothQuant (Xiao et al., 2022, arXiv:2211.10438): the few input channels with outlier
  activations would set the scale for all the others, so each input channel j is divided by
  s_j = max|X_j|^a / max|W_j|^(1-a) and the weight's column j multiplied by it, which leaves the
  product unchanged in exact arithmetic. The division is folded into what produces the input:
  the RMSNorm weights in front of q/k/v and gate/up, the up projection's rows in front of down,
  and the value projection's rows in front of the output projection (shared by the query heads
  of one key/value group). max|X_j| comes from a calibration forward over fixed text
  (`calibration_ids`: a frozen excerpt of this package's own source, so nothing is downloaded
  and the scales are the same on every machine and every version of the code).

The LM head keeps float activations for its shortlist (`ShortlistHead`): with an int8 head
the adapted 135M model's next-token distributions at masked slots moved ~5x further from fp32's.
Measured on 24 held-out canvases (masked slots after a 300-token prefix), KL to fp32 and top-1
agreement at the first masked slot: plain dynamic int8 0.56 / 71%; + float head 0.52 / 75%;
+ per-token scaling and SmoothQuant (a=0.5) 0.014 / 96%. On a 2-core x86 machine a denoising step
of the 135M shape runs ~3x faster than in fp32 and the matrices take a quarter of the memory.
A tied embedding table becomes int8 rows with a scale per row (`Int8Rows`), one table for the
input rows and the shortlist (85 MB less resident at the 135M shape; quality in `ShortlistHead`).
Weight-only int8 (`torch._weight_int8pack_mm`, fp32 activations) was ~30x slower than fp32 on that
machine, so it is not used. Works on modules and tensors only.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.runtime import release_freed_memory

MIN_PARAMS = 50_000_000  # the engine quantizes models at least this large by default (the 135M shape)
SMOOTH_ALPHA = 0.5  # SmoothQuant's migration strength (the paper's default; 0.5-0.7 measured alike)
CALIBRATION_TOKENS = 256  # per calibration row
CALIBRATION_ROWS = 2
# the start of this package's generate.py as of b5041d3 (2.3k characters, > 2 rows of tokens)
CALIBRATION_FILE = Path(__file__).resolve().parent / "calibration.txt"
SHORTLIST_MIN_VOCAB = 4096  # heads over larger vocabularies get `ShortlistHead`


def _quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """(N, K) float -> qint8 per output channel."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
    with warnings.catch_warnings():  # quantized tensor creation is marked for removal; still the fbgemm path
        warnings.simplefilter("ignore")
        return torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0,
                                          torch.qint8)


class Int8Linear(nn.Module):
    """A drop-in for an inference-only `nn.Linear`: int8 weights, dynamically quantized inputs
    scaled per row (token).

    Args:
        linear: the layer to replace (its weight is read once; the module keeps no float copy).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self._pack(_quantize_weight(linear.weight), linear.bias)

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Keep a qint8 weight (N, K) packed for fbgemm, and the bias in float32."""
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float().clone()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._packed = torch.ops.quantized.linear_prepack(weight, None)
        self._span = torch.zeros(1, self.in_features)
        self._span[0, 0], self._span[0, -1] = 1.0, -1.0

    @classmethod
    def from_quantized(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        """From an already quantized weight (qint8 per output channel, (N, K)), as `dequantized`
        and `engine.int8_cache` keep it: the same values and scales, packed again."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._pack(weight, bias)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., K) float32 -> (..., N) float32. Each row's result depends on that row alone."""
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        m = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)  # (M, 1) per-token scale
        # the call takes its quantization range from the whole input: one extra row holding -1
        # and +1 pins it to [-1, 1], so a row's result does not depend on the other rows
        # (lazy steps run 1 row where full steps run 13; both must decode the same)
        xs = torch.cat([x / m, self._span.to(x.dtype)])  # (M + 1, K)
        # reduce_range: 7-bit activations, so int8 x int8 sums cannot saturate without VNNI
        y = torch.ops.quantized.linear_dynamic(xs, self._packed, True)[:-1] * m
        y = y if self.bias is None else y + self.bias
        return y.view(*lead, self.out_features)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight (N, K) as the int8 values times their scales, and the bias."""
        w, _ = torch.ops.quantized.linear_unpack(self._packed)
        return w.dequantize(), self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Rows(nn.Module):
    """An embedding table as int8 rows with one scale per row (symmetric, scale = max |row| / 127):
    a quarter of the float table's memory (28 MB instead of 113 MB at the 135M shape). Called with
    token ids it is the input embedding; a tied `ShortlistHead` rescores its shortlist from the
    same rows. `dequantized()` is the reference.

    Args:
        weight: the float table (V, D); read once, not kept.
    """

    CHUNK = 8192  # rows quantized at a time (no full-size float temporary)

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach()
        self.num_embeddings, self.embedding_dim = w.shape
        self.register_buffer("q", torch.empty(w.shape, dtype=torch.int8, device=w.device))  # (V, D)
        self.register_buffer("scale", torch.empty(w.shape[0], 1, device=w.device))  # (V, 1) float32
        for i in range(0, w.shape[0], self.CHUNK):
            part = w[i:i + self.CHUNK].float()
            s = (part.abs().amax(1, keepdim=True) / 127.0).clamp(min=1e-12)
            self.scale[i:i + self.CHUNK] = s
            self.q[i:i + self.CHUNK] = (part / s).round_().clamp_(-127, 127).to(torch.int8)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale: torch.Tensor) -> Int8Rows:
        """From int8 rows (V, D) and their scales (V, 1), as kept by `engine.int8_cache`."""
        if q.dtype != torch.int8:
            raise ValueError(f"int8 rows expected, got {q.dtype}")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = q.shape
        self.register_buffer("q", q)
        self.register_buffer("scale", scale.float().reshape(-1, 1).clone())
        return self

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) -> rows (..., D) float32."""
        return self.q[ids].float() * self.scale[ids]

    def dequantized(self) -> torch.Tensor:
        """The table (V, D) as the int8 values times their scales."""
        return self.q.float() * self.scale

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


class ShortlistHead(nn.Module):
    """An LM head that is exact where it matters: int8 logits for the whole vocabulary (activations
    quantized per token), then the `k` best of each row recomputed with float activations against
    the weight's int8 rows (`Int8Rows`: weight-only rounding; a tied head shares them with the
    embedding). The argmax and the probabilities of the likely tokens are the rescored ones
    (unless the rescored argmax is outside the int8 top k); the rest are int8 estimates, which
    only enter a softmax's normalizer. A float head reads vocabulary x dim floats per call (113 MB
    at the 135M shape) for a handful of rows; this reads a quarter of that and keeps no float copy.
    Int8 rows instead of the float table (input rows and rescoring), on 24 held-out canvases of
    the adapted 135M model (16 masked slots each after a 300-token prefix): in an otherwise fp32
    model, KL to the float table's distributions 0.0001 from the input rows and 0.0015 from a head
    wholly of int8 rows (top-1 agreement 100% and 99.5%); in the int8 model, KL to fp32 0.054
    and top-1 agreement 97.9%, against 0.053 and 96.1% with the float table. (The int8 model
    against itself is no yardstick: its 7-bit activations turn any tiny change of its inputs,
    even fp16 rounding of the input rows, into KL ~0.06 / ~96% agreement.)

    Args:
        head: the float `nn.Linear` (no bias); read once.
        k: rows recomputed per input row.
        rows: the int8 rows to rescore from (a tied head: the embedding's `Int8Rows`); None =
            made from `head.weight`.
    """

    def __init__(self, head: nn.Linear, k: int = 64, rows: Int8Rows | None = None) -> None:
        super().__init__()
        if head.bias is not None:
            raise ValueError("ShortlistHead: a head with a bias is not supported")
        self.rows = rows if rows is not None else Int8Rows(head.weight)
        self.k = min(k, head.out_features)
        self.q = Int8Linear(head)

    @classmethod
    def from_parts(cls, q: Int8Linear, rows: Int8Rows, k: int) -> ShortlistHead:
        """From its int8 head and rows, as kept by `engine.int8_cache`."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.rows, self.q, self.k = rows, q, min(k, q.out_features)
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., V) float32."""
        shape = h.shape
        x = h.reshape(-1, shape[-1]).float()  # (N, D)
        logits = self.q(x)  # (N, V)
        top = logits.topk(self.k, dim=-1).indices  # (N, k)
        exact = torch.einsum("nd,nkd->nk", x, self.rows.q[top].float()) * self.rows.scale[top, 0]  # (N, k)
        return logits.scatter_(1, top, exact).view(*shape[:-1], -1)


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


def calibration_ids(tokenizer, lead_id: int, rows: int = CALIBRATION_ROWS,
                    tokens: int = CALIBRATION_TOKENS) -> list[torch.Tensor]:
    """Fixed calibration rows, (1, 1 + tokens) each: `lead_id` and `CALIBRATION_FILE`, tokenized
    (`tokenizer.encode(str) -> list[int]`). The file is frozen: the scales, and with them every
    int8 fill, must not move when the code does. Read from the engine's live source (as before),
    one import added to `generate.py` changed 42 of 100 held-out single-line fills (int8 decoding
    is that close to ties: ~96% top-1 agreement with fp32 per slot)."""
    ids = tokenizer.encode(CALIBRATION_FILE.read_text(encoding="utf-8"))
    return [torch.tensor([[lead_id, *ids[i * tokens:(i + 1) * tokens]]]) for i in range(rows)
            if len(ids) > i * tokens]


def _max_hook(seen: dict[str, torch.Tensor], name: str):
    """A forward hook keeping the running max |input| per input channel in `seen[name]`."""
    def hook(_mod, inputs, _out):
        x = inputs[0].detach().float()
        v = x.abs().reshape(-1, x.shape[-1]).amax(0)  # (K,)
        seen[name] = torch.maximum(seen[name], v) if name in seen else v
    return hook


@torch.no_grad()
def activation_max(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per `nn.Linear` (by module name): the max |input| of each input channel over a forward
    (`model.prefill(ids, keep_cache=False)`) of every batch."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [mod.register_forward_hook(_max_hook(seen, name)) for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear)]
    try:
        with torch.inference_mode():
            for ids in batches:
                model.prefill(ids.to(next(model.parameters()).device), keep_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {k: v.clone() for k, v in seen.items()}


def _scales(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    return (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


def smooth_block_(blk: nn.Module, x_max: dict[str, torch.Tensor], n_kv_heads: int,
                  alpha: float = SMOOTH_ALPHA) -> None:
    """SmoothQuant on one `engine.model.Block`, in place (`x_max` by leaf name: wq, ..., w_down):
    the q/k/v, gate/up, down and output projections get their input channels scaled, the inverse
    folded into the norm / up / value weights in front. Same function up to float rounding."""
    with torch.no_grad():
        for norm, names in ((blk.attn_norm, ("wq", "wk", "wv")), (blk.ffn_norm, ("w_gate", "w_up"))):
            lins = [getattr(blk, n) for n in names]
            xm = torch.stack([x_max[n] for n in names]).amax(0)
            s = _scales(xm, torch.cat([lin.weight for lin in lins]).abs().amax(0).float(), alpha)  # (D,)
            norm.weight.div_(s.to(norm.weight.dtype))
            for lin in lins:
                lin.weight.mul_(s.to(lin.weight.dtype))
        s = _scales(x_max["w_down"], blk.w_down.weight.abs().amax(0).float(), alpha)  # (F,)
        blk.w_up.weight.div_(s[:, None].to(blk.w_up.weight.dtype))
        blk.w_down.weight.mul_(s.to(blk.w_down.weight.dtype))
        # o's input channel (head h, dim d) is value channel (h // group, d): one scale per group
        hd = blk.hd
        group = blk.n_heads // n_kv_heads
        xm = x_max["wo"].view(n_kv_heads, group, hd).amax(1)
        wm = blk.wo.weight.abs().amax(0).float().view(n_kv_heads, group, hd).amax(1)
        s = _scales(xm, wm, alpha)  # (Hkv, hd)
        blk.wv.weight.div_(s.reshape(-1, 1).to(blk.wv.weight.dtype))
        if blk.wv.bias is not None:
            blk.wv.bias.div_(s.reshape(-1).to(blk.wv.bias.dtype))
        blk.wo.weight.mul_(s[:, None, :].expand(n_kv_heads, group, hd).reshape(-1).to(blk.wo.weight.dtype))


def smooth_(model: nn.Module, x_max: dict[str, torch.Tensor], alpha: float = SMOOTH_ALPHA) -> None:
    """`smooth_block_` on every block of an `engine.model.Transformer` (`x_max` by module name,
    as `activation_max` returns it)."""
    for i, blk in enumerate(model.layers):
        p = f"layers.{i}."
        smooth_block_(blk, {k[len(p):]: v for k, v in x_max.items() if k.startswith(p)}, model.args.n_kv_heads, alpha)


def _replace_linears(root: nn.Module, skip: tuple[str, ...] = ()) -> int:
    targets = [(name, mod) for name, mod in root.named_modules()
               if isinstance(mod, nn.Linear) and name.rpartition(".")[2] not in skip]
    for name, mod in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, leaf, Int8Linear(mod))
    return len(targets)


def _fused(lins: list[nn.Linear]) -> Int8Linear:
    """One int8 layer computing the given layers' outputs side by side (same input)."""
    out = nn.Linear(lins[0].in_features, sum(lin.out_features for lin in lins), bias=lins[0].bias is not None)
    with torch.no_grad():
        out.weight = nn.Parameter(torch.cat([lin.weight.float() for lin in lins]), requires_grad=False)
        if out.bias is not None:
            out.bias = nn.Parameter(torch.cat([lin.bias.float() for lin in lins]), requires_grad=False)
    return Int8Linear(out)


FUSED_AWAY = ("wq", "wk", "wv", "w_gate", "w_up")  # a quantized block's leaves, replaced by its fused matmuls
QUANTIZED_MATMULS = ("fused_qkv", "fused_gate_up", "wo", "w_down")  # what a quantized block multiplies with


def _quantize_block(blk: nn.Module) -> int:
    """An `engine.model.Block` to int8: q/k/v fused into one layer, gate/up into one (they read
    the same input; per output channel the arithmetic is unchanged), wo and w_down alone."""
    blk.fused_qkv = _fused([blk.wq, blk.wk, blk.wv])
    blk.fused_gate_up = _fused([blk.w_gate, blk.w_up])
    for leaf in FUSED_AWAY:
        delattr(blk, leaf)
    return 2 + _replace_linears(blk)


@torch.no_grad()
def _smooth_and_quantize(model: nn.Module, calibration: list[torch.Tensor], alpha: float) -> int:
    """Block by block: the block in float32, its input activations recorded on the calibration
    rows (the outputs of the blocks below, already int8, as inference will see them), smoothed,
    quantized, and the rows carried through it. The peak holds one block in float32 beside the
    model as stored (a 16-bit checkpoint is never widened whole)."""
    from kernels.rope import rope_tables

    a = model.args
    rows = []
    for ids in calibration:
        pos = torch.arange(ids.shape[1])
        rows.append((model.tok_emb(ids).float(), *rope_tables(a.head_dim, pos, a.rope_theta)))
    return smooth_and_quantize_blocks(list(model.layers), rows, lambda i, x, cos, sin: model.layer_forward(
        i, x, cos, sin)[0], a.n_kv_heads, alpha)


@torch.no_grad()
def smooth_and_quantize_blocks(blocks: list[nn.Module], rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                               forward, n_kv_heads: int, alpha: float = SMOOTH_ALPHA) -> int:
    """`engine.model.Block`s that run one after another, to int8 in place, each smoothed on its
    input activations over the calibration `rows` ((x, cos, sin): the inputs of the first block
    and their rotary tables). `forward(i, x, cos, sin)` runs block `i` of the list. Returns the
    number of layers replaced."""
    n = 0
    for i, blk in enumerate(blocks):
        blk.float()
        seen: dict[str, torch.Tensor] = {}
        hooks = [getattr(blk, leaf).register_forward_hook(_max_hook(seen, leaf))
                 for leaf in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")]
        try:
            for x, cos, sin in rows:
                forward(i, x, cos, sin)
        finally:
            for h in hooks:
                h.remove()
        smooth_block_(blk, seen, n_kv_heads, alpha)
        n += _quantize_block(blk)
        rows = [(forward(i, x, cos, sin), cos, sin) for x, cos, sin in rows]
    return n


def own_parameters_(model: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    """After `quantize_int8`: the parameters that stay in float (embedding, norms) are copied into
    memory of their own, in `dtype` (shared ones stay shared), and freed memory is handed back.
    Loaded weights are views of the checkpoint file's memory map, which lives while any of them
    does: without the copy the embedding keeps the whole map, and the pages the smoothing wrote
    into it, resident (~1 GB instead of ~0.7 GB for the 135M model). A tied embedding under a
    `ShortlistHead` is already int8 (`Int8Rows`) and not copied here."""
    copies: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for mod in model.modules():
            for name, p in list(mod.named_parameters(recurse=False)):
                if id(p) not in copies:
                    copies[id(p)] = nn.Parameter(p.detach().to(dtype, copy=True), requires_grad=False)
                mod._parameters[name] = copies[id(p)]
    copies.clear()
    release_freed_memory()


def quantize_int8(model: nn.Module, calibration: list[torch.Tensor] | None = None,
                  alpha: float = SMOOTH_ALPHA) -> int:
    """Replace the `nn.Linear` layers of an inference model (on CPU) with `Int8Linear`, in place,
    all but the LM head (`lm_head`: float; over a large vocabulary a `ShortlistHead`, whose int8
    rows replace a tied embedding `tok_emb`). With `calibration` (token id batches, (1, L)
    each) an `engine.model.Transformer` is smoothed block by block first (`smooth_block_`); its
    quantized blocks are left in float32, the rest of the model as it was.
    Returns the number of layers replaced."""
    if calibration and hasattr(model, "layer_forward"):
        n = _smooth_and_quantize(model, calibration, alpha)
    else:
        n = sum(_quantize_block(blk) for blk in getattr(model, "layers", []) if hasattr(blk, "fused_qkv"))
    n += _replace_linears(model, skip=("lm_head",))  # any other layer (none in a Transformer)
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Linear) and head.bias is None and head.out_features > SHORTLIST_MIN_VOCAB:
        emb = getattr(model, "tok_emb", None)
        tied = isinstance(emb, nn.Embedding) and emb.weight is head.weight
        model.lm_head = ShortlistHead(head, rows=Int8Rows(emb.weight) if tied else None)
        if tied:
            model.tok_emb = model.lm_head.rows  # one int8 table for the input rows and the shortlist
        n += 1
    return n
