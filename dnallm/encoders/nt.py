"""Nucleotide Transformer (InstaDeep): an ESM-layout masked DNA LM over non-overlapping 6-mers plus a CLS.

Tokens (transformers' EsmTokenizer): `<cls>` then one token per 6-mer; bases that do not fill a 6-mer (at the end,
or around an `N`) become single-nucleotide tokens (a 1024 bp window: 170 six-mers + 4 single bases).

Model: NT v1 is plain ESM. NT v2 has a bias-free SwiGLU feed-forward (`add_bias_fnn: false`), shipped as remote
code that no longer imports under transformers >= 5 (instadeepai/nucleotide-transformer#149). So `NTForMaskedLM` is
transformers' EsmForMaskedLM with that FFN swapped in when the config asks for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer, EsmForMaskedLM, EsmModel

from dnallm.encoders.base import DNAEncoder, checked_lm_head

HUB_IDS = {
    "nt-v2-500m": "InstaDeepAI/nucleotide-transformer-v2-500m-multi-species",
    "nt-v2-250m": "InstaDeepAI/nucleotide-transformer-v2-250m-multi-species",
    "nt-v2-100m": "InstaDeepAI/nucleotide-transformer-v2-100m-multi-species",
    "nt-v2-50m": "InstaDeepAI/nucleotide-transformer-v2-50m-multi-species",
}


def uses_glu_ffn(config) -> bool:
    """NT v2 configs carry `add_bias_fnn` (false); its FFN is then gated. NT v1 / plain ESM configs lack it."""
    return hasattr(config, "add_bias_fnn")


class GatedFFN(nn.Module):
    """NT v2's feed-forward input half: one projection to 2 x intermediate, SiLU(first half) * second half."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=config.add_bias_fnn)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate, value = self.dense(hidden_states).chunk(2, dim=-1)
        return F.silu(gate) * value


class FFNOutput(nn.Module):
    """NT v2's feed-forward output half: projection back to hidden (bias per `add_bias_fnn`), plus the residual."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.add_bias_fnn)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states)) + input_tensor


def use_glu_ffn(esm: EsmModel, config) -> None:
    """Give every layer of an EsmModel NT v2's feed-forward (same parameter names as the hub checkpoints)."""
    for layer in esm.encoder.layer:
        layer.intermediate = GatedFFN(config)
        layer.output = FFNOutput(config)


class NTForMaskedLM(EsmForMaskedLM):
    """transformers' EsmForMaskedLM, with NT v2's gated feed-forward when the config asks for it (loaded whole, so
    that the strict weight check sees every tensor where it belongs; the encoder keeps `.esm`)."""

    def __init__(self, config):
        super().__init__(config)
        if uses_glu_ffn(config):
            use_glu_ffn(self.esm, config)


class NTEncoder(DNAEncoder):
    name = "nt"
    add_special_tokens = True  # NT is trained with a leading <cls>; it is run but is not a DNA position
    zero_shot = "masked"  # a masked LM: the zero-shot score is the masked-slot log-odds at the changed tokens

    @classmethod
    def from_pretrained(cls, name_or_path: str, layer: int = -1, dtype: torch.dtype | None = None) -> "NTEncoder":
        name_or_path = HUB_IDS.get(name_or_path.lower(), name_or_path)
        model, info = NTForMaskedLM.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True)
        # The contact head is never run, so it need not be in the checkpoint; an old one may hold the position-id
        # buffer (a fixed arange).
        info = {**info, "missing_keys": [k for k in info.get("missing_keys", []) if "contact_head." not in k]}
        lm_head = checked_lm_head(model, info, name_or_path, ignore_unexpected=("esm.embeddings.position_ids",))
        return cls(model.esm, AutoTokenizer.from_pretrained(name_or_path), layer, name_or_path, lm_head=lm_head)

    @property
    def fingerprint(self) -> dict:
        return {**super().fingerprint, "gated_ffn": uses_glu_ffn(self.model.config)}

    @torch.no_grad()
    def masked_log_odds(self, pairs: list[tuple[str, str]]) -> torch.Tensor:
        """The masked-marginal score (Meier et al. 2021) of each (reference, variant) window pair, float64 [n]: every
        token slot where they differ is masked in the reference at once, and the score sums log p(variant token) -
        log p(reference token) over them. Windows whose token counts differ (an N breaks the 6-mer grid): ValueError."""
        head = self.require_lm_head()
        device = next(self.model.parameters()).device
        refs = self.tokenize([r for r, _ in pairs])
        variants = self.tokenize([v for _, v in pairs])
        if refs["input_ids"].shape != variants["input_ids"].shape or \
                not refs["attention_mask"].equal(variants["attention_mask"]):
            lengths = [(len(self.tokenizer.tokenize(r)), len(self.tokenizer.tokenize(v))) for r, v in pairs]
            bad = next(i for i, (a, b) in enumerate(lengths) if a != b)
            raise ValueError(f"window pair {bad}: the reference is {lengths[bad][0]} NT tokens, the variant "
                             f"{lengths[bad][1]}: masked-slot scoring pairs the two tokenizations slot by slot, so "
                             "they must be the same length (an N in one window breaks the 6-mer grid)")
        ref_ids, var_ids = refs["input_ids"].to(device), variants["input_ids"].to(device)
        attention = refs["attention_mask"].to(device)
        changed = (ref_ids != var_ids) & attention.bool()
        masked = ref_ids.masked_fill(changed, self.tokenizer.mask_token_id)
        logp = torch.log_softmax(head(self.final_states(masked, attention)).float(), -1)
        odds = logp.gather(-1, var_ids[..., None]).squeeze(-1) - logp.gather(-1, ref_ids[..., None]).squeeze(-1)
        return (odds.double() * changed).sum(1).cpu()
