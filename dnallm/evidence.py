"""Evidence for an answer: did the variant itself move the model?

Ref-vs-alt contrast: the 37 label probabilities with the variant window (the answer's own scoring) and with the
reference window fed in its place (both DNA slots hold the reference: "no variant"). The change of the answer's
label (`delta_p`) and the labels that moved most say how much of the answer the variant carries; with the
question and the reference fixed, everything that differs is the variant's doing. One extra scoring pass.
"""

from __future__ import annotations

import torch

from dnallm.labels import KEGG_LABELS


def no_variant_windows(windows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The control input of the contrast: the reference window in both DNA slots."""
    return [(reference, reference) for reference, _ in windows]


def ref_vs_alt(variant_probs: torch.Tensor, reference_probs: torch.Tensor, label: str | None,
               movers: int = 3) -> dict:
    """The contrast of one question: probabilities [37] with the variant and with the reference in its place.

    `label`: the answer's label (None for an answer that did not parse: the contrast then reads the most
    probable label under the variant). Returns the label's probability both ways, `delta_p` (variant minus
    reference), the label the reference alone would give, and the `movers` labels with the largest |change|."""
    if variant_probs.shape != (len(KEGG_LABELS),) or reference_probs.shape != variant_probs.shape:
        raise ValueError(f"expected two [{len(KEGG_LABELS)}] probability vectors, got {tuple(variant_probs.shape)} "
                         f"and {tuple(reference_probs.shape)}")
    if label is None:
        label = KEGG_LABELS[int(variant_probs.argmax())]
    if label not in KEGG_LABELS:
        raise ValueError(f"unknown label {label!r}")
    j = KEGG_LABELS.index(label)
    change = (variant_probs - reference_probs).tolist()
    order = sorted(range(len(KEGG_LABELS)), key=lambda i: -abs(change[i]))[:movers]
    return {"label": label, "p_variant": float(variant_probs[j]), "p_reference": float(reference_probs[j]),
            "delta_p": change[j], "reference_label": KEGG_LABELS[int(reference_probs.argmax())],
            "movers": [(KEGG_LABELS[i], change[i]) for i in order]}
