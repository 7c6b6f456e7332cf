"""Two-layer GELU MLP (the LLaVA-1.5 projector), optionally after mean pooling of `stride` positions."""

from __future__ import annotations

from torch import nn

from projectors.pooling import num_pooled, pool_positions


class MLPProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def num_tokens(self, positions: int) -> int:
        return num_pooled(positions, self.stride)

    def forward(self, hidden, mask):
        hidden, mask = pool_positions(hidden, mask, self.stride)
        return self.net(hidden.to(self.net[1].weight.dtype)), mask
