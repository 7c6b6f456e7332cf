"""dnallm: multimodal DNA-language reasoning about genetic variants.

A frozen DNA encoder embeds the reference and variant windows, a projector maps them into a causal LM's
token-embedding space, and the LM (LoRA-tuned) answers with reasoning and one of 37 KEGG disease labels.
"""

from dnallm.configuration import DNALLMConfig
from dnallm.labels import KEGG_LABELS

__version__ = "0.1.0"


def __getattr__(name):
    # Heavy imports (transformers models, peft) happen on first use, not on `import dnallm`.
    if name in ("explain_variant", "Explanation"):
        from dnallm import inference

        return getattr(inference, name)
    if name == "parse_answer":
        from dnallm.parsing import parse_answer

        return parse_answer
    if name == "DNALLMForConditionalGeneration":
        from dnallm.modeling import DNALLMForConditionalGeneration

        return DNALLMForConditionalGeneration
    if name == "DNALLMProcessor":
        from dnallm.processing import DNALLMProcessor

        return DNALLMProcessor
    raise AttributeError(name)


__all__ = ["DNALLMConfig", "DNALLMForConditionalGeneration", "DNALLMProcessor", "KEGG_LABELS", "explain_variant",
           "Explanation", "parse_answer"]
