"""Losses without the full logits: the 151k-wide LM head and the cross-entropy run chunk by chunk.

A batch of 8 KEGG answers is ~4,400 target tokens; their fp32 logits alone are 2.7 GB at Qwen3's vocabulary,
kept again for the backward pass. Here each chunk's logits are recomputed in the backward pass
(non-reentrant activation checkpointing), so at most one chunk's logits exist at any time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _chunk_token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def chunked_token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                           chunk_size: int | None = 1024) -> torch.Tensor:
    """log p(target) of every position: hidden [..., d], targets [...] -> [...], `chunk_size` positions at a
    time with recomputation in backward (GRPO's policy and reference log-probabilities)."""
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if not chunk_size:
        return _chunk_token_logprobs(head, flat_hidden, flat_targets).view(targets.shape)
    parts = [checkpoint(_chunk_token_logprobs, head, flat_hidden[i:i + chunk_size], flat_targets[i:i + chunk_size],
                        use_reentrant=False) for i in range(0, flat_targets.shape[0], chunk_size)]
    return torch.cat(parts).view(targets.shape)


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                          chunk_size: int | None = 1024) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` [N, vocab] against `targets` [N], `chunk_size` rows at a time.

    chunk_size None or 0: the plain loss over the full logits (no recomputation), for A/B measurements.
    """
    if targets.numel() == 0:
        raise ValueError("no answer tokens in this batch: every label is -100")
    return -chunked_token_logprobs(hidden, head, targets, chunk_size).mean()
