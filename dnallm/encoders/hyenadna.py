"""HyenaDNA (Hazy Research, hub org LongSafari): a causal long-convolution DNA LM with one token per base.

Model: the hub checkpoints (`*-hf`) ship their architecture as remote code (`trust_remote_code=True`). Its forward
takes no attention mask and returns n_layer + 2 hidden states: the embeddings, each block, and the final layer norm.

Padding: the hub tokenizer pads on the LEFT, which with causal mixers and no mask feeds pad embeddings into every
real position's state; right padding leaves them exactly as unpadded (checked on a tiny config: 5e-7 vs 0.19). So
windows are padded on the right here, and the positions mask keeps only the real bases.

Tokenizer: the hub's CharacterTokenizer is remote code too, so it is rebuilt as a standard fast tokenizer with the
same ids ([CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6, then A=7 C=8 G=9 T=10 N=11, or the
checkpoint's tokenizer_config.json characters). No special tokens are added: HyenaDNA was pretrained on bare ids.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoModel, AutoModelForCausalLM
from transformers.utils import cached_file

from dnallm.encoders.base import (DNAEncoder, NoLMHeadError, char_tokenizer, check_loading_info, dna_positions,
                                  pack_positions)

HUB_IDS = {
    "hyenadna-large-1m": "LongSafari/hyenadna-large-1m-seqlen-hf",
    "hyenadna-medium-450k": "LongSafari/hyenadna-medium-450k-seqlen-hf",
    "hyenadna-medium-160k": "LongSafari/hyenadna-medium-160k-seqlen-hf",
    "hyenadna-small-32k": "LongSafari/hyenadna-small-32k-seqlen-hf",
    "hyenadna-tiny-1k": "LongSafari/hyenadna-tiny-1k-seqlen-hf",
}

SPECIAL_TOKENS = ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]
CHARACTERS = ("A", "C", "G", "T", "N")


def build_hyenadna_tokenizer(characters=CHARACTERS, model_max_length: int = 1_000_002):
    """HyenaDNA's character vocabulary as a fast tokenizer: one id per base, right padding, no added tokens."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(characters))}
    return char_tokenizer(vocab, cls_token="[CLS]", sep_token="[SEP]", bos_token="[BOS]", eos_token="[SEP]",
                          mask_token="[MASK]", pad_token="[PAD]", unk_token="[UNK]", model_max_length=model_max_length)


def load_hyenadna_tokenizer(name_or_path: str):
    """The tokenizer of a HyenaDNA checkpoint (hub id or folder), from its tokenizer_config.json if present."""
    path = cached_file(name_or_path, "tokenizer_config.json", _raise_exceptions_for_missing_entries=False)
    cfg = json.loads(open(path).read()) if path else {}
    kwargs = {"model_max_length": cfg["model_max_length"]} if "model_max_length" in cfg else {}
    return build_hyenadna_tokenizer(tuple(cfg.get("characters", CHARACTERS)), **kwargs)


class HyenaDNAEncoder(DNAEncoder):
    name = "hyenadna"
    add_special_tokens = False
    zero_shot = "causal"

    @classmethod
    def from_pretrained(cls, name_or_path: str, layer: int = -1,
                        dtype: torch.dtype | None = None) -> "HyenaDNAEncoder":
        name_or_path = HUB_IDS.get(name_or_path.lower(), name_or_path)
        model, info = AutoModel.from_pretrained(name_or_path, trust_remote_code=True, dtype=dtype,
                                                output_loading_info=True)
        # The checkpoints are causal LMs (HyenaDNAForCausalLM); the base model leaves the LM head unused.
        check_loading_info(info, name_or_path, ignore_unexpected=("lm_head.",))
        return cls(model, load_hyenadna_tokenizer(name_or_path), layer, name_or_path)

    @property
    def hidden_size(self) -> int:
        return self.model.config.d_model

    @property
    def num_hidden_states(self) -> int:  # the embeddings, each block, and the final layer norm
        return self.model.config.n_layer + 2

    @property
    def fingerprint(self) -> dict:
        cfg = self.model.config
        return {"type": self.name, "model_type": cfg.model_type, "hidden_size": cfg.d_model,
                "num_hidden_layers": cfg.n_layer, "vocab_size": cfg.vocab_size, "layer": self.layer}

    def require_lm_head(self):
        """The LM head, loaded on first use from the causal LM (HyenaDNAForCausalLM, hub remote code): the encoder's
        base model leaves it unused. Untested here: the remote code is not installable offline."""
        if self.lm_head is None:
            full, info = AutoModelForCausalLM.from_pretrained(self.name_or_path, trust_remote_code=True,
                                                              dtype=next(self.model.parameters()).dtype,
                                                              output_loading_info=True)
            head = full.get_output_embeddings()
            tied = head.weight is full.get_input_embeddings().weight  # a tied head is the (loaded) embeddings
            if any(k.startswith("lm_head.") for k in info.get("missing_keys", [])) and not tied:
                raise NoLMHeadError(f"encoder {self.name_or_path!r} (type 'hyenadna'): the checkpoint has no "
                                    "lm_head weights, so encoder_dll has no head that predicts bases")
            self.lm_head = head.to(next(self.model.parameters()).device).requires_grad_(False).eval()
        return self.lm_head

    def final_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # no attention mask (see forward); the windows are right-padded, so padding never reaches a real base
        return self.model(input_ids=input_ids, return_dict=True).last_hidden_state

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, output_hidden_states=True, return_dict=True)  # takes no mask
        return pack_positions(out.hidden_states[self.layer], dna_positions(self.tokenizer, input_ids, attention_mask))
