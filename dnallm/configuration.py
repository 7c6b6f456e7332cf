"""The composite config that wires the DNA encoder, the projector and the text model together (like LlavaConfig).

    DNALLMConfig
      dna_config   DNAEncoderConfig: which frozen encoder (type, hub id or path, layer, window) and its fingerprint
      text_config  the causal LM's own config (Qwen3Config, ...), filled from the LM when a model is built
      + projector settings, the DNA marker tokens, the LoRA recipe and the answer forms SFT trained
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto import CONFIG_MAPPING


class DNAEncoderConfig(PretrainedConfig):
    model_type = "dnallm_dna_encoder"
    base_config_key = "dna_config"

    def __init__(self, encoder_type: str = "genos", encoder_name_or_path: str = "ZhejiangLab/Genos-1.2B", layer: int = -1,
                 window_size: int = 1024, fingerprint: dict | None = None, weight_sample: list | None = None,
                 **kwargs):
        self.encoder_type = encoder_type
        self.encoder_name_or_path = encoder_name_or_path  # a relative path resolves against the checkpoint folder
        self.layer = layer
        self.window_size = window_size
        # Filled when a model is built, checked on load: the encoder's layout, and 16 of its weights (the layout
        # alone does not tell a re-pretrained encoder from the one the checkpoint was trained on).
        self.fingerprint = fingerprint
        self.weight_sample = weight_sample
        super().__init__(**kwargs)


class DNALLMConfig(PretrainedConfig):
    model_type = "dnallm"
    sub_configs = {"dna_config": DNAEncoderConfig, "text_config": AutoConfig}

    def __init__(
        self,
        dna_config: DNAEncoderConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        text_model_name_or_path: str = "Qwen/Qwen3-4B",
        text_tokenizer_name_or_path: str | None = None,
        projector_type: str = "mlp",
        projector_stride: int = 1,
        dna_start_token: str = "<|dna_start|>",
        dna_pad_token: str = "<|dna_pad|>",
        dna_end_token: str = "<|dna_end|>",
        lora_r: int = 32,
        lora_alpha: int = 64,
        lora_dropout: float = 0.05,
        lora_target_modules: str | list[str] = "all-linear",
        answer_modes: list[str] | None = None,
        has_adapter: bool = False,
        **kwargs,
    ):
        flat = sorted(k for k in ("encoder_type", "encoder_name_or_path", "encoder_layer", "window_size") if k in kwargs)
        if flat:
            raise ValueError(f"config has the flat encoder keys {flat} of dnallm 0.1; this version keeps them in "
                             "dna_config (encoder_type, encoder_name_or_path, layer, window_size): retrain, or move them there")
        self.dna_config = DNAEncoderConfig(**dna_config) if isinstance(dna_config, dict) else (
            dna_config or DNAEncoderConfig())
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config["model_type"]](**text_config)
        # None until a model is built: then the LM's own config object (vocabulary resized for the DNA tokens).
        self.text_config = text_config
        self.text_model_name_or_path = text_model_name_or_path
        self.text_tokenizer_name_or_path = text_tokenizer_name_or_path or text_model_name_or_path
        self.projector_type = projector_type
        self.projector_stride = projector_stride
        self.dna_start_token = dna_start_token
        self.dna_pad_token = dna_pad_token
        self.dna_end_token = dna_end_token
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules
        # Set by SFT: the answer forms the model was trained on, "thinking" (reasoning + answer line) and/or
        # "direct" (the answer line alone, non-thinking mode). Label scoring reads the direct form.
        self.answer_modes = answer_modes
        # Set by add_lora: the checkpoint has a LoRA adapter/ folder, and loading it without one is an error.
        self.has_adapter = has_adapter
        super().__init__(**kwargs)


AutoConfig.register(DNALLMConfig.model_type, DNALLMConfig, exist_ok=True)
