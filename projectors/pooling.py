"""Mean pooling of runs of `stride` positions: 1024 bp -> 1024/stride DNA tokens, padding excluded."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def num_pooled(positions: int, stride: int) -> int:
    return -(-positions // stride)


def pool_positions(hidden: torch.Tensor, mask: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    if stride == 1:
        return hidden, mask
    n, length, dim = hidden.shape
    pad = num_pooled(length, stride) * stride - length
    weights = F.pad(mask.to(hidden.dtype), (0, pad)).view(n, -1, stride, 1)
    summed = (F.pad(hidden, (0, 0, 0, pad)).view(n, -1, stride, dim) * weights).sum(2)
    counts = weights.sum(2)
    return summed / counts.clamp(min=1), counts.squeeze(-1) > 0
