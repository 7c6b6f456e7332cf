"""DNALLMConfig: the one config that wires encoder, projector and text model together."""

from __future__ import annotations

from transformers import PretrainedConfig


class DNALLMConfig(PretrainedConfig):
    model_type = "dnallm"

    def __init__(
        self,
        encoder_type: str = "genos",
        encoder_name_or_path: str = "ZhejiangLab/Genos-1.2B",
        encoder_layer: int = -1,
        encoder_fingerprint: dict | None = None,
        projector_type: str = "mlp",
        projector_stride: int = 1,
        text_model_name_or_path: str = "Qwen/Qwen3-4B",
        text_tokenizer_name_or_path: str | None = None,
        dna_start_token: str = "<|dna_start|>",
        dna_pad_token: str = "<|dna_pad|>",
        dna_end_token: str = "<|dna_end|>",
        window_size: int = 1024,
        lora_r: int = 32,
        lora_alpha: int = 64,
        lora_dropout: float = 0.05,
        lora_target_modules: str | list[str] = "all-linear",
        answer_modes: list[str] | None = None,
        **kwargs,
    ):
        self.encoder_type = encoder_type
        self.encoder_name_or_path = encoder_name_or_path
        self.encoder_layer = encoder_layer
        # Filled when a model is built: the encoder's identity, checked again on load.
        self.encoder_fingerprint = encoder_fingerprint
        self.projector_type = projector_type
        self.projector_stride = projector_stride
        self.text_model_name_or_path = text_model_name_or_path
        self.text_tokenizer_name_or_path = text_tokenizer_name_or_path or text_model_name_or_path
        self.dna_start_token = dna_start_token
        self.dna_pad_token = dna_pad_token
        self.dna_end_token = dna_end_token
        self.window_size = window_size
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules
        # Set by SFT: the answer forms the model was trained on, "thinking" (reasoning + answer line) and/or
        # "direct" (the answer line alone, non-thinking mode). Label scoring reads the direct form.
        self.answer_modes = answer_modes
        super().__init__(**kwargs)
