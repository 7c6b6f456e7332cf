"""Parsing a generated answer: the strict final `Answer:` line (`parse_answer`) and the reasoning before it
(`split_reasoning`). Text only: the GRPO rewards and the evaluation use it without importing `dnallm.inference`
(the model code); `dnallm.inference` re-exports both."""

from __future__ import annotations

import re

from dnallm.labels import KEGG_LABELS, normalize_label
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
    if "</think>" in text:  # the block was never opened (a cut or drifting generation): what precedes the close
        return text.split("</think>", 1)[0].strip()
    return re.sub(rf"\n?{ANSWER_PREFIX}.*$", "", text.strip(), flags=re.S).strip()
