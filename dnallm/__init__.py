"""dnallm: multimodal DNA-language reasoning about genetic variants.

A frozen DNA encoder embeds the reference and variant windows, a projector maps them into a causal LM's
token-embedding space, and the LM (LoRA-tuned) answers with reasoning and one of 37 KEGG disease labels.
"""

from dnallm.configuration import DNALLMConfig
from dnallm.labels import KEGG_LABELS

__version__ = "0.1.0"


# Heavy imports (transformers models, peft) happen on first use, not on `import dnallm`.
_LAZY = {"explain_variant": "dnallm.inference", "Explanation": "dnallm.inference", "parse_answer": "dnallm.parsing",
         "DNALLMForConditionalGeneration": "dnallm.modeling", "DNALLMProcessor": "dnallm.processing"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = ["DNALLMConfig", "KEGG_LABELS", *_LAZY]
