"""Projectors: map frozen DNA-encoder states into the text model's token-embedding space.

Each projector takes (hidden [n, positions, in_dim], positions_mask [n, positions]) and returns
(embeddings [n, tokens, out_dim], tokens_mask [n, tokens]); `num_tokens(positions)` tells the processor
how many placeholder tokens one DNA window becomes.
"""

from __future__ import annotations

from torch import nn

from projectors.linear import LinearProjector
from projectors.mlp import MLPProjector

PROJECTORS: dict[str, type[nn.Module]] = {"linear": LinearProjector, "mlp": MLPProjector}


def build_projector(kind: str, in_dim: int, out_dim: int, **kwargs) -> nn.Module:
    if kind not in PROJECTORS:
        raise ValueError(f"unknown projector {kind!r}; known: {sorted(PROJECTORS)}")
    return PROJECTORS[kind](in_dim, out_dim, **kwargs)


__all__ = ["PROJECTORS", "build_projector", "LinearProjector", "MLPProjector"]
