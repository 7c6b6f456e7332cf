"""Label scoring: a probability for each of the 37 labels, without generating any reasoning.

Each label is scored as the model's log-likelihood of ` <label><|im_end|>` after the non-thinking-mode
prompt and `Answer:`; the 37 totals are normalised with a softmax. The prompt (with its DNA) runs once; its
KV cache is shared by all 37 continuations, so the cost is one prompt forward plus one short batched forward.
"""

from __future__ import annotations

import torch

from dnallm.labels import KEGG_LABELS
from dnallm.processing import ANSWER_PREFIX


def _label_token_matrix(tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [tokenizer(f" {label}{tokenizer.eos_token}", add_special_tokens=False)["input_ids"] for label in KEGG_LABELS]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


@torch.no_grad()
def label_logprobs(model, questions: list[str], windows: list[tuple[str, str]], batch_size: int = 8) -> torch.Tensor:
    """Total log-likelihood of each label string: [n_questions, 37]."""
    proc, tok = model.processor, model.processor.tokenizer
    label_ids, label_mask = _label_token_matrix(tok, model.device)
    n_labels, width = label_ids.shape
    lm = model.text_model
    out = torch.empty(len(questions), n_labels)
    order = proc.length_order(questions)
    for i in range(0, len(questions), batch_size):
        idx = order[i:i + batch_size]
        prompts = [proc.prompt(questions[j], thinking=False) + ANSWER_PREFIX for j in idx]
        batch = proc(prompts, [list(windows[j]) for j in idx], padding_side="left")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask")
        n = input_ids.shape[0]
        # Positions follow the real tokens, so left padding does not shift them.
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        # logits_to_keep=1: only the last prompt position needs the 151k-wide output layer (the full-prompt
        # logits would be ~2.5 GiB per 4 variants at the seed sizes and capped the batch size).
        prefix = lm(inputs_embeds=model.embed_inputs(input_ids, **batch), attention_mask=attention_mask,
                    position_ids=positions, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(prefix.logits[:, -1].float(), -1)[:, label_ids[:, 0]]  # [n, 37]
        cache = prefix.past_key_values
        cache.batch_repeat_interleave(n_labels)
        ids = label_ids.repeat(n, 1)                                   # [n*37, width]
        mask = torch.cat([attention_mask.repeat_interleave(n_labels, 0), label_mask.repeat(n, 1)], 1)
        cont_pos = positions[:, -1:].repeat_interleave(n_labels, 0) + 1 + torch.arange(width, device=ids.device)
        logits = lm(input_ids=ids, attention_mask=mask, position_ids=cont_pos, past_key_values=cache).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        rest = (logp * label_mask[:, 1:].repeat(n, 1)).sum(1).view(n, n_labels)
        out[idx] = (first + rest).float().cpu()
    return out


def label_probabilities(model, questions, windows, batch_size: int = 8) -> torch.Tensor:
    """Probabilities over the 37 labels (softmax of the label log-likelihoods): [n_questions, 37]."""
    return torch.softmax(label_logprobs(model, questions, windows, batch_size), -1)


def top_k(probabilities: torch.Tensor, k: int = 3) -> list[list[tuple[str, float]]]:
    values, indices = probabilities.topk(k, -1)
    return [[(KEGG_LABELS[j], float(v)) for v, j in zip(vs, js)] for vs, js in zip(values.tolist(), indices.tolist())]
