"""The pretrained base read left to right at the fill's frontier, mixed into the adapted model's
logits (a product of experts). Works on token ids, hidden states and modules only.

The adapted model sees the suffix but learned on a few million tokens; the base it came from
reads only the prefix but learned on trillions. In a left-to-right decode (`block=1`) the slot
being committed is the base's next token, so each candidate is scored by
`log p_adapted + base_weight * log p_base`; ending the fill (EOS/pad) is scored by the base's
probability of the suffix's first token, which is what the base must predict next if the fill
ends there.

The adapted model's lower layers are the base's, causal and untouched by the adapter, so the
base's reading shares them: `BaseReading` holds only the base's upper layers (the ones the
adapter changed) and runs them on the hidden states the adapted model's own forward computed at
the layer below (`Transformer.tap`), on the same rows. Its keys/values cover the prefix and the
committed fill, causally, and are kept per session like the adapted model's cache.

Measured (`dlsp eval`, int8, context 1024, 2 x 100 held-out single lines, same runs): exact match
0.100 for the adapted model alone, 0.105 for the base left to right, 0.120 mixed at weight 1;
edit similarity 0.431 / 0.443 / 0.456, for ~25% more time per fill (the model card has the table).
Multi-line fills lost edit similarity with it (0.333 -> 0.310 on 30 holes): the engine mixes it
into single-line requests only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelArgs
from engine.kv_cache import HEADROOM, KVCache
from engine.model import Transformer
from kernels.attention import causal_attention
from kernels.rope import rope_tables


@dataclass
class BaseState:
    """The base's keys/values, kept between runs of one session: position i holds `fed[i]`."""

    cache: KVCache
    fed: list[int]


class BaseReading:
    """The base's upper layers over the adapted model's lower ones.

    Args:
        model: the adapted model; its layers below `first` must be causal (they are shared).
        layers: the base's blocks for layers `first`.. (`engine.model.Block`, float or int8).
    """

    def __init__(self, model: Transformer, layers: nn.ModuleList) -> None:
        a = model.args
        self.first = a.n_layers - len(layers)
        if not 0 < self.first <= a.causal_layers:
            raise ValueError(f"the base's upper layers must sit on causal layers: {len(layers)} upper layers "
                             f"over {a.causal_layers} causal of {a.n_layers}")
        self.model, self.layers = model, layers

    def start(self, state: BaseState | None, canvas: list[int], hole: tuple[int, int], room: int,
              suffix_first: int | None) -> BaseRun:
        """A run over `canvas` (ids) whose one hole spans `hole` and may grow to `room` tokens;
        `state`: what the session kept (reused where the canvas starts the same)."""
        return BaseRun(self, state, canvas, hole, room, suffix_first)


