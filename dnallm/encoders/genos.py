"""Genos (BGI-HangzhouAI / Zhejiang Lab): a Mixtral-layout MoE DNA LM with one token per base.

Published layout (Genos-1.2B / Genos-10B): vocab 128 / 256 (padded), hidden 1024 / 4096, 12 layers,
16 attention heads with 8 KV heads, 8 experts top-2, expert FFN 4096 / 8192, RMSNorm eps 1e-5,
RoPE base 5e7. transformers' Mixtral classes implement exactly this, so no remote code is needed.
"""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

from dnallm.encoders.base import DNAEncoder, char_tokenizer, checked_lm_head

HUB_IDS = {"genos-1.2b": "ZhejiangLab/Genos-1.2B", "genos-10b": "ZhejiangLab/Genos-10B"}


def genos_config(size: str = "1.2b", **overrides) -> MixtralConfig:
    """The published Genos layout, for random-init benchmarks and tiny look-alikes (via overrides)."""
    layouts = {
        "1.2b": dict(vocab_size=128, hidden_size=1024, intermediate_size=4096),
        "10b": dict(vocab_size=256, hidden_size=4096, intermediate_size=8192),
    }
    kwargs = dict(num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=8, num_local_experts=8,
                  num_experts_per_tok=2, rms_norm_eps=1e-5, rope_theta=5e7, max_position_embeddings=131072,
                  tie_word_embeddings=False, **layouts[size])
    kwargs.update(overrides)
    return MixtralConfig(**kwargs)


class GenosEncoder(DNAEncoder):
    name = "genos"
    zero_shot = "causal"  # a next-base predictor: the zero-shot score sums its per-base log-probs

    @classmethod
    def from_pretrained(cls, name_or_path: str, layer: int = -1, dtype: torch.dtype | None = None) -> "GenosEncoder":
        """Loaded as the whole causal LM (the checkpoints' layout) so that the strict weight check sees every tensor;
        the LM head is kept for the zero-shot score, and a checkpoint without it still loads."""
        name_or_path = HUB_IDS.get(name_or_path.lower(), name_or_path)
        model, info = MixtralForCausalLM.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
        lm_head = checked_lm_head(model, info, name_or_path)
        return cls(model.model, AutoTokenizer.from_pretrained(name_or_path), layer, name_or_path, lm_head=lm_head)


def build_base_tokenizer():
    """A one-token-per-base tokenizer (the Genos scheme) saved with Genos-layout models trained here (the real
    checkpoints ship their own), so that both load through the same AutoTokenizer call."""
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<unk>", "<s>", "</s>", "A", "C", "G", "T", "N"])}
    return char_tokenizer(vocab, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
