"""DNALLMForCausalLM: frozen DNA encoder -> projector -> (LoRA) causal LM, spliced in `embed_inputs`.

A checkpoint stores the config, the projector, the LoRA adapter and the processor (tokenizers), never
the frozen encoder or base LM weights: those are loaded from `encoder_name_or_path` and
`text_model_name_or_path` (hub id or local path; relative paths resolve against the checkpoint folder).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM

from dnallm.configuration import DNALLMConfig
from dnallm.encoders import DNAEncoder, LoadingError, build_encoder
from dnallm.encoders.base import check_loading_info
from dnallm.losses import chunked_cross_entropy
from dnallm.processing import DNALLMProcessor
from projectors import build_projector

PROJECTOR_FILE = "projector.safetensors"
ADAPTER_DIR = "adapter"


def _resolve(name_or_path: str, base: Path | None) -> str:
    if base is not None and not Path(name_or_path).is_absolute() and (base / name_or_path).exists():
        return str((base / name_or_path).resolve())
    return name_or_path


def load_text_model(name_or_path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None):
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model, info = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True, **kwargs)
    check_loading_info(info, name_or_path)
    return model


@torch.no_grad()
def init_added_rows(text_model: nn.Module, token_ids: list[int]) -> None:
    """Set the embedding rows of tokens the processor added to the mean of the other rows.

    Needed with or without a resize: real Qwen3 has 151,936 embedding rows for 151,669 tokens, so the DNA
    markers land on spare rows that were never trained (no resize happens, so no mean-resizing either).
    """
    if not token_ids:
        return
    embeddings = text_model.get_input_embeddings().weight
    # Added tokens get the ids after the tokenizer's own; the rows before them are the trained vocabulary.
    embeddings[token_ids] = embeddings[:min(token_ids)].float().mean(0).to(embeddings.dtype)


class DNALLMForCausalLM(nn.Module):
    def __init__(self, config: DNALLMConfig, encoder: DNAEncoder, text_model: nn.Module, projector: nn.Module,
                 processor: DNALLMProcessor):
        super().__init__()
        self.config, self.encoder, self.text_model, self.projector = config, encoder, text_model, projector
        self.processor = processor
        self.dna_pad_id = processor.dna_pad_id
        self.lora_merged = False
        self.loss_chunk_size = 1024  # answer tokens per LM-head chunk in the training loss (dnallm.losses)

    # ---- building and loading ----
    @classmethod
    def build(cls, config: DNALLMConfig, dtype: torch.dtype | None = None, base_dir: Path | None = None,
              attn_implementation: str | None = None) -> "DNALLMForCausalLM":
        """A new model: pretrained encoder and LM from the config's paths, fresh projector and LoRA."""
        from dnallm.tokenization import load_text_tokenizer

        encoder = build_encoder(config.encoder_type, _resolve(config.encoder_name_or_path, base_dir),
                                layer=config.encoder_layer, dtype=dtype)
        tokenizer = load_text_tokenizer(_resolve(config.text_tokenizer_name_or_path, base_dir))
        text_model = load_text_model(_resolve(config.text_model_name_or_path, base_dir), dtype, attn_implementation)
        return cls.from_parts(config, encoder, text_model, tokenizer, dtype)

    @classmethod
    def from_parts(cls, config: DNALLMConfig, encoder: DNAEncoder, text_model: nn.Module, tokenizer,
                   dtype: torch.dtype | None = None) -> "DNALLMForCausalLM":
        """Wire already-loaded parts (also used with random-init models of the real layouts in benchmarks)."""
        if config.encoder_fingerprint is None:
            config.encoder_fingerprint = encoder.fingerprint
        elif config.encoder_fingerprint != encoder.fingerprint:
            raise LoadingError(f"checkpoint was trained on encoder {config.encoder_fingerprint}, but "
                               f"{config.encoder_name_or_path!r} is {encoder.fingerprint}")
        processor = DNALLMProcessor(tokenizer, encoder.tokenizer, dna_stride=config.projector_stride,
                                    dna_add_special_tokens=encoder.add_special_tokens,
                                    dna_start_token=config.dna_start_token, dna_pad_token=config.dna_pad_token,
                                    dna_end_token=config.dna_end_token)
        if len(tokenizer) > text_model.get_input_embeddings().num_embeddings:
            text_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        init_added_rows(text_model, processor.added_token_ids)
        text_model.requires_grad_(False)
        projector = build_projector(config.projector_type, encoder.hidden_size, text_model.config.hidden_size,
                                    stride=config.projector_stride)
        if dtype is not None:
            projector.to(dtype)
        return cls(config, encoder, text_model, projector, processor)

    def add_lora(self) -> None:
        c = self.config
        # The <|dna_start|>/<|dna_end|> rows train with the adapter (peft's trainable tokens: only those rows
        # get gradients and are saved in the adapter); <|dna_pad|> rows are always replaced by DNA embeddings.
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=c.lora_target_modules, task_type="CAUSAL_LM",
                          trainable_token_indices=list(self.processor.dna_marker_ids))
        self.text_model = get_peft_model(self.text_model, lora)

    def merge_lora(self) -> "DNALLMForCausalLM":
        """Fold the LoRA adapter into the LM weights, for inference: same outputs, no adapter kernels per layer.

        A merged model can no longer be trained or saved as a checkpoint (the adapter is gone).
        """
        if isinstance(self.text_model, PeftModel):
            self.text_model = self.text_model.merge_and_unload()
            self.lora_merged = True
        return self

    def save_pretrained(self, path: str | Path) -> None:
        if self.lora_merged:
            raise ValueError("this model's LoRA adapter was merged into the LM for inference (merge_lora); "
                             "save the checkpoint from an unmerged model")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()},
                  path / PROJECTOR_FILE)
        if isinstance(self.text_model, PeftModel):
            # only the trained adapter (GRPO keeps a frozen copy as its KL reference, which is not the model)
            self.text_model.save_pretrained(path / ADAPTER_DIR, selected_adapters=["default"])
        self.processor.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | None = None, is_trainable: bool = False,
                        attn_implementation: str | None = None, **config_overrides) -> "DNALLMForCausalLM":
        path = Path(path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a dnallm checkpoint (no config.json)")
        config = DNALLMConfig.from_pretrained(path, **config_overrides)
        model = cls.build(config, dtype=dtype, base_dir=path, attn_implementation=attn_implementation)
        model.processor = DNALLMProcessor.from_pretrained(path)  # the exact tokenizers it was trained with
        state = load_file(path / PROJECTOR_FILE)
        result = model.projector.load_state_dict(state, strict=False)
        check_loading_info({"missing_keys": result.missing_keys, "unexpected_keys": result.unexpected_keys},
                           str(path / PROJECTOR_FILE))
        if (path / ADAPTER_DIR).exists():
            model.text_model = PeftModel.from_pretrained(model.text_model, path / ADAPTER_DIR, is_trainable=is_trainable)
        return model

    # ---- the forward pass ----
    def project_dna(self, dna_input_ids=None, dna_attention_mask=None, dna_hidden_states=None,
                    dna_positions_mask=None) -> torch.Tensor:
        """Projected DNA tokens of all windows in the batch, flattened in order: [n_tokens, text_hidden]."""
        if dna_hidden_states is None:  # no cached encoder outputs: run the frozen encoder
            dna_hidden_states, dna_positions_mask = self.encoder(dna_input_ids, dna_attention_mask)
        variant_embeddings, tokens_mask = self.projector(dna_hidden_states, dna_positions_mask)
        return variant_embeddings[tokens_mask]

    def embed_inputs(self, input_ids: torch.Tensor, **dna) -> torch.Tensor:
        """The one place where DNA embeddings replace the `<|dna_pad|>` placeholder embeddings."""
        inputs_embeds = self.text_model.get_input_embeddings()(input_ids)
        placeholders = input_ids == self.dna_pad_id
        if not any(v is not None for v in dna.values()):
            if placeholders.any():
                raise ValueError(f"{int(placeholders.sum())} DNA placeholder tokens but no DNA inputs")
            return inputs_embeds
        dna_embeddings = self.project_dna(**dna).to(inputs_embeds.dtype)
        if dna_embeddings.shape[0] != int(placeholders.sum()):
            raise ValueError(f"{int(placeholders.sum())} DNA placeholder tokens in the text but the DNA windows "
                             f"yield {dna_embeddings.shape[0]} embeddings; build inputs with DNALLMProcessor")
        return inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), dna_embeddings)

    def forward(self, input_ids, attention_mask=None, labels=None, dna_input_ids=None, dna_attention_mask=None,
                dna_hidden_states=None, dna_positions_mask=None, position_ids=None):
        inputs_embeds = self.embed_inputs(input_ids, dna_input_ids=dna_input_ids,
                                          dna_attention_mask=dna_attention_mask,
                                          dna_hidden_states=dna_hidden_states, dna_positions_mask=dna_positions_mask)
        if labels is None:
            return self.text_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids)
        # Loss on answer tokens only: the 151k-wide output layer is never applied to the prompt and DNA
        # positions, and on the answer it runs in chunks whose logits are recomputed for backward.
        base = self.text_model.get_base_model() if isinstance(self.text_model, PeftModel) else self.text_model
        hidden = base.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != -100
        loss = chunked_cross_entropy(hidden[:, :-1][keep], base.lm_head, targets[keep], self.loss_chunk_size)
        return {"loss": loss, "n_tokens": int(keep.sum())}

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int = 768, do_sample: bool = False,
                 temperature: float = 1.0, static_cache: bool = False, stop_token_ids: list[int] = (),
                 **dna) -> torch.Tensor:
        """Greedy (default) or sampled decoding; returns only the new tokens. Batches must be left-padded.

        static_cache=True preallocates the KV cache for prompt + max_new_tokens; on CUDA, transformers then
        compiles the decoding step (torch.compile, CUDA graphs), which removes the per-token Python and
        cache-growing overhead that dominates batched decoding. Each new (batch, length) shape compiles once,
        so callers should keep shapes few (see `generate_answers`). Decoding stops at the end-of-turn token and at
        any of `stop_token_ids` (e.g. `</think>`, where a constrained answer takes over).
        """
        inputs_embeds = self.embed_inputs(input_ids, **dna)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0} if do_sample else {
            "do_sample": False}
        if static_cache:
            sampling["cache_implementation"] = "static"
        return self.text_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                        max_new_tokens=max_new_tokens, **self.decoding_kwargs(stop_token_ids),
                                        **sampling)

    def decoding_kwargs(self, stop_token_ids=()) -> dict:
        """Options every generation shares: stop at every end token (and `stop_token_ids`); never emit a DNA
        token (`<|dna_start|>`/`<|dna_pad|>`/`<|dna_end|>`): text that is fed back to the model (the answer
        tail, streaming, GRPO log-probs) must hold exactly the placeholders of its DNA windows."""
        proc = self.processor
        return {"eos_token_id": [*proc.end_token_ids, *stop_token_ids],
                "pad_token_id": proc.tokenizer.pad_token_id,
                "suppress_tokens": [*proc.dna_marker_ids, proc.dna_pad_id]}

    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device
