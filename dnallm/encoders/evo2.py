"""Evo 2 (Arc Institute): a StripedHyena 2 causal DNA LM with one byte-level token per base, via the `evo2` package.

Loading: `evo2.Evo2(model_name)` builds the model on CUDA (vortex; flash-attn, and Transformer Engine FP8 for
Evo2-1B on a Hopper GPU), so `evo2` is imported only inside `from_pretrained`, after checking for CUDA.

Embeddings: `Evo2.__call__(input_ids, return_embeddings=True, layer_names=[name])` returns the named module's
output; an integer layer i means `blocks.{i}.mlp.l3` (BioReason uses block 20 of Evo2-1B's 25).

Tokens: vortex's CharLevelTokenizer (each byte -> its value, pad id 1, nothing added) is rebuilt as a fast
tokenizer with the same ids for ASCII, so that DNALLMProcessor can batch, save and reload it; right padding leaves
a causal model's real positions unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dnallm.encoders.base import DNAEncoder, char_tokenizer, dna_positions, pack_positions

HUB_IDS = {"evo2-1b": "evo2_1b_base", "arcinstitute/evo2_1b_base": "evo2_1b_base",
           "evo2-7b": "evo2_7b", "arcinstitute/evo2_7b": "evo2_7b"}
DEFAULT_LAYERS = {"evo2_1b_base": "blocks.20.mlp.l3",  # BioReason's choice for Evo2-1B
                  "evo2_7b": "blocks.28.mlp.l3"}       # the evo2 README's embedding example

EOD_ID, PAD_ID = 0, 1  # vortex CharLevelTokenizer: eod/eos 0, pad 1


def build_evo2_tokenizer(model_max_length: int = 8192):
    """Evo 2's byte-level ids for ASCII text (each character -> its code), pad id 1, no added tokens."""
    vocab = {"<eod>": EOD_ID, "<pad>": PAD_ID, **{chr(i): i for i in range(33, 127)}}  # printable ASCII
    return char_tokenizer(vocab, eos_token="<eod>", pad_token="<pad>", model_max_length=model_max_length)


def resolve_model(name_or_path: str) -> tuple[str, str | None]:
    """(evo2 model name, local .pt checkpoint or None) from an alias, an evo2 name, a hub id or a .pt path."""
    if name_or_path.endswith(".pt"):
        return Path(name_or_path).stem, name_or_path
    name = HUB_IDS.get(name_or_path.lower(), name_or_path)
    return name.removeprefix("arcinstitute/"), None


def layer_name(layer: int | str | None, model_name: str, num_layers: int) -> str:
    if layer is None:
        if model_name not in DEFAULT_LAYERS:
            raise ValueError(f"no default Evo2 layer for {model_name!r}; pass layer (e.g. 'blocks.20.mlp.l3')")
        return DEFAULT_LAYERS[model_name]
    if isinstance(layer, int):
        if not -num_layers <= layer < num_layers:  # modulo, blocks.30 of 25 read block 5
            raise ValueError(f"Evo2 layer {layer} is out of range: {model_name} has {num_layers} blocks "
                             f"({-num_layers}..{num_layers - 1})")
        return f"blocks.{layer % num_layers}.mlp.l3"
    return layer


class Evo2Encoder(DNAEncoder):
    name = "evo2"
    add_special_tokens = False
    zero_shot = "causal"  # StripedHyena's forward returns next-base logits: the head is always there

    def __init__(self, evo2_model, layer: int | str | None, name_or_path: str):
        """`evo2_model` is an `evo2.Evo2`: its `.model` (the StripedHyena module) is what gets frozen."""
        model_name, _ = resolve_model(name_or_path)
        super().__init__(evo2_model.model, build_evo2_tokenizer(), None, name_or_path)
        self.evo2 = evo2_model  # not a module: Evo2 wraps `.model` and holds the embedding hooks
        self.layer = layer_name(layer, model_name, self.model.config.num_layers)
        self.model.get_submodule(self.layer)  # fail now, not at the first batch, if the name is wrong

    @classmethod
    def from_pretrained(cls, name_or_path: str, layer: int | str | None = None,
                        dtype: torch.dtype | None = None) -> "Evo2Encoder":
        """Evo 2 by name ('evo2-1b', 'evo2_1b_base', 'arcinstitute/evo2_1b_base') or local .pt checkpoint.

        dtype is not used: vortex sets each Evo 2 model's own precision (bf16, FP8 projections on 1B).
        """
        if not torch.cuda.is_available():
            raise RuntimeError("Evo2 needs a CUDA GPU: the `evo2` package (vortex with flash-attn, and Transformer "
                               "Engine FP8 for Evo2-1B on a Hopper GPU) runs only on NVIDIA GPUs, and no CUDA "
                               "device is available here. Use another encoder (genos, nt, hyenadna) on CPU.")
        try:
            from evo2 import Evo2
        except ImportError as err:
            raise ImportError("the Evo2 encoder needs the `evo2` package (pip install evo2; it needs flash-attn, "
                              "and transformer-engine for Evo2-1B): see https://github.com/ArcInstitute/evo2") from err
        model_name, local_path = resolve_model(name_or_path)
        return cls(Evo2(model_name, local_path=local_path), layer, name_or_path)

    @property
    def fingerprint(self) -> dict:
        cfg = self.model.config
        return {"type": self.name, "model_type": cfg.get("model_name", "evo2"), "hidden_size": cfg.hidden_size,
                "num_hidden_layers": cfg.num_layers, "vocab_size": cfg.vocab_size, "layer": self.layer}

    def require_lm_head(self):
        """Evo 2's logits come from the model's own (tied) unembedding: there is always a head."""
        return self.model

    @torch.no_grad()
    def log_likelihoods(self, windows: list[str]) -> torch.Tensor:
        """Sum of next-base log-probs per window, from the logits `Evo2.__call__` returns (with inference_params).
        Untested here: evo2 runs on CUDA only."""
        batch = {k: v.to("cuda") for k, v in self.tokenize(windows).items()}
        ids, attention = batch["input_ids"], batch["attention_mask"]
        out, _ = self.evo2(ids)
        logits = out[0] if isinstance(out, tuple) else out
        return self.causal_sum(logits, ids, attention)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, embeddings = self.evo2(input_ids, return_embeddings=True, layer_names=[self.layer])
        return pack_positions(embeddings[self.layer], dna_positions(self.tokenizer, input_ids, attention_mask))
