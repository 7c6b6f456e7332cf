import pytest
import torch

from dnallm.labels import KEGG_LABELS
from dnallm.processing import ANSWER_PREFIX
from dnallm.scoring import label_logprobs, label_probabilities, top_k
from test_model import build


@pytest.fixture(scope="module")
def scored_model(tiny_dir):
    model = build(tiny_dir).eval()
    with torch.no_grad():  # a non-trivial adapter, so the test also covers LoRA in the cached path
        for n, p in model.language_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model


@torch.no_grad()
def naive_logprob(model, question, windows, label):
    """One full forward over prompt + label: the reference the cached computation must match."""
    proc, tok = model.processor, model.processor.tokenizer
    b = proc([proc.prompt(question, thinking=False) + ANSWER_PREFIX], [list(windows)])
    label_ids = tok(f" {label}{tok.eos_token}", add_special_tokens=False)["input_ids"]
    ids = torch.cat([b["input_ids"], torch.tensor([label_ids])], 1)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), dna_input_ids=b["dna_input_ids"],
                   dna_attention_mask=b["dna_attention_mask"]).logits[0]
    n = len(label_ids)
    logp = torch.log_softmax(logits[-n - 1:-1].float(), -1)
    return float(logp[torch.arange(n), torch.tensor(label_ids)].sum())


def test_cached_label_scores_equal_full_forwards(scored_model, kegg_train):
    rows = [kegg_train[i] for i in (0, 5, 9)]  # different prompt lengths: exercises left padding
    questions = [r["question"] for r in rows]
    windows = [(r["ref_window"], r["variant_window"]) for r in rows]
    # batch_size=2: two length-sorted batches, results back in input order; every label (the packed
    # continuation's tree mask must keep the 37 labels from seeing each other)
    scores = label_logprobs(scored_model, questions, windows, batch_size=2)
    assert scores.shape == (3, len(KEGG_LABELS))
    for i in range(3):
        for j in range(len(KEGG_LABELS)):
            expected = naive_logprob(scored_model, questions[i], windows[i], KEGG_LABELS[j])
            assert scores[i, j].item() == pytest.approx(expected, abs=2e-4)


def test_scores_of_a_batch_over_16_rows_equal_those_of_small_batches(scored_model, kegg_train):
    """The tree pass reduces its logits 16 rows at a time: a batch of 20 gives each row its own scores."""
    rows = [kegg_train[i] for i in range(20)]
    questions = [r["question"] for r in rows]
    windows = [(r["ref_window"], r["variant_window"]) for r in rows]
    big = label_logprobs(scored_model, questions, windows, batch_size=20)
    small = label_logprobs(scored_model, questions, windows, batch_size=3)
    assert big.shape == (20, len(KEGG_LABELS))
    assert torch.allclose(big, small, atol=2e-4)
    assert (big.argmax(1) != big[:1].argmax(1)).any() or not torch.allclose(big[0], big[-1])  # rows differ


def test_probabilities_and_top_k(scored_model, kegg_train):
    r = kegg_train[0]
    probs = label_probabilities(scored_model, [r["question"]], [(r["ref_window"], r["variant_window"])])
    assert probs.shape == (1, 37) and torch.allclose(probs.sum(-1), torch.ones(1))
    best = top_k(probs, 3)[0]
    assert len(best) == 3 and best[0][1] >= best[1][1] >= best[2][1]
    assert best[0][0] == KEGG_LABELS[int(probs.argmax())]


