"""In-silico mutagenesis (ISM) of the variant window: which bases around the variant carry the answer?

For every position within ±`flank` bp of the variant and each base other than the one there, the variant window
is mutated at that one position and the question is scored again; the map holds the change of the answer's label
log-probability (normalised over the 37 labels, as `dnallm.scoring.label_probabilities`):

    delta[offset][base] = log p(label | reference window, mutated variant window) - log p(label | both unmutated)

Only the variant window is mutated; the reference window (the other DNA slot) stays as it is.

Positions: offset 0 is index `window // 2` (512) of the variant window, where the window rule (`dnallm.data`) puts
the variant: the variant base of an SNV; for indels and multi-base changes the allele start (for a deletion without
ALT bases, the first base after it). `variant_kind` says which case a map is. A base that is not A/C/G/T (N) gets all
four bases as mutations.

Cost: one label scoring per mutated window (2 x flank + 1 positions x 3 bases: 195 for flank 32), batched. What does
not depend on the mutation runs once: the reference window's encoder states and the KV cache of the prompt up to the
variant slot's `<|dna_start|>`. Per mutated window there is one encoder pass (cached: the SNV's ref-base mutation IS
the reference window) and one label-scoring continuation (`dnallm.scoring.continuation_label_logprobs`).
"""

from __future__ import annotations

import copy
import io
import warnings

import torch

from dnallm.encoders.cache import EmbeddingCache
from dnallm.labels import KEGG_LABELS
from dnallm.modeling import CACHE_KWARG
from dnallm.processing import ANSWER_PREFIX
from dnallm.scoring import LabelTree, UntrainedScoringFormWarning, continuation_label_logprobs, scoring_form_trained

BASES = "ACGT"
DEFAULT_FLANK = 32
TSV_COLUMNS = ("offset", "index", "reference_base", "variant_base", "mutated_base", "log_p", "delta_log_p")


def variant_kind(reference_window: str, variant_window: str) -> str:
    """"snv" (the windows differ only at the centre), "none" (identical) or "indel_or_mnv" (they differ from the
    centre on). Windows that differ before the centre were not cut by the window rule: ValueError."""
    centre = len(variant_window) // 2
    differ = [i for i, (a, b) in enumerate(zip(reference_window, variant_window)) if a != b]
    if not differ:
        return "none"
    if differ[0] < centre:
        raise ValueError(f"the reference and variant windows differ at index {differ[0]}, before the centre "
                         f"{centre}: they are not cut by the window rule (both start {centre} bp upstream of the "
                         "variant), so ISM positions cannot be placed relative to the variant")
    return "snv" if differ == [centre] else "indel_or_mnv"


def check_flank(flank, window: int) -> int:
    """The flank as an int, or ValueError when ±flank around the centre does not fit in the window."""
    centre = window // 2
    most = window - 1 - centre  # the centre sits right of the middle of an even window: less room on the right
    if isinstance(flank, bool) or not isinstance(flank, int) or flank < 0:
        raise ValueError(f"ISM flank must be an integer >= 0 (bp on each side of the variant), got {flank!r}")
    if flank > most:
        raise ValueError(f"ISM flank {flank} reaches beyond the {window} bp window: the variant sits at index "
                         f"{centre}, so the flank can be at most {most}")
    return flank


def mutations(variant_window: str, flank: int) -> list[tuple[int, str, str]]:
    """(offset, mutated base, mutated window) for each position within ±flank of the centre and each other base."""
    centre = len(variant_window) // 2
    out = []
    for offset in range(-flank, flank + 1):
        i = centre + offset
        for base in BASES:
            if base != variant_window[i]:
                out.append((offset, base, variant_window[:i] + base + variant_window[i + 1:]))
    return out


def _split_prompt(proc, prompt: str, reference_window: str, variant_window: str) -> tuple[list[int], list[int]]:
    """The prompt's token ids cut after the variant slot's `<|dna_start|>`: (shared prefix, rest). The prefix
    holds nothing that depends on the variant window; the rest holds its placeholders (their number depends on the
    window only through its tokenization) and the question."""
    ids = proc([prompt], [[reference_window, variant_window]], dna_ids=False)["input_ids"][0].tolist()
    start = proc.tokenizer.convert_tokens_to_ids(proc.dna_start_token)
    starts = [k for k, t in enumerate(ids) if t == start]
    if len(starts) != 2:
        raise RuntimeError(f"expected 2 `{proc.dna_start_token}` tokens in the scoring prompt, found {len(starts)}")
    return ids[:starts[1] + 1], ids[starts[1] + 1:]


