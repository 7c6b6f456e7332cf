"""Embedding cache for the frozen encoder, keyed by window content (duplicate windows are encoded once)."""

from __future__ import annotations

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from dnallm.encoders.base import DNAEncoder, mean_pool


class EmbeddingCache:
    def __init__(self, encoder: DNAEncoder, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        self.encoder, self.dtype, self.device = encoder, dtype, torch.device(device)
        self._states: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._states)

    def add(self, windows: list[str], batch_size: int = 16) -> None:
        todo = sorted({w for w in windows if w not in self._states})
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            hidden, mask = self.encoder.encode(chunk)
            for w, h, m in zip(chunk, hidden, mask):
                self._states[w] = (h.to(self.device, self.dtype), m.to(self.device))

    def lookup(self, windows: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked (hidden [n, positions, dim], positions_mask [n, positions]); windows missing are encoded."""
        self.add(windows)
        hidden, mask = zip(*(self._states[w] for w in windows))
        return pad_sequence(hidden, batch_first=True), pad_sequence(mask, batch_first=True)

    def pooled(self) -> dict[str, np.ndarray]:
        """window -> mean of its cached states over its DNA positions (what the encoder-alone probe reads), so a
        probe after training needs no second encoder pass over the same windows (`dnallm.probe.store_pooled`)."""
        return {w: mean_pool(h[None], m[None])[0].cpu().numpy() for w, (h, m) in self._states.items()}