class BaseRun:
    """One generation's base reading. `feed` after every forward of the adapted model (its rows and
    the tokens fed there), `logprobs` at a row of the last forward."""

    def __init__(self, reading: BaseReading, state: BaseState | None, canvas: list[int],
                 hole: tuple[int, int], room: int, suffix_first: int | None) -> None:
        self.r, self.after = reading, suffix_first
        a = reading.model.args
        self.mask = a.mask_id
        self.limit = hole[1]  # rows at or past it are the suffix's
        need = hole[0] + room + 1
        fed: list[int] = []
        if state is not None:  # keep the leading rows the new canvas shares
            n = 0
            top = min(len(state.fed), hole[0])
            while n < top and state.fed[n] == canvas[n]:
                n += 1
            fed = state.fed[:n]
        if state is not None and state.cache.keys[0].shape[2] >= need:
            cache = state.cache
        else:
            p = next(reading.model.parameters())
            shape = (1, a.n_kv_heads, need + HEADROOM, a.head_dim)
            dtype = getattr(reading.model, "cache_dtype", None) or p.dtype
            cache = KVCache.zeros(len(reading.layers), shape, dtype, p.device, length=need + HEADROOM)
            if fed:
                for (k, v), (k0, v0) in zip(cache, state.cache):
                    k[:, :, :len(fed)], v[:, :, :len(fed)] = k0[:, :, :len(fed)], v0[:, :, :len(fed)]
        self.state = BaseState(cache, fed)
        self.hidden: torch.Tensor | None = None  # (R, D) after the final norm, rows of the last feed
        self.row: dict[int, int] = {}
        self.broken = False  # a forward left a gap the base could not fill: no mixing from then on
        self.forwards = 0
        self.best: torch.Tensor | None = None  # see `logprobs`

    def relayout(self, hole: tuple[int, int]) -> None:
        """A growth round moved the hole's end (and the suffix after it)."""
        self.limit = hole[1]

    @torch.inference_mode()
    def feed(self, positions: list[int], tokens: list[int]) -> None:
        """After a forward of the adapted model over rows `positions` (ascending) fed `tokens`:
        run the base's layers on those of them inside the prefix and the fill (not masks), from
        the layer inputs the forward tapped."""
        self.hidden, self.row = None, {}
        if self.broken:
            return
        keep = [j for j, (p, t) in enumerate(zip(positions, tokens)) if p < self.limit and t != self.mask]
        if not keep:
            return
        pos = [positions[j] for j in keep]
        fed = self.state.fed
        # rows between them keep their keys/values: those of the prefix and of tokens committed
        # (each committed token is fed by the forward after its commit); any without is a gap
        gap = any(b - a > 1 and b - 1 >= len(fed) for a, b in zip(pos, pos[1:]))
        if pos[0] > len(fed) or gap or pos[-1] >= self.state.cache.keys[0].shape[2]:
            self.broken = True  # rows it has no keys/values for: never guess
            return
        model, a = self.r.model, self.r.model.args
        x = model.tapped[:, keep] if len(keep) < model.tapped.shape[1] else model.tapped  # (1, R, D)
        index = torch.tensor(pos, device=x.device)
        cos, sin = rope_tables(a.head_dim, index, a.rope_theta)
        upto = pos[-1] + 1
        for layer, (kc, vc) in zip(self.r.layers, self.state.cache):
            q, k, v = layer.qkv(x, cos, sin)
            kc[:, :, index] = k.to(kc.dtype)
            vc[:, :, index] = v.to(vc.dtype)
            x = layer.finish(x, causal_attention(q, kc[:, :, :upto], vc[:, :, :upto], index))
        self.hidden = model.norm(x)[0]
        self.row = {p: i for i, p in enumerate(pos)}
        fed = fed[:upto] + [-1] * (upto - len(fed))  # later rows: drafts that may not hold
        for j, p in zip(keep, pos):
            fed[p] = tokens[j]
        self.state.fed = fed
        self.forwards += 1

    def hidden_at(self, position: int) -> torch.Tensor | None:
        """(1, D) the base's final hidden state at `position` (a row of the last feed), None when
        that row was not read."""
        i = self.row.get(position)
        return None if i is None or self.hidden is None else self.hidden[i:i + 1]

    @torch.inference_mode()
    def logprobs(self, position: int, ends: torch.Tensor, never: torch.Tensor | None = None,
                 logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """(V,) the base's log-probabilities of the token after `position` (a row of the last
        feed), `ends` (the ids that end a fill) scored as the suffix's first token; None when
        that row was not read. With `never` ((V,) bool), `best` becomes the base's own greedy
        choice there (0-d, on the device) among the other ids, read before `ends` are rescored:
        what the base itself would write next (`engine.rerank` finds where the base parts from
        the fill by them). `logits`: the LM head's (V,) output for `hidden_at(position)`, when
        the caller ran that row through the head already."""
        h = self.hidden_at(position)
        if h is None:
            return None
        lp = F.log_softmax(self.r.model.logits(h)[0] if logits is None else logits, -1)  # (V,)
        if never is not None:
            self.best = lp.masked_fill(never, float("-inf")).argmax()
        if self.after is not None:
            lp[ends] = lp[self.after].clone()
        return lp


class BaseRecord:
    """What a decode read of the base at each slot of its one hole, for `engine.rerank`: the base's
    own greedy choice there (`best`) and its log-probability of the token committed there (`lp`),
    kept on the device until `read`.

    Args:
        never: (V,) bool, the ids the base's own choice never takes (`never_ids`).
    """

    def __init__(self, never: torch.Tensor) -> None:
        self.never = never
        self.best: dict[int, torch.Tensor] = {}
        self.lp: dict[int, torch.Tensor] = {}

    def never_at(self, slot: int, allowed: torch.Tensor | None) -> torch.Tensor:
        """The ids barred at `slot`; `allowed`: the healed first slot's constraint, if it rules there
        (the check reads that slot under it too)."""
        return self.never | ~allowed if allowed is not None and slot == 0 else self.never

    def read(self) -> tuple[list[int], list[float]] | None:
        """The choices and log-probabilities from slot 0 through the last slot read without a gap,
        read from the device once the decode is over; None when slot 0 was not read."""
        n = 0
        while n in self.best and n in self.lp:
            n += 1
        if not n:
            return None
        return torch.stack([self.best[i] for i in range(n)]).tolist(), torch.stack([self.lp[i] for i in range(n)]).tolist()


def never_ids(a: ModelArgs, banned: list[int], device: torch.device | str) -> torch.Tensor:
    """(V,) bool: the ids the base's own line never holds (special ids, `banned`, the mask; EOS
    and pad end a line and stay)."""
    never = torch.zeros(a.vocab_size, dtype=torch.bool, device=device)
    never[[i for i in {*a.special_ids, *banned, a.mask_id} if i is not None and 0 <= i < a.vocab_size
           and i not in (a.eos_id, a.pad_id)]] = True
    return never


def causal_block_forward(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One block over a whole sequence, causal (the base's reading of it)."""
    q, k, v = layer.qkv(x, cos, sin)
    return layer.finish(x, causal_attention(q, k, v))


@torch.no_grad()
def build_base_reading(model: Transformer, tensors: dict[str, torch.Tensor],
                       calibration: list[torch.Tensor] | None = None) -> BaseReading:
    """The base's upper layers from its native-named tensors (`engine.assembly.base_layers`),
    over `model`'s lower ones. With `calibration` (token id rows, as `engine.quantize.
    calibration_ids` gives them) they are smoothed and quantized to int8 like the model's own,
    on the inputs `model`'s lower layers give them."""
    from engine.model import Block
    from engine.quantize import smooth_and_quantize_blocks

    a = model.args
    p = next(model.parameters())
    try:
        first = min(int(k.split(".")[1]) for k in tensors)
        layers = nn.ModuleList()
        for i in range(first, a.n_layers):
            blk = Block(a)
            head = f"layers.{i}."
            blk.load_state_dict({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})
            layers.append(blk.to(device=p.device, dtype=torch.float32 if calibration else p.dtype).eval())
    except (ValueError, IndexError, RuntimeError) as exc:  # no tensors, or not these layers' shapes
        raise ValueError(f"the base's layers do not fit the model: {exc}") from exc
    reading = BaseReading(model, layers)
    if calibration:
        rows = []
        model.tap = reading.first
        try:
            for ids in calibration:
                model.prefill(ids, keep_cache=False)
                cos, sin = rope_tables(a.head_dim, torch.arange(ids.shape[1]), a.rope_theta)
                rows.append((model.tapped.float(), cos, sin))
        finally:
            model.tap = model.tapped = None
        smooth_and_quantize_blocks(list(layers), rows, lambda i, x, cos, sin: causal_block_forward(
            layers[i], x, cos, sin), a.n_kv_heads)
    return reading