@torch.no_grad()
def variant_window_logprobs(model, question: str, reference_window: str, variant_windows: list[str],
                            batch_size: int = 16) -> torch.Tensor:
    """Label log-likelihoods [n, 37] of one question with one reference window and each of `variant_windows` in
    the variant slot: what `dnallm.scoring.label_logprobs` gives for each (reference, variant) pair, computed
    with the shared prompt prefix (up to the variant slot) and the reference window's encoder states once."""
    proc, device = model.processor, model.device
    tree = LabelTree(proc.tokenizer, device)
    prompt = proc.prompt(question, thinking=False) + ANSWER_PREFIX
    encoder_dtype = next(model.dna_encoder.parameters()).dtype
    states = EmbeddingCache(model.dna_encoder, dtype=encoder_dtype, device=device)
    # the prompt differs between variant windows only in its number of DNA placeholders (same for every window of
    # a one-token-per-base encoder; a k-mer encoder's count can change where a mutation replaces an N)
    rests: dict[int, list[int]] = {}
    prefix = None
    for w in variant_windows:
        n = proc.num_dna_tokens(w)
        if n not in rests:
            head, rests[n] = _split_prompt(proc, prompt, reference_window, w)
            if prefix is not None and head != prefix:
                raise RuntimeError("the scoring prompt's prefix depends on the variant window")
            prefix = head
    ref_hidden, ref_mask = states.lookup([reference_window])
    prefix_ids = torch.tensor([prefix], device=device)
    shared = model(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids),
                   position_ids=torch.arange(len(prefix), device=device)[None], use_cache=True, logits_to_keep=1,
                   dna_hidden_states=ref_hidden, dna_positions_mask=ref_mask)
    shared_cache = shared[CACHE_KWARG]
    out = torch.empty(len(variant_windows), len(KEGG_LABELS))
    pad = proc.tokenizer.pad_token_id
    for s in range(0, len(variant_windows), batch_size):
        chunk = variant_windows[s:s + batch_size]
        rows = [rests[proc.num_dna_tokens(w)] for w in chunk]
        width = max(len(r) for r in rows)
        # left padding between the shared prefix and each row's rest: positions follow the real tokens
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        cache = copy.deepcopy(shared_cache)  # continued in place by the batch; the shared one stays as it is
        cache.batch_repeat_interleave(len(chunk))
        hidden, positions_mask = states.lookup(chunk)
        out[s:s + len(chunk)] = continuation_label_logprobs(model, ids, mask, tree, cache=cache,
                                                            dna_hidden_states=hidden, dna_positions_mask=positions_mask)
    return out


