"""DNALLMForConditionalGeneration: frozen DNA encoder -> projector -> (LoRA) causal LM, one transformers model.

Like transformers' LlavaForConditionalGeneration: three parts wired by one composite config (`DNALLMConfig`), and
one `forward` where the projected DNA replaces the `<|dna_pad|>` placeholder embeddings.
`model.generate(**processor(...))` takes every generation option; the DNA goes in at the prefill only.

A checkpoint stores the config, projector, LoRA adapter and processor, never the frozen encoder or base LM weights:
those load from `config.dna_config.encoder_name_or_path` and `config.text_model_name_or_path` (hub id or path;
relative paths resolve against the checkpoint folder).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (AutoModelForCausalLM, GenerationConfig, GenerationMixin, LogitsProcessor,
                          LogitsProcessorList, PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast

import dnallm.attention  # registers attn_implementation="sdpa_gqa"
from dnallm.configuration import DNALLMConfig
from dnallm.encoders import DNAEncoder, LoadingError, build_encoder
from dnallm.encoders.base import check_loading_info
from dnallm.losses import chunked_cross_entropy, chunked_token_logprobs
from dnallm.processing import DNALLMProcessor
from projectors import build_projector

PROJECTOR_FILE = "projector.safetensors"
ADAPTER_DIR = "adapter"
DNA_INPUTS = ("dna_input_ids", "dna_attention_mask", "dna_hidden_states", "dna_positions_mask")
# What of the LM's config must match between the checkpoint and the LM it is loaded onto.
TEXT_IDENTITY = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def _resolve(name_or_path: str, base: Path | None) -> str:
    """A component's path: relative to the checkpoint folder `base` when it exists there, else as given; a `./` or
    `../` path is always the checkpoint's (missing there: an error, never a folder under the current directory)."""
    if base is None or Path(name_or_path).is_absolute():
        return name_or_path
    if (base / name_or_path).exists():
        return str((base / name_or_path).resolve())
    if name_or_path.split("/")[0] in (".", ".."):
        raise FileNotFoundError(f"{name_or_path!r}, relative to the checkpoint {base}, does not exist ({base / name_or_path}"
                                "); copy it along with the checkpoint, or point the config at it "
                                "(from_pretrained(..., dna_config={'encoder_name_or_path': ...}) or "
                                "text_model_name_or_path=...)")
    return name_or_path


def _load_adapter(language_model, adapter: Path, is_trainable: bool) -> PeftModel:
    """The LM with the saved LoRA adapter; every adapter weight must be in the file (peft only warns)."""
    try:
        model = PeftModel.from_pretrained(language_model, adapter, is_trainable=is_trainable)
    except KeyError as e:  # peft's trainable-token rows, missing from the file
        raise LoadingError(f"loading {adapter}: missing adapter weight {e}") from e
    with safe_open(adapter / SAFETENSORS_WEIGHTS_NAME, "pt") as f:
        saved = set(f.keys())
    expected = set(get_peft_model_state_dict(model))
    if saved != expected:
        raise LoadingError(f"loading {adapter}: missing adapter weights {sorted(expected - saved)[:5]}, unexpected "
                           f"{sorted(saved - expected)[:5]}; refusing to run with initial LoRA weights")
    return model


def load_text_model(name_or_path: str, dtype: torch.dtype | None = None, attn_implementation: str | None = None):
    """The LM, attending with `attn_implementation`; by default transformers' choice, but `sdpa` becomes `sdpa_gqa`
    (dnallm.attention) when the LM groups its KV heads (Qwen3): 2.0x generation throughput (docs/benchmarks.md)."""
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model, info = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, output_loading_info=True, **kwargs)
    check_loading_info(info, name_or_path)
    c = model.config
    if (attn_implementation is None and c._attn_implementation == "sdpa"
            and getattr(c, "num_key_value_heads", None) not in (None, c.num_attention_heads)):
        model.set_attn_implementation(dnallm.attention.NAME)
    return model


@torch.no_grad()
def init_added_rows(language_model: nn.Module, token_ids: list[int]) -> None:
    """Set the embedding rows of tokens the processor added to the mean of the trained rows (those before the added
    ids): needed without a resize too (real Qwen3's DNA markers land on spare, never-trained rows)."""
    if not token_ids:
        return
    embeddings = language_model.get_input_embeddings().weight
    embeddings[token_ids] = embeddings[:min(token_ids)].float().mean(0).to(embeddings.dtype)


