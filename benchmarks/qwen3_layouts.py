"""Published Qwen3 layouts, for random-init benchmarks at the real sizes (dnallm loads real weights by hub id or path)."""

from __future__ import annotations

from transformers import Qwen3Config

_LAYOUTS = {
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, tie_word_embeddings=True),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}


def qwen3_config(size: str = "4b", **overrides) -> Qwen3Config:
    kwargs = dict(vocab_size=151936, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=40960,
                  bos_token_id=151643, eos_token_id=151645, **_LAYOUTS[size])
    kwargs.update(overrides)
    return Qwen3Config(**kwargs)
