"""`sdpa_gqa`: transformers' SDPA attention for grouped-query models (Qwen3) without copying K/V per query head.

With an attention mask, transformers' `sdpa` expands K and V to one copy per query head (`repeat_kv`): torch's
masked kernels do not take grouped heads. At Qwen3-4B's 32 query / 8 KV heads that is 4 copies of the KV cache at
every layer of every decoding step, which dominated a batch-128 decoding step on an H200 (docs/benchmarks.md).
Here the G query heads that share a KV head are folded into the query-length axis instead ([b, kv_heads * G, q, d]
-> [b, kv_heads, G * q, d], the mask tiled G times along its query axis), one SDPA call, and the result unfolded:
the same attention in another layout. (transformers >= 5.2x does this for a single query token outside
torch.compile; the compiled decoding step is exactly where it is needed.)

The fold runs on CUDA only; elsewhere this is stock sdpa (on the 2-core CPU the fold was ~5 % slower,
benchmarks/cpu_eval_speed.py --attn; XPU and MPS have masked GQA kernels of their own).

Registered with transformers' AttentionInterface on import, so `attn_implementation="sdpa_gqa"` works in
`from_pretrained`, `set_attn_implementation` and dnallm's configs; dnallm.modeling picks it for grouped-KV LMs.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "sdpa_gqa"


def sdpa_gqa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                               fold: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """fold: None = on CUDA (where stock sdpa would copy K/V), True/False = always/never (where a mask is given)."""
    groups = getattr(module, "num_key_value_groups", 1)
    fold = query.is_cuda if fold is None else fold
    if not fold or groups == 1 or attention_mask is None or kwargs.get("position_bias") is not None:
        # Stock sdpa: no mask -> `enable_gqa` (flash / cuDNN kernels, no copies); otherwise repeat_kv.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    # Query heads k*G .. k*G+G-1 read KV head k (repeat_kv's order), so a plain reshape groups them.
    query = query.reshape(batch, kv_heads, groups * q_len, dim)
    mask_heads = attention_mask.shape[1]
    if mask_heads == heads:  # a per-head mask folds like the query
        attention_mask = attention_mask.reshape(attention_mask.shape[0], kv_heads, groups * q_len, -1)
    elif q_len > 1:  # one mask for all heads: each folded query row reads its own position's row
        attention_mask = attention_mask[:, :, None].expand(-1, -1, groups, -1, -1).reshape(
            attention_mask.shape[0], mask_heads, groups * q_len, -1)
    # (q_len == 1: the [b, 1, 1, kv] mask broadcasts over the G folded rows as it is)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling)
    out = out.reshape(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as sdpa
