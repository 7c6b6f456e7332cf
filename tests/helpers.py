"""Plain helpers the tests import (`from helpers import ...`; pyproject's `pythonpath = ["tests"]` puts this folder
on sys.path in every pytest import mode). Fixtures stay in conftest.py."""

from __future__ import annotations

import copy
from itertools import product

from transformers import EsmConfig

from dnallm.quickstart import load_preset


def mini_preset() -> dict:
    """The tiny preset cut down further so that tests build and train in seconds."""
    p = copy.deepcopy(load_preset("tiny"))
    p["dna_pretrain"].update(steps=3, batch_size=4)
    p["dna_pretrain"]["layout"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    p["text_pretrain"].update(epochs=0.25, batch_size=8)
    p["text_pretrain"]["layout"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16)
    p["sft"].update(epochs=1.0, batch_size=4, log_every=1000)
    p["eval"].update(batch_size=8, max_new_tokens=24)
    return p


# Nucleotide Transformer v2 look-alikes for the NT encoder tests (the real checkpoints ship their own vocabulary and
# config; these rebuild both here, so that tiny NT checkpoints can be written from config).
NT_NUCLEOTIDES = ["A", "T", "C", "G"]  # NT's order, which fixes the token ids


def nt_vocab(k: int = 6) -> list[str]:
    """NT's token list in id order: <unk> <pad> <mask> <cls>, the k-mers, A T C G N, then <eos> <bos>."""
    kmers = ["".join(p) for p in product(NT_NUCLEOTIDES, repeat=k)]
    return ["<unk>", "<pad>", "<mask>", "<cls>"] + kmers + NT_NUCLEOTIDES + ["N", "<eos>", "<bos>"]


def nt_v2_config(**overrides) -> EsmConfig:
    """The NT v2 architecture flags (rotary, pre-norm, bias-free SwiGLU FFN), sized as v2-500m unless overridden."""
    kwargs = dict(vocab_size=4107, hidden_size=1024, num_hidden_layers=29, num_attention_heads=16,
                  intermediate_size=4096, max_position_embeddings=2050, position_embedding_type="rotary",
                  emb_layer_norm_before=False, token_dropout=False, layer_norm_eps=1e-12, pad_token_id=1,
                  mask_token_id=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  tie_word_embeddings=False, add_bias_fnn=False)
    kwargs.update(overrides)
    return EsmConfig(**kwargs)
