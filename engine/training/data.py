"""Packed token streams (flat uint16, documents separated by EOS) and batch sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class PackedTokens:
    """A memory-mapped token stream; windows are sampled at random offsets (packing across
    documents, whose EOS separators stay in the window)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data = np.memmap(self.path, dtype=np.uint16, mode="r")

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def batch(self, batch_size: int, seq_len: int, bos_id: int, g: torch.Generator) -> torch.Tensor:
        """(B, seq_len) int64: bos followed by seq_len - 1 stream tokens."""
        n = seq_len - 1
        offs = torch.randint(0, len(self) - n, (batch_size,), generator=g).tolist()
        rows = np.stack([np.asarray(self.data[o:o + n], dtype=np.int64) for o in offs])
        out = torch.empty(batch_size, seq_len, dtype=torch.long)
        out[:, 0] = bos_id
        out[:, 1:] = torch.from_numpy(rows)
        return out

    def fixed_batches(self, n_batches: int, batch_size: int, seq_len: int, bos_id: int,
                      seed: int = 1234) -> list[torch.Tensor]:
        """Deterministic batches for validation."""
        g = torch.Generator().manual_seed(seed)
        return [self.batch(batch_size, seq_len, bos_id, g) for _ in range(n_batches)]