def ism_map(model, question: str, windows: tuple[str, str], label: str | None = None, flank: int = DEFAULT_FLANK,
            batch_size: int = 16) -> dict:
    """The ISM map of one question and its (reference, variant) windows (see the module docstring).

    `label`: the label whose log-probability is tracked (an explanation's answer); None: the most probable label
    of the unmutated input. Returns a JSON-ready dict: label, log_p (unmutated), flank, centre, variant_kind,
    offsets [-flank..flank], reference_bases / variant_bases at those offsets, bases ("ACGT") and delta: per
    offset, the four bases' change of log p(label) (None for the base already there), n_windows scored."""
    if not scoring_form_trained(model):
        warnings.warn(f"this checkpoint was trained on answer forms {model.config.answer_modes} only, without "
                      "direct answers: the ISM map reads label scoring, whose probabilities are then not what the "
                      "model learnt", UntrainedScoringFormWarning, stacklevel=2)
    reference_window, variant_window = windows
    window = model.config.dna_config.window_size
    if len(reference_window) != window or len(variant_window) != window:
        raise ValueError(f"ISM needs two {window} bp windows, got {len(reference_window)} and {len(variant_window)} bp")
    flank = check_flank(flank, window)
    kind = variant_kind(reference_window, variant_window)
    if label is not None and label not in KEGG_LABELS:
        raise ValueError(f"unknown label {label!r}")
    muts = mutations(variant_window, flank)
    # the unmutated window is scored by the same path (row 0), so an unchanged input gives delta exactly 0
    logp = torch.log_softmax(variant_window_logprobs(model, question, reference_window,
                                                     [variant_window] + [w for _, _, w in muts], batch_size), -1)
    j = KEGG_LABELS.index(label) if label is not None else int(logp[0].argmax())
    base_logp = float(logp[0, j])
    centre = window // 2
    offsets = list(range(-flank, flank + 1))
    delta: list[list[float | None]] = [[None] * len(BASES) for _ in offsets]
    for (offset, base, _), row in zip(muts, logp[1:, j].tolist()):
        delta[offset + flank][BASES.index(base)] = row - base_logp
    return {"label": KEGG_LABELS[j], "log_p": base_logp, "flank": flank, "centre": centre, "variant_kind": kind,
            "offsets": offsets, "reference_bases": "".join(reference_window[centre + o] for o in offsets),
            "variant_bases": "".join(variant_window[centre + o] for o in offsets), "bases": BASES,
            "delta": delta, "n_windows": len(muts)}


def ism_tsv(attribution: dict) -> str:
    """The map as TSV text: one row per mutated window (TSV_COLUMNS; index = position in the variant window)."""
    lines = ["\t".join(TSV_COLUMNS)]
    for k, offset in enumerate(attribution["offsets"]):
        for b, base in enumerate(attribution["bases"]):
            change = attribution["delta"][k][b]
            if change is None:
                continue
            lines.append("\t".join([str(offset), str(attribution["centre"] + offset),
                                    attribution["reference_bases"][k], attribution["variant_bases"][k], base,
                                    repr(attribution["log_p"] + change), repr(change)]))
    return "\n".join(lines) + "\n"


def ism_figure(attribution: dict):
    """The heatmap as a matplotlib Figure (no pyplot: safe in the app's worker threads): positions x bases,
    colour = change of log p(label) (diverging, centred on 0), the base already there marked with a dot, the
    variant position (offset 0) boxed."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    offsets, bases, flank = attribution["offsets"], attribution["bases"], attribution["flank"]
    values = torch.tensor([[float("nan") if v is None else v for v in row] for row in attribution["delta"]]).T
    finite = values[~values.isnan()]
    scale = float(finite.abs().max()) if finite.numel() and float(finite.abs().max()) > 0 else 1e-6
    fig = Figure(figsize=(max(6.0, 0.16 * len(offsets) + 2.5), 2.9), dpi=110)
    ax = fig.add_subplot()
    image = ax.imshow(values.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto",
                      extent=(offsets[0] - 0.5, offsets[-1] + 0.5, len(bases) - 0.5, -0.5))
    for k, (offset, base) in enumerate(zip(offsets, attribution["variant_bases"])):
        if base in bases:  # the base already there: no mutation, a dot
            ax.plot(offset, bases.index(base), "o", color="0.35", markersize=2.5)
    ax.add_patch(Rectangle((-0.5, -0.5), 1, len(bases), fill=False, edgecolor="black", linewidth=1.6))
    ax.set_yticks(range(len(bases)), list(bases))
    step = max(1, (2 * flank + 1) // 16)
    ax.set_xticks([o for o in offsets if o % step == 0])
    where = "variant" if attribution["variant_kind"] != "indel_or_mnv" else "allele start"
    ax.set_xlabel(f"position relative to the {where} (boxed; variant window index {attribution['centre']} = 0)")
    ax.set_ylabel("mutated to")
    ax.set_title(f"ISM: change of log p({attribution['label']}) per single-base mutation of the variant window",
                 fontsize=9)
    fig.colorbar(image, ax=ax, pad=0.01, fraction=0.04).set_label("Δ log p", fontsize=8)
    fig.tight_layout()
    return fig


def ism_png(attribution: dict) -> bytes:
    """The heatmap as PNG bytes (the same bytes for the same map: no timestamp in the file)."""
    buffer = io.BytesIO()
    ism_figure(attribution).savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
