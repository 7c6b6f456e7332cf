"""One linear map per DNA position: the BioReason reference projector (stride 1)."""

from __future__ import annotations

from torch import nn

from projectors.pooling import num_pooled, pool_positions


class LinearProjector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        self.proj = nn.Linear(in_dim, out_dim)

    def num_tokens(self, positions: int) -> int:
        return num_pooled(positions, self.stride)

    def forward(self, hidden, mask):
        hidden, mask = pool_positions(hidden, mask, self.stride)
        return self.proj(hidden.to(self.proj.weight.dtype)), mask
