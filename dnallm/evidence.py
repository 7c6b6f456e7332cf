"""Evidence for an answer: did the variant itself move the model?

Ref-vs-alt contrast: the 37 label probabilities with the variant window (the answer's own scoring) and with the
reference window fed in its place (both DNA slots hold the reference: "no variant"). The change of the answer's
label (`delta_p`) and the labels that moved most say how much of the answer the variant carries; with the
question and the reference fixed, everything that differs is the variant's doing. One extra scoring pass.

In-silico mutagenesis: which bases around the variant carry the answer (`dnallm.ism`).

Zero-shot encoder score (`encoder_dll`): how much less (or more) likely the frozen DNA encoder itself finds the
variant window than the reference window, with no question and no LM: the encoder's own pretrained LM head.
Causal encoders (Genos, HyenaDNA, Evo2): log p(variant window) - log p(reference window), each the sum of the
per-base log-probs log p(base | bases before it) over the 1024 bp window. Masked encoders (Nucleotide Transformer):
the masked-slot log-odds, sum over the token slots where the windows differ of log p(variant token) - log p(reference
token) with those slots masked in the reference window. Negative: the encoder finds the variant less likely.
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


def encoder_dll(encoder, windows: list[tuple[str, str]], batch_size: int = 8) -> list[float]:
    """The zero-shot encoder score of each (reference, variant) window pair (see the module docstring).

    `encoder`: a `dnallm.encoders.DNAEncoder` (a model's `dna_encoder`). An encoder without its LM head, or of a
    type whose scoring rule is not known (`hf`), raises `dnallm.encoders.base.NoLMHeadError`."""
    if encoder.zero_shot is None:
        encoder.require_lm_head()  # raises, naming the encoder type
    scores: list[float] = []
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        if encoder.zero_shot == "causal":
            # the reference and variant windows of a pair in one batch: [ref 0, var 0, ref 1, var 1, ...]
            total = encoder.log_likelihoods([w for pair in chunk for w in pair]).view(-1, 2)
            scores += (total[:, 1] - total[:, 0]).tolist()
        else:
            scores += encoder.masked_log_odds(chunk).tolist()
    return scores
