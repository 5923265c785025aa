"""A learned drafter for speculative decoding (`engine.speculate`), shipped beside a model: one
small layer that guesses the base's next hidden state from its last one and the token committed
after it (EAGLE, Li et al., 2024, arXiv:2401.15077), so a chain of guesses costs a few small
matmuls each instead of a forward of the model. Works on hidden states, token ids and modules.

Why: the prompt lookup and the trigram table (`engine.ngram`) draft from the text alone. On held-out
single lines a lookup draft existed at 166 of 183 speculative forwards but rarely held, and the
decode stayed at ~0.73 forwards per generated token. The base's final hidden state at the row
before the frontier already holds what the base expects next; the head only has to carry it one
token on (the committed token is fed in), and the base's own LM head reads the guess.

Shape (`DraftHead`): `fc` maps [feature; embedding of the next token] (2D) to D, a SwiGLU block
with its RMSNorm adds to it, and a final RMSNorm gives the predicted feature (after the final
norm, like `BaseRun.hidden_at`). Chained, its own prediction is the next input feature.

The file (`draft_head.safetensors`) holds the layer's tensors and in its metadata the model
width and the sha256 of the tokenizer.json of the embedding it was trained against; a head from
another tokenizer or width is not used (the decode only gets slower, with a warning).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.gguf_import import sha256_file

log = logging.getLogger(__name__)

DRAFT_HEAD_FILE = "draft_head.safetensors"
NORM_EPS = 1e-5


class _Norm(nn.Module):
    """RMSNorm in plain torch (the head runs a row at a time; no kernel dispatch needed)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight


class DraftHead(nn.Module):
    """(feature at t, input embedding of token t+1) -> predicted feature at t+1.

    Args:
        dim: the model width D; hidden: the SwiGLU width.
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.fc = nn.Linear(2 * dim, dim, bias=False)
        self.norm = _Norm(dim)
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.out = _Norm(dim)

    def forward(self, feature: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """(..., D), (..., D) -> (..., D)."""
        z = self.fc(torch.cat([feature, emb], -1))
        y = self.norm(z)
        return self.out(z + self.down(F.silu(self.gate(y)) * self.up(y)))

    @torch.inference_mode()
    def chain(self, feature: torch.Tensor, token: int, n: int, embed, logits,
              min_prob: float = 0.0, mask_id: int | None = None) -> list[int]:
        """Up to `n` drafted tokens after `token`, each read by `logits` from the predicted
        feature and fed back with its embedding; stops early at a guess whose probability is
        below `min_prob`, or at the mask.

        Args:
            feature: (1, D) the final hidden state at the row before `token`'s slot.
            embed: ids (1, 1) -> (1, 1, D), the model's input rows.
            logits: (..., D) -> (..., V), the model's LM head.
        """
        out: list[int] = []
        f = feature.to(self.fc.weight.dtype)
        while len(out) < n:
            e = embed(torch.tensor([[token]], device=f.device))[0].to(f.dtype)  # (1, D)
            f = self(f, e)
            z = logits(f)[0].float()  # (V,)
            token = int(z.argmax())
            if token == mask_id or (
                    min_prob > 0 and float(torch.softmax(z, -1)[token]) < min_prob):
                break
            out.append(token)
        return out

    def save(self, path: str | Path, tokenizer_sha256: str, **meta: str) -> None:
        from safetensors.torch import save_file

        tensors = {k: v.detach().float().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"dim": str(self.dim), "hidden": str(self.hidden),
                                                 "tokenizer_sha256": tokenizer_sha256, **meta})


def load_draft_head(ckpt: str | Path, dim: int) -> DraftHead | None:
    """The checkpoint directory's draft head (fp32, eval mode), or None: when it has none, and
    (with a warning: decoding only gets slower) when the file is unreadable, was trained for
    another width, or against another tokenizer."""
    path = Path(ckpt) / DRAFT_HEAD_FILE
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        head = DraftHead(int(meta["dim"]), int(meta["hidden"]))
        head.load_state_dict(tensors)
    except Exception as exc:  # corrupt header, missing tensor or metadata, wrong shapes
        log.warning("%s: unreadable draft head, not used (%s)", path, exc)
        return None
    if head.dim != dim:
        log.warning("%s: a draft head for width %d, the model's is %d: not used", path, head.dim, dim)
        return None
    tok = Path(ckpt) / "tokenizer.json"
    if not tok.is_file() or meta.get("tokenizer_sha256") != sha256_file(tok):
        log.warning("%s: trained against another tokenizer than %s, not used", path, tok)
        return None
    return head.eval()
