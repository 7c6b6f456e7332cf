"""Losses without the full logits: the 151k-wide LM head and the cross-entropy run chunk by chunk.

A batch of 8 KEGG answers (~4,400 target tokens) has 2.7 GB of fp32 logits at Qwen3's vocabulary, kept again for
the backward pass; here each chunk's logits are recomputed in the backward (non-reentrant activation
checkpointing), so at most one chunk's logits exist at any time.

`chunk_size="liger"` (opt-in, CUDA only): liger-kernel's fused linear cross-entropy instead, which computes the
gradients in the forward pass in Triton kernels, keeping and recomputing no logits (benchmarks/speed.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


FUSED = "liger"


def head_weight(head: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The effective weight and bias of an LM head: a plain Linear, or peft's trainable-tokens layer over one
    (tied heads with trainable rows: the base weight with the trained rows written in, differentiable)."""
    layer = getattr(head, "token_adapter", head)  # peft TrainableTokensWrapper -> its TrainableTokensLayer
    if hasattr(layer, "get_merged_weights") and not getattr(layer, "disable_adapters", False):
        active = [a for a in layer.active_adapters if a in getattr(layer, "trainable_tokens_delta", {})]
        weight = layer.get_merged_weights(active) if active else layer.base_layer.weight
        return weight, getattr(layer.base_layer, "bias", None)
    if hasattr(head, "weight"):
        return head.weight, getattr(head, "bias", None)
    raise TypeError(f"no linear weight found in LM head {type(head).__name__}")


def require_liger(device: torch.device) -> None:
    """liger-kernel's kernels (fused loss, RMSNorm, ...) are Triton kernels: a clear error on a CPU model or
    without the package, before any work."""
    if device.type != "cuda":
        raise ValueError(f"liger-kernel's kernels are Triton kernels and need a CUDA device; the model is on {device}")
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("liger kernels need liger-kernel (pip install 'dnallm-variants[liger]'; Triton and a CUDA "
                          "device)") from e


def apply_liger_kernels(language_model) -> None:
    """liger-kernel's RMSNorm, SwiGLU and RoPE kernels in the text model (a peft model: its base), for the model
    types liger knows (Qwen3 among them); the loss stays ours (`chunk_size="liger"` above). liger also patches
    transformers' module of that model type (its RMSNorm and MLP classes, its RoPE function), so for the whole
    process: a model of that type built later, on the CPU too, runs the Triton kernels. A type liger does not know is an error:
    training would otherwise run without the kernels it was asked for."""
    import inspect

    base = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
    require_liger(base.device)
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    model_type = base.config.model_type
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ValueError(f"liger-kernel has no kernels for model type {model_type!r}; "
                         f"it knows {sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)}")
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN[model_type]
    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "cross_entropy": False,
              "fused_linear_cross_entropy": False}
    apply(model=base, **{k: v for k, v in wanted.items() if k in inspect.signature(apply).parameters})


def _chunk_token_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def chunked_token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                           chunk_size: int | str | None = 1024) -> torch.Tensor:
    """log p(target) of every position: hidden [..., d], targets [...] -> [...], `chunk_size` positions at a
    time with recomputation in backward (GRPO's policy and reference log-probabilities). `chunk_size="liger"`
    (a fused mean loss only) falls back to chunks of 1024 here."""
    if chunk_size == FUSED:
        chunk_size = 1024
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if not chunk_size:
        return _chunk_token_logprobs(head, flat_hidden, flat_targets).view(targets.shape)
    parts = [checkpoint(_chunk_token_logprobs, head, flat_hidden[i:i + chunk_size], flat_targets[i:i + chunk_size],
                        use_reentrant=False) for i in range(0, flat_targets.shape[0], chunk_size)]
    return torch.cat(parts).view(targets.shape)


def chunked_cross_entropy(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                          chunk_size: int | str | None = 1024) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` [N, vocab] against `targets` [N], `chunk_size` rows at a time.

    chunk_size None or 0: the plain loss over the full logits (no recomputation), for A/B measurements;
    "liger": liger-kernel's fused linear cross-entropy (needs liger-kernel, Triton and a CUDA device).
    """
    if targets.numel() == 0:
        raise ValueError("no answer tokens in this batch: every label is -100")
    if chunk_size == FUSED:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        weight, bias = head_weight(head)
        return liger_fused_linear_cross_entropy(hidden.contiguous(), weight, targets, bias, reduction="mean")
    return -chunked_token_logprobs(hidden, head, targets, chunk_size).mean()