@torch.no_grad()
def full_forward_label_logprob(model, prefix_ids, dna, label):
    """log p(" label<|im_end|>" | prefix) by one plain forward: the reference for the constrained answer."""
    tok = model.processor.tokenizer
    label_ids = tok(f" {label}{tok.eos_token}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prefix_ids + label_ids])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **dna).logits[0]
    n = len(label_ids)
    logp = torch.log_softmax(logits[-n - 1:-1].float(), -1)
    return float(logp[torch.arange(n), torch.tensor(label_ids)].sum())


@pytest.mark.parametrize("budget,static", [(3, True), (40, True), (40, False)])
def test_constrained_answer_is_the_most_likely_label_after_the_reasoning(scored_model, kegg_train, budget, static):
    from dnallm.inference import AFTER_REASONING, FORCED_ANSWER, generate_answers, parse_answer

    model, proc = scored_model, scored_model.processor
    tok = proc.tokenizer
    rows = [kegg_train[i] for i in (0, 5)]
    questions = [r["question"] for r in rows]
    windows = [(r["ref_window"], r["variant_window"]) for r in rows]
    texts = generate_answers(model, questions, windows, batch_size=2, max_new_tokens=budget, static_cache=static)
    free = generate_answers(model, questions, windows, batch_size=2, max_new_tokens=budget, constrained=False,
                            max_answer_tokens=0)
    for q, w, text, reasoning in zip(questions, windows, texts, free):
        label = parse_answer(text)
        assert label in KEGG_LABELS  # never an invalid answer
        # the text is the model's greedy reasoning (as free decoding writes it), the appended prefix and the label
        suffix = next(x for x in (FORCED_ANSWER, AFTER_REASONING) if text.endswith(f"{x} {label}"))
        before = text[: -len(f"{suffix} {label}")]
        assert reasoning.startswith(before) and (suffix == FORCED_ANSWER or before.endswith("</think>"))
        # golden: the chosen label maximises the full-forward likelihood after prompt + reasoning + suffix
        b = proc([proc.prompt(q)], [list(w)])
        dna = {"dna_input_ids": b["dna_input_ids"], "dna_attention_mask": b["dna_attention_mask"]}
        prefix = b["input_ids"][0].tolist() + tok(text[: text.rindex(" " + label)], add_special_tokens=False)["input_ids"]
        scores = [full_forward_label_logprob(model, prefix, dna, lab) for lab in KEGG_LABELS]
        assert KEGG_LABELS[max(range(len(scores)), key=scores.__getitem__)] == label


@pytest.mark.parametrize("static", [False, True])
def test_the_answer_continues_the_reasoning_kv_cache_with_the_scores_of_a_full_recompute(scored_model, kegg_train,
                                                                                        static):
    """The constrained answer reads the KV cache the reasoning's generation left (no second pass over prompt +
    reasoning). Rows that stopped early (here: kept 6, 2 and 0 of the 6 generated tokens) have dead cache positions
    after their stop, which must be invisible: each row's 37 scores equal a from-scratch pass over its own prompt +
    kept reasoning + suffix."""
    from transformers import DynamicCache, StaticCache

    from dnallm.inference import FORCED_ANSWER, _continuation
    from dnallm.modeling import CACHE_KWARG
    from dnallm.scoring import LabelTree, continuation_label_logprobs

    model, proc = scored_model, scored_model.processor
    tok = proc.tokenizer
    rows = [kegg_train[i] for i in (0, 5, 9)]
    b = proc([proc.prompt(r["question"]) for r in rows], [[r["ref_window"], r["variant_window"]] for r in rows],
             padding_side="left")
    input_ids, attention_mask = b.pop("input_ids"), b.pop("attention_mask")
    tree = LabelTree(tok, model.device)
    config = model.config.text_config
    cache = (StaticCache(config=config, max_cache_len=input_ids.shape[1] + 6 + 8 + tree.ids.shape[0]) if static
             else DynamicCache(config=config))
    with torch.no_grad():
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6,
                                   min_new_tokens=6, **{CACHE_KWARG: cache}, **b)[:, input_ids.shape[1]:]
    assert generated.shape[1] == 6
    kept = [generated[0].tolist(), generated[1, :2].tolist(), []]
    suffix = tok(FORCED_ANSWER, add_special_tokens=False)["input_ids"]
    _, new_ids, mask = _continuation(model, input_ids, attention_mask, generated, kept, [suffix] * 3, cache)
    cached_scores = continuation_label_logprobs(model, new_ids, mask, tree, cache=cache)
    for i in range(3):
        ids = torch.tensor([input_ids[i][attention_mask[i].bool()].tolist() + kept[i] + suffix])
        dna = {k: v[2 * i:2 * i + 2] for k, v in b.items()}
        fresh = continuation_label_logprobs(model, ids, torch.ones_like(ids), tree, **dna)[0]
        assert torch.allclose(cached_scores[i], fresh, atol=2e-4), (i, (cached_scores[i] - fresh).abs().max())
