"""Label scoring: a probability for each of the 37 labels, without generating any reasoning.

Each label is scored as the model's log-likelihood of ` <label><|im_end|>` after the non-thinking-mode
prompt and `Answer:`; the 37 totals are normalised with a softmax. The prompt (with its DNA) runs once and
gives each label's first token. The rest of all 37 labels then runs as ONE packed continuation of that
prompt's KV cache: a tree-shaped attention mask lets each label token see the prompt and its own label's
earlier tokens only. Nothing is copied per label, so the cost is one prompt forward plus ~150 extra tokens.
"""

from __future__ import annotations

import warnings

import torch
from transformers import StaticCache

from dnallm.labels import KEGG_LABELS
from dnallm.modeling import CACHE_KWARG
from dnallm.processing import ANSWER_PREFIX


class LabelTree:
    """The 37 label token sequences, packed for one continuation pass."""

    def __init__(self, tokenizer, device):
        rows = [tokenizer(f" {label}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
                for label in KEGG_LABELS]
        self.first = torch.tensor([r[0] for r in rows], device=device)            # [37]
        # Every token but each label's last is fed; its output predicts the label's next token.
        fed = [(label, k, r[k], r[k + 1]) for label, r in enumerate(rows) for k in range(len(r) - 1)]
        owner, offset, ids, targets = (torch.tensor(c, device=device) for c in zip(*fed))
        self.owner, self.offset, self.ids, self.targets = owner, offset, ids, targets   # [T] each
        # token i sees token j iff same label and j not after i
        self.tree = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])  # [T, T]


@torch.no_grad()
def continuation_label_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, tree: LabelTree | None = None,
                                cache=None, **dna) -> torch.Tensor:
    """Log-likelihood of each label string after each row of a left-padded batch that ends in `Answer:`: [n, 37].

    The prefix runs once; all 37 labels' remaining tokens run as one packed, tree-masked continuation of its
    KV cache. Used by label scoring (prefix = prompt) and by constrained answers (prefix = prompt + reasoning).

    `cache`: the KV cache of earlier tokens of these rows (a generated reasoning): `input_ids` are then only the
    tokens after it, and `attention_mask` covers the cached and the new positions (0 where a row has no token:
    left padding, or what a row generated after its own stop). It is extended in place.
    """
    tree = tree or LabelTree(model.processor.tokenizer, model.device)
    n_fed = tree.ids.shape[0]
    n = input_ids.shape[0]
    # Positions follow the real tokens, so padding (also inside the cache) does not shift them.
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
    # logits_to_keep=1: only the last prefix position needs the 151k-wide output layer.
    prefix = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, cache=cache, **dna)
    first = torch.log_softmax(prefix.logits[:, -1].float(), -1)[:, tree.first]  # [n, 37]
    cache = prefix[CACHE_KWARG]  # the one it was given, extended, or the new one
    # The packed continuation: prefix (minus its padding) + the tree over the label tokens, as an additive mask.
    allowed = torch.cat([attention_mask.bool()[:, None, :].expand(n, n_fed, -1),
                         tree.tree.expand(n, -1, -1)], -1)                       # [n, T, prefix + T]
    if isinstance(cache, StaticCache):  # its keys span its whole length; the unwritten rest is masked
        allowed = torch.nn.functional.pad(allowed, (0, cache.layers[0].max_cache_len - allowed.shape[-1]))
    dtype = model.language_model.dtype  # (an unmerged adapter with trainable tokens builds its embedding matrix on access)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=model.device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]
    logits = model(input_ids=tree.ids.expand(n, -1), attention_mask=mask,
                   position_ids=positions[:, -1:] + 1 + tree.offset, cache=cache).logits
    # log p(target) = logit - logsumexp(logits), 16 rows at a time: a whole-batch fp32 log-softmax over
    # [n, ~150 tree tokens, 151k vocabulary] is ~2 x 12 GiB at n = 128 (the constrained answer after a GPU batch).
    targets = tree.targets.expand(n, -1)[..., None]
    logp = torch.cat([logits[i:i + 16].gather(-1, targets[i:i + 16]).squeeze(-1).float()
                      - torch.logsumexp(logits[i:i + 16].float(), -1) for i in range(0, n, 16)])
    rest = torch.zeros(n, len(KEGG_LABELS), device=model.device).index_add_(1, tree.owner, logp)
    return (first + rest).cpu()


class UntrainedScoringFormWarning(UserWarning):
    """Label scoring on a checkpoint that never saw the direct-answer form it reads."""


def scoring_form_trained(model) -> bool:
    """False when the checkpoint records its SFT answer forms and the direct form is not among them (None, as
    for checkpoints from before this was recorded or untrained models, is not known to be wrong)."""
    modes = getattr(model.config, "answer_modes", None)
    return modes is None or "direct" in modes


@torch.no_grad()
def label_logprobs(model, questions: list[str], windows: list[tuple[str, str]], batch_size: int = 8) -> torch.Tensor:
    """Total log-likelihood of each label string after the non-thinking prompt and `Answer:`: [n_questions, 37]."""
    if not scoring_form_trained(model):
        warnings.warn(f"this checkpoint was trained on answer forms {model.config.answer_modes} only, without "
                      "direct answers (sft.direct_answers): label scoring reads the direct-answer form, so its "
                      "probabilities are not what the model learnt; use generate mode or train with direct answers",
                      UntrainedScoringFormWarning, stacklevel=2)
    proc = model.processor
    tree = LabelTree(proc.tokenizer, model.device)
    out = torch.empty(len(questions), len(KEGG_LABELS))
    order = proc.length_order(questions)
    for i in range(0, len(questions), batch_size):
        idx = order[i:i + batch_size]
        prompts = [proc.prompt(questions[j], thinking=False) + ANSWER_PREFIX for j in idx]
        batch = proc(prompts, [list(windows[j]) for j in idx], padding_side="left")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out[idx] = continuation_label_logprobs(model, batch.pop("input_ids"), batch.pop("attention_mask"), tree, **batch)
    return out


def label_probabilities(model, questions, windows, batch_size: int = 8) -> torch.Tensor:
    """Probabilities over the 37 labels (softmax of the label log-likelihoods): [n_questions, 37]."""
    return torch.softmax(label_logprobs(model, questions, windows, batch_size), -1)


def top_k(probabilities: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    values, indices = probabilities.topk(k, -1)
    return [[(KEGG_LABELS[j], float(v)) for v, j in zip(vs, js)] for vs, js in zip(values.tolist(), indices.tolist())]
