"""Any Hugging Face DNA model loadable with AutoModel (hub id or local path)."""

from __future__ import annotations

import torch
from transformers import AutoModel, AutoTokenizer

from dnallm.encoders.base import DNAEncoder, check_loading_info


class HFEncoder(DNAEncoder):
    name = "hf"
    add_special_tokens = True

    @classmethod
    def from_pretrained(cls, name_or_path: str, layer: int = -1, dtype: torch.dtype | None = None,
                        trust_remote_code: bool = False) -> "HFEncoder":
        model, info = AutoModel.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True,
                                                trust_remote_code=trust_remote_code)
        # A causal-LM checkpoint loaded as its base model legitimately leaves its output head unused. A masked-LM
        # checkpoint (DNABERT-style BertForMaskedLM) has no pooler, which AutoModel builds: the per-position states
        # never pass through it, so it is dropped instead of left random (BertModel and kin accept pooler = None).
        pooler_missing = [k for k in info["missing_keys"] if k.startswith("pooler.")]
        if pooler_missing and getattr(model, "pooler", None) is not None:
            model.pooler = None
            info = {**info, "missing_keys": [k for k in info["missing_keys"] if not k.startswith("pooler.")]}
        check_loading_info(info, name_or_path, ignore_unexpected=("lm_head.", "cls.", "classifier."))
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, layer, name_or_path)
