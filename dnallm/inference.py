"""Inference shared by the API, the CLI, the evaluation and the app: one way to ask the model."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

from dnallm.data import WINDOW_SIZE, centred_windows, check_bases, split_kegg_sequences
from dnallm.labels import KEGG_LABELS, normalize_label
from dnallm.modeling import DNALLMForCausalLM
from dnallm.processing import ANSWER_PREFIX

_ANSWER_LINE = re.compile(rf"^{ANSWER_PREFIX}\s*(.+?)\s*$")


def parse_answer(text: str) -> str | None:
    """The label on the final `Answer:` line, or None.

    Strict: only the last non-empty line counts, it must read `Answer: <label>` and the label must be one
    of the 37; a disease named only in the reasoning is not an answer.
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    m = _ANSWER_LINE.match(lines[-1])
    if not m:
        return None
    label = normalize_label(m.group(1))
    return label if label in KEGG_LABELS else None


def split_reasoning(text: str) -> str:
    """The think-block content of a generated answer (or everything before the answer line)."""
    m = re.search(r"<think>(.*?)(</think>|$)", text, flags=re.S)
    if m:
        return m.group(1).strip()
    return re.sub(rf"\n?{ANSWER_PREFIX}.*$", "", text.strip(), flags=re.S).strip()


def prepare_windows(reference_sequence: str, variant_sequence: str, window: int = WINDOW_SIZE,
                    where: str = "input") -> tuple[str, str]:
    """Accept pre-cut windows (exactly `window` bp each) or KEGG-layout sequences (2000 bp flanks)."""
    ref, var = reference_sequence.strip().upper(), variant_sequence.strip().upper()
    try:
        check_bases(ref, "reference sequence")
        check_bases(var, "variant sequence")
        if len(ref) == window and len(var) == window:
            return ref, var
        if min(len(ref), len(var)) >= 4000:
            p = split_kegg_sequences(ref, var)
            return centred_windows(p.upstream, p.ref_allele, p.alt_allele, p.downstream, window)
        raise ValueError(f"wrong window length: reference {len(ref)} bp, variant {len(var)} bp; give two "
                         f"{window} bp windows centred on the variant, or KEGG-layout sequences (2000 bp flanks)")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


@lru_cache(maxsize=2)
def load_model(path: str, device: str | None = None, dtype: str | None = None) -> DNALLMForCausalLM:
    """Load a checkpoint once per process (the API, CLI and app share it)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = DNALLMForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype) if dtype else None)
    model.to(device).eval()
    return model


@torch.no_grad()
def generate_answers(model: DNALLMForCausalLM, questions: list[str], windows: list[tuple[str, str]],
                     batch_size: int = 16, max_new_tokens: int = 1024, progress=None) -> list[str]:
    """Greedy, deterministic answers (reasoning + answer line) for many questions, batched."""
    proc = model.processor
    texts: list[str] = []
    for i in range(0, len(questions), batch_size):
        batch = proc([proc.prompt(q) for q in questions[i:i + batch_size]],
                     [list(w) for w in windows[i:i + batch_size]], padding_side="left")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        new_tokens = model.generate(batch.pop("input_ids"), batch.pop("attention_mask"),
                                    max_new_tokens=max_new_tokens, **batch)
        texts += proc.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        if progress:
            progress(len(texts))
    return texts


@dataclass
class Explanation:
    label: str | None      # one of the 37 KEGG labels, or None when the answer line is missing/invalid
    reasoning: str
    raw_text: str

    def to_dict(self) -> dict:
        return asdict(self)


def explain_variant(question: str, reference_sequence: str, variant_sequence: str,
                    model: str | Path | DNALLMForCausalLM = "runs/quickstart",
                    max_new_tokens: int = 1024) -> Explanation:
    """Ask the model about one variant; returns its label, its reasoning and the raw generated text."""
    if not isinstance(model, DNALLMForCausalLM):
        model = load_model(str(Path(model).resolve()))
    windows = prepare_windows(reference_sequence, variant_sequence, model.config.window_size)
    raw = generate_answers(model, [question], [windows], max_new_tokens=max_new_tokens)[0]
    return Explanation(label=parse_answer(raw), reasoning=split_reasoning(raw), raw_text=raw)