@dataclass
class DNALLMOutput(CausalLMOutputWithPast):
    """`loss`: the mean over answer tokens; `n_tokens`: how many (SFT weights micro-batches by it)."""

    n_tokens: int | None = None


# transformers 5.2x names the KV cache `cache`; the GPU image's 5.17 `past_key_values`.
CACHE_KWARG = ("cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
               else "past_key_values")


class DNALLMForConditionalGeneration(PreTrainedModel, GenerationMixin):
    config_class = DNALLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _can_compile_fullgraph = True  # the decoding step is the LM's own (the DNA splice runs at the prefill only)

    def __init__(self, config: DNALLMConfig, dna_encoder: DNAEncoder, language_model: nn.Module,
                 projector: nn.Module, processor: DNALLMProcessor):
        super().__init__(config)
        self.dna_encoder, self.projector, self.language_model = dna_encoder, projector, language_model
        self.processor = processor
        processor.window_size = config.dna_config.window_size  # windows of another size are refused
        self.lora_merged = False
        self.loss_chunk_size = 1024  # answer tokens per LM-head chunk in the training loss (dnallm.losses)
        # Greedy (a hub LM's sampling defaults do not carry over); never emit a DNA token: text fed back to the model
        # (answer tail, streaming, GRPO log-probs) must hold exactly the placeholders of its DNA windows.
        self.generation_config = GenerationConfig(
            do_sample=False, eos_token_id=processor.end_token_ids, pad_token_id=processor.tokenizer.pad_token_id,
            suppress_tokens=[*processor.dna_marker_ids, processor.dna_pad_id])
        self.post_init()
        # The wrapper attends as its LM: generate reads the top config, which PreTrainedModel.__init__ set to a default.
        self.config._attn_implementation_internal = language_model.config._attn_implementation

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Switch the LM's attention (e.g. "sdpa" <-> "sdpa_gqa", dnallm.attention); the wrapper follows it."""
        self.language_model.set_attn_implementation(attn_implementation)
        self.config._attn_implementation_internal = self.language_model.config._attn_implementation

    def init_weights(self):
        """Nothing to initialise (all parts arrive initialised); transformers' initialisation would overwrite them."""

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # ---- building and loading ----
    @classmethod
    def build(cls, config: DNALLMConfig, dtype: torch.dtype | None = None, base_dir: Path | None = None,
              attn_implementation: str | None = None) -> "DNALLMForConditionalGeneration":
        """A new model: pretrained encoder and LM from the config's paths, fresh projector and LoRA."""
        from dnallm.tokenization import load_text_tokenizer

        dna = config.dna_config
        dna_encoder = build_encoder(dna.encoder_type, _resolve(dna.encoder_name_or_path, base_dir), layer=dna.layer,
                                    dtype=dtype)
        tokenizer = load_text_tokenizer(_resolve(config.text_tokenizer_name_or_path, base_dir))
        language_model = load_text_model(_resolve(config.text_model_name_or_path, base_dir), dtype,
                                          attn_implementation)
        return cls.from_parts(config, dna_encoder, language_model, tokenizer, dtype)

    @classmethod
    def from_parts(cls, config: DNALLMConfig, dna_encoder: DNAEncoder, language_model: nn.Module, tokenizer,
                   dtype: torch.dtype | None = None) -> "DNALLMForConditionalGeneration":
        """Wire already-loaded parts (also used with random-init models of the real layouts in benchmarks)."""
        dna = config.dna_config
        if dna.fingerprint is None:
            dna.fingerprint = dna_encoder.fingerprint
        elif dna.fingerprint != dna_encoder.fingerprint:
            raise LoadingError(f"checkpoint was trained on encoder {dna.fingerprint}, but {dna.encoder_name_or_path!r} "
                               f"is {dna_encoder.fingerprint}")
        sample = dna_encoder.weight_sample()
        if dna.weight_sample is None:  # a new model, or a checkpoint saved before samples were recorded
            dna.weight_sample = sample
        elif not dna_encoder.same_weights(dna.weight_sample, sample):
            raise LoadingError(f"checkpoint was trained on other encoder weights than {dna.encoder_name_or_path!r} "
                               "holds (the same layout: a re-pretrained or another fine-tuned encoder?); its first "
                               f"weights were {dna.weight_sample[:3]}..., these are {sample[:3]}...")
        if config.text_config is not None:
            trained = {k: getattr(config.text_config, k, None) for k in TEXT_IDENTITY}
            loaded = {k: getattr(language_model.config, k, None) for k in TEXT_IDENTITY}
            if trained != loaded:
                raise LoadingError(f"checkpoint was trained on a text model with {trained}, but "
                                   f"{config.text_model_name_or_path!r} has {loaded}")
        processor = DNALLMProcessor(tokenizer, dna_encoder.tokenizer, dna_stride=config.projector_stride,
                                    dna_add_special_tokens=dna_encoder.add_special_tokens,
                                    dna_start_token=config.dna_start_token, dna_pad_token=config.dna_pad_token,
                                    dna_end_token=config.dna_end_token)
        if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
            language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        init_added_rows(language_model, processor.added_token_ids)
        language_model.requires_grad_(False)
        config.text_config = language_model.config  # one object: what generate's caches are sized from
        projector = build_projector(config.projector_type, dna_encoder.hidden_size, language_model.config.hidden_size,
                                    stride=config.projector_stride)
        if dtype is not None:
            projector.to(dtype)
        return cls(config, dna_encoder, language_model, projector, processor)

    def add_lora(self) -> None:
        c = self.config
        # The <|dna_start|>/<|dna_end|> rows train with the adapter (peft's trainable tokens, saved in the adapter);
        # <|dna_pad|> rows are always replaced by DNA embeddings.
        lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=c.lora_target_modules, task_type="CAUSAL_LM",
                          trainable_token_indices=list(self.processor.dna_marker_ids))
        self.language_model = get_peft_model(self.language_model, lora)
        c.has_adapter = True

    def merge_lora(self) -> "DNALLMForConditionalGeneration":
        """Fold the LoRA adapter into the LM weights for inference (same outputs); the model can then no longer be
        trained or saved."""
        if isinstance(self.language_model, PeftModel):
            self.language_model = self.language_model.merge_and_unload()
            self.lora_merged = True
        return self

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """Config, generation config, projector, adapter and processor; never the frozen weights (`kwargs` such as
        `safe_serialization` are accepted and unused)."""
        if self.lora_merged:
            raise ValueError("this model's LoRA adapter was merged into the LM for inference (merge_lora); "
                             "save the checkpoint from an unmerged model")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(path)
        self.generation_config.save_pretrained(path)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.projector.state_dict().items()},
                  path / PROJECTOR_FILE)
        if isinstance(self.language_model, PeftModel):
            # only the trained adapter (GRPO keeps a frozen copy as its KL reference, which is not the model)
            self.language_model.save_pretrained(path / ADAPTER_DIR, selected_adapters=["default"])
        self.processor.save_pretrained(path)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args, config: DNALLMConfig | None = None,
                        dtype: torch.dtype | str | None = None, is_trainable: bool = False,
                        attn_implementation: str | None = None, **kwargs) -> "DNALLMForConditionalGeneration":
        """Load a dnallm checkpoint folder or hub repo (also what `AutoModelForCausalLM.from_pretrained` calls): the
        frozen parts from their own paths, then the projector and adapter.

        Other keyword arguments override config fields (e.g. `dna_config={"encoder_name_or_path": ...}`); hub options
        (`revision`, `cache_dir`, `token`, `local_files_only`) go to `huggingface_hub.snapshot_download`.
        """
        path = Path(pretrained_model_name_or_path)
        hub = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        for k in ("trust_remote_code", "_from_auto", "_commit_hash", "adapter_kwargs"):
            kwargs.pop(k, None)  # what the Auto classes add; nothing here runs remote code
        if "torch_dtype" in kwargs:  # transformers' older name
            dtype = kwargs.pop("torch_dtype")
        unknown = sorted(set(kwargs) - set(inspect.signature(DNALLMConfig.__init__).parameters))
        if model_args or unknown:
            raise TypeError(f"unsupported arguments for a dnallm checkpoint: {list(model_args) + unknown} (the "
                            "frozen parts load from their own paths; keyword arguments may override config fields)")
        if not path.exists() and len(path.parts) == 2:  # "org/name": a checkpoint on the hub
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(str(pretrained_model_name_or_path), **hub))
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} is not a dnallm checkpoint (no config.json)")
        if config is None:
            config = DNALLMConfig.from_pretrained(path, **kwargs)
        elif kwargs:
            raise TypeError("give either config= or config field overrides, not both")
        if dtype == "auto":  # the dtype the text model was saved in
            dtype = getattr(config.text_config, "dtype", None) if config.text_config is not None else None
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        model = cls.build(config, dtype=dtype, base_dir=path, attn_implementation=attn_implementation)
        model.name_or_path = model.config._name_or_path = str(path)  # as transformers' from_pretrained sets them
        model.processor = DNALLMProcessor.from_pretrained(path)  # the exact tokenizers it was trained with
        model.processor.window_size = config.dna_config.window_size
        result = model.projector.load_state_dict(load_file(path / PROJECTOR_FILE), strict=False)
        check_loading_info(result._asdict(), str(path / PROJECTOR_FILE))
        if (path / ADAPTER_DIR).exists():
            model.language_model = _load_adapter(model.language_model, path / ADAPTER_DIR, is_trainable)
        elif config.has_adapter:
            raise LoadingError(f"{path}: the config records a LoRA adapter, but {ADAPTER_DIR}/ is missing; "
                               "refusing to run the text model without it")
        if (path / "generation_config.json").exists():
            model.generation_config = GenerationConfig.from_pretrained(path)
        return model

    # ---- the forward pass ----
    def get_dna_features(self, dna_input_ids=None, dna_attention_mask=None, dna_hidden_states=None,
                         dna_positions_mask=None) -> torch.Tensor:
        """Projected DNA tokens of all windows in the batch, flattened in order: [n_tokens, text_hidden]. Give the
        windows' encoder tokens, or their cached encoder outputs (`dna_hidden_states` + `dna_positions_mask`)."""
        if dna_hidden_states is None:
            dna_hidden_states, dna_positions_mask = self.dna_encoder(dna_input_ids, dna_attention_mask)
        variant_embeddings, tokens_mask = self.projector(dna_hidden_states, dna_positions_mask)
        return variant_embeddings[tokens_mask]

    def embed_inputs(self, input_ids: torch.Tensor, check_placeholders: bool = True, **dna) -> torch.Tensor:
        """The one place where DNA embeddings replace the `<|dna_pad|>` placeholder embeddings.

        Text without DNA inputs must hold no placeholder; continuations of a KV cache skip that check
        (`check_placeholders=False`): its device sync would stop the host from queueing ahead of the device."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        if all(v is None for v in dna.values()):
            if check_placeholders:
                self._check_no_placeholders(input_ids)
            return inputs_embeds
        placeholders = input_ids == self.processor.dna_pad_id
        dna_embeddings = self.get_dna_features(**dna).to(inputs_embeds.dtype)
        if dna_embeddings.shape[0] != int(placeholders.sum()):
            raise ValueError(f"{int(placeholders.sum())} DNA placeholder tokens in the text but the DNA windows "
                             f"yield {dna_embeddings.shape[0]} embeddings; build inputs with DNALLMProcessor")
        return inputs_embeds.masked_scatter(placeholders.unsqueeze(-1), dna_embeddings)

    def _check_no_placeholders(self, input_ids: torch.Tensor) -> None:
        if n := int((input_ids == self.processor.dna_pad_id).sum()):
            raise ValueError(f"{n} DNA placeholder tokens but no DNA inputs")

    def text_hidden_states(self, input_ids, attention_mask=None, position_ids=None, **dna) -> torch.Tensor:
        """The LM's last hidden states with the DNA spliced in, no KV cache: for losses that apply the 151k-wide output
        layer to a few positions only (SFT's answer tokens, GRPO's completions)."""
        decoder = self.language_model.get_decoder()
        return decoder(inputs_embeds=self.embed_inputs(input_ids, **dna), attention_mask=attention_mask,
                       position_ids=position_ids, use_cache=False).last_hidden_state

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                dna_input_ids=None, dna_attention_mask=None, dna_hidden_states=None, dna_positions_mask=None,
                labels=None, logits_to_keep: int | torch.Tensor = 0, cache=None, past_key_values=None,
                label_weights=None, **kwargs):
        """Logits (and the KV cache) of the LM over the text with its DNA spliced in; `kwargs` go to the LM. `cache` /
        `past_key_values` and `logits_to_keep` are named because `generate` looks for them in this signature (with
        `logits_to_keep`, the prefill's logits are computed at the last position only: ~38 GiB less peak at batch 128).

        With `labels` (-100 outside the answer): the mean cross-entropy over the answer tokens only, and no logits:
        the output layer runs on the answer alone, in chunks recomputed in backward (dnallm.losses)."""
        dna = dict(zip(DNA_INPUTS, (dna_input_ids, dna_attention_mask, dna_hidden_states, dna_positions_mask)))
        if labels is not None:
            if attention_mask is not None and attention_mask.dim() == 2 and not (attention_mask[:, 1:] > attention_mask[:, :-1]).any():
                # Right padding under a causal mask needs no padding mask (no real token attends to a later position;
                # padding carries no labels): plain causal attention, the same loss, 18-23 % faster SFT steps.
                attention_mask = None
            hidden = self.text_hidden_states(input_ids, attention_mask, position_ids, **dna)
            targets = labels[:, 1:]
            keep = targets != -100
            if label_weights is None:
                loss = chunked_cross_entropy(hidden[:, :-1][keep], self.get_output_embeddings(), targets[keep],
                                             self.loss_chunk_size)
            else:  # per-token weights (packed direct answers, dnallm.training): the weighted sum over the count
                logp = chunked_token_logprobs(hidden[:, :-1][keep], self.get_output_embeddings(), targets[keep],
                                              self.loss_chunk_size)
                loss = -(logp * label_weights[:, 1:][keep].to(logp.dtype)).sum() / keep.sum()
            return DNALLMOutput(loss=loss, n_tokens=int(keep.sum()))
        kv_cache = cache if cache is not None else past_key_values
        if kv_cache is not None:
            kwargs[CACHE_KWARG] = kv_cache
        if inputs_embeds is None:
            inputs_embeds = self.embed_inputs(input_ids, check_placeholders=kv_cache is None, **dna)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Copy each text row's DNA windows as one group (transformers' per-tensor repeat_interleave would pair the
        copies with the wrong windows: ref, ref / var, var)."""
        dna = {k: model_kwargs.pop(k) for k in DNA_INPUTS if model_kwargs.get(k) is not None}
        if expand_size > 1 and input_ids is not None:
            rows = input_ids.shape[0]
            dna = {k: v.unflatten(0, (rows, -1)).repeat_interleave(expand_size, 0).flatten(0, 1) for k, v in dna.items()}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids,
                                                                        **model_kwargs)
        return input_ids, {**model_kwargs, **dna}

    def generate(self, inputs=None, *args, logits_processor=None, think_opens_once: bool = True, **kwargs):
        """transformers' generate, with `ThinkOpensOnce` added where the tokenizer has `<think>` and the caller gave
        none. think_opens_once=False: the model's own distribution (GRPO samples on-policy)."""
        processors = LogitsProcessorList(logits_processor or [])
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        tok = self.processor.tokenizer
        think_id = tok.convert_tokens_to_ids("<think>")
        if (think_opens_once and input_ids is not None and think_id not in (None, tok.unk_token_id)
                and not any(isinstance(p, ThinkOpensOnce) for p in processors)):
            processors.append(ThinkOpensOnce(think_id, input_ids.shape[1]))
        return super().generate(inputs, *args, logits_processor=processors, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, *args, is_first_iteration: bool | None = False, **kwargs):
        """The DNA goes in at the prefill only: afterwards the KV cache holds it (without a cache, every step)."""
        dna = {k: kwargs.pop(k, None) for k in DNA_INPUTS}
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, is_first_iteration=is_first_iteration,
                                                             **kwargs)
        if is_first_iteration and all(v is None for v in dna.values()):
            # once per generate (the steps run with a cache, unchecked), on the ids this forward will read
            self._check_no_placeholders(model_inputs.get("input_ids", input_ids))
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs.update(dna)
        return model_inputs


class ThinkOpensOnce(LogitsProcessor):
    """A Qwen3 answer has one think block: once a row has generated `<think>`, it cannot generate it again (the tiny
    default otherwise reopens it in a few rows, docs/benchmarks.md; transformers' suppressors act on every step or
    the first only). A call that continues earlier output passes its own with the prompt's length."""

    def __init__(self, think_id: int, prompt_length: int):
        self.think_id, self.prompt_length = think_id, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        opened = (input_ids[:, self.prompt_length:] == self.think_id).any(1)
        scores[opened, self.think_id] = float("-inf")
        return scores


# Importing this module lets `AutoModelForCausalLM.from_pretrained(checkpoint)` load a dnallm checkpoint (not on
# `import dnallm`, which stays light).
AutoModelForCausalLM.register(DNALLMConfig, DNALLMForConditionalGeneration, exist_ok=True)
