"""GRPO rewards, each in [0, 1]: correctness (strict Answer: parse), format, length."""

from __future__ import annotations

import re

from dnallm.parsing import parse_answer

# A think block with content, then the answer line as the final line.
_FORMAT = re.compile(r"^\s*<think>\s*\S.*?</think>\s*Answer:[^\n]+\s*$", re.S)


def correctness_reward(completion: str, gold: str) -> float:
    return 1.0 if parse_answer(completion) == gold else 0.0


def format_reward(completion: str) -> float:
    """1 for `<think>reasoning</think>` followed by a final `Answer: <one of the 37 labels>` line."""
    return 1.0 if _FORMAT.match(completion) and parse_answer(completion) is not None else 0.0


def length_reward(n_tokens: int, target: int = 512, limit: int = 1024) -> float:
    """1 up to `target` tokens, falling linearly to 0 at `limit` (long reasoning costs decoding time)."""
    if n_tokens <= target:
        return 1.0
    return max(0.0, 1.0 - (n_tokens - target) / max(1, limit - target))


def total_reward(completion: str, gold: str, n_tokens: int, weights: dict[str, float], target: int = 512,
                 limit: int = 1024) -> dict[str, float]:
    parts = {"correct": correctness_reward(completion, gold), "format": format_reward(completion),
             "length": length_reward(n_tokens, target, limit)}
    unknown = set(weights) - set(parts)
    if unknown:
        raise ValueError(f"unknown reward names {sorted(unknown)}; known: {sorted(parts)}")
    parts["total"] = sum(weights.get(k, 0.0) * v for k, v in parts.items())
    return parts
