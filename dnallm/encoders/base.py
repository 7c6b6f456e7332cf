"""The one interface every DNA encoder implements: tokenize windows, return frozen per-position states."""

from __future__ import annotations

import torch
from torch import nn


class LoadingError(RuntimeError):
    """A checkpoint with missing, unexpected or mis-shaped weights: never silently random-initialised."""


def check_loading_info(info: dict, source: str, ignore_unexpected: tuple[str, ...] = ()) -> None:
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith(ignore_unexpected or ("\0",))]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise LoadingError(f"loading {source}: missing weights {missing[:5]}, unexpected weights {unexpected[:5]}, "
                           f"mis-shaped weights {mismatched[:5]} (counts {len(missing)}/{len(unexpected)}/"
                           f"{len(mismatched)}); refusing to run with random-initialised weights")


class DNAEncoder(nn.Module):
    """A frozen DNA language model.

    Subclasses set `self.model`, `self.tokenizer`, `self.layer`, and implement `_hidden_states`.
    `forward(input_ids, attention_mask)` returns (hidden [batch, positions, hidden_size], positions_mask),
    where positions_mask marks the real sequence positions (no padding, no special tokens).
    """

    name: str = "base"
    add_special_tokens: bool = False  # whether the model expects its tokenizer's special tokens (CLS, ...)

    def __init__(self, model: nn.Module, tokenizer, layer: int, name_or_path: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.layer = layer
        self.name_or_path = name_or_path
        self.model.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True):  # always frozen: dropout off even inside a training model
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def fingerprint(self) -> dict:
        """What a checkpoint records to refuse being loaded onto another encoder."""
        cfg = self.model.config
        return {"type": self.name, "model_type": cfg.model_type, "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_hidden_layers, "vocab_size": getattr(cfg, "vocab_size", None),
                "layer": self.layer}

    def tokenize(self, windows: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(list(windows), return_tensors="pt", padding=True,
                             add_special_tokens=self.add_special_tokens)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        # Special tokens (e.g. a CLS) are run through the model but are not DNA positions.
        special = torch.isin(input_ids, torch.tensor(self.tokenizer.all_special_ids, device=input_ids.device))
        return out.hidden_states[self.layer], attention_mask.bool() & ~special

    @torch.no_grad()
    def encode(self, windows: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in self.tokenize(windows).items()}
        return self(**batch)
