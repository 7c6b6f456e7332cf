"""Tests for dnallm.tokenization: the bundled Qwen3 tokenizer, its chat template, and vocabulary pruning."""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
from transformers import AutoTokenizer

from dnallm.tokenization import (
    BUNDLED_QWEN3_TOKENIZER,
    QWEN3_ADDED_TOKENS,
    build_qwen3_tokenizer,
    load_text_tokenizer,
    prune_tokenizer,
)

ROOT = Path(__file__).resolve().parents[1]
KEGG_TRAIN = ROOT / "data" / "kegg" / "train-00000-of-00001.parquet"
QWEN3_SRC = Path("/work/shared/tokenizers/qwen3")

KEGG_QUESTION = (
    "Chromosome Number: 4\nNetwork Definition of the pathway: (PDE11A*,PDE8B*) // cAMP -> (PRKAR1A+PRKACA)\n"
    "Genes in the pathway: CYP11B1; cytochrome P450 family 11 subfamily B member 1 (11β-hydroxylase)\n\n"
    "Given this context, what is the biological effect of this PDE11A allele?"
)
DNA = "ACTTTATGCTTCCCTACTGCCCTAATTTAGGNNNNacgt"


@pytest.fixture(scope="module")
def tok():
    return load_text_tokenizer("bundled:qwen3")


@pytest.fixture(scope="module")
def kegg_texts():
    df = pd.read_parquet(KEGG_TRAIN).head(200)
    return list(df.question) + list(df.reasoning) + [f"Answer: {a}" for a in df.answer]


@pytest.fixture(scope="module")
def chat_texts(tok):
    # What the model is trained on: rows rendered through the chat template. The template's own words
    # ("user", "assistant", "\n\n" ...) are text too, so they must be in what prune_tokenizer sees.
    df = pd.read_parquet(KEGG_TRAIN).head(50)
    return [
        render(tok, [user(q), {"role": "assistant", "content": f"Answer: {a}", "reasoning_content": r}])
        for q, r, a in zip(df.question, df.reasoning, df.answer)
    ]


@pytest.fixture(scope="module")
def pruned(tok, kegg_texts, chat_texts):
    return prune_tokenizer(tok, kegg_texts + chat_texts)


# ---- bundled Qwen3 tokenizer ----


def test_known_ids(tok):
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]
    assert tok.vocab_size == 151643 and len(tok) == 151669


def test_added_token_ids_and_flags(tok):
    expected = {t: 151643 + i for i, (t, _) in enumerate(QWEN3_ADDED_TOKENS)}
    assert tok.get_added_vocab() == expected
    assert expected["<|endoftext|>"] == 151643 and expected["<|im_start|>"] == 151644
    assert expected["<|im_end|>"] == 151645 and expected["<tool_call>"] == 151657
    assert expected["<think>"] == 151667 and expected["</think>"] == 151668
    special = {str(t): t.special for t in tok.added_tokens_decoder.values()}
    assert special == dict(QWEN3_ADDED_TOKENS)
    # As in real Qwen3: chat control tokens are skipped, <think>/<tool_call> stay in the text.
    ids = tok("<|im_start|>assistant\n<think>\nr\n</think>\n\n<tool_call>x</tool_call><|im_end|>").input_ids
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nr\n</think>\n\n<tool_call>x</tool_call>"


def test_eos_pad(tok):
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 151645)
    assert (tok.pad_token, tok.pad_token_id) == ("<|endoftext|>", 151643)
    assert tok.bos_token is None and tok.unk_token is None
    assert tok.model_max_length == 131072
    assert tok("a b").input_ids == tok.encode("a b")  # no BOS/EOS added


@pytest.mark.parametrize(
    "text",
    [KEGG_QUESTION, DNA, "Step 1: C>T variant...\nStep 2: loss of function.\n\n  x\t y", "Answer: cushing syndrome"],
)
def test_round_trip(tok, text):
    assert tok.decode(tok(text).input_ids) == text


def test_bundled_copy_matches_a_fresh_build(tok):
    if not QWEN3_SRC.is_dir():
        pytest.skip("Qwen3 source files not present")
    built = build_qwen3_tokenizer(QWEN3_SRC)
    assert built.get_vocab() == tok.get_vocab()
    shipped = json.loads((BUNDLED_QWEN3_TOKENIZER / "tokenizer.json").read_text(encoding="utf-8"))
    assert json.loads(built.backend_tokenizer.to_str())["model"]["merges"] == shipped["model"]["merges"]
    assert len(shipped["model"]["merges"]) == 151387
    assert built.chat_template == tok.chat_template
    assert built(KEGG_QUESTION).input_ids == tok(KEGG_QUESTION).input_ids


def test_load_requires_chat_template(pruned, tmp_path):
    no_template = copy.deepcopy(pruned)
    no_template.chat_template = None
    no_template.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="chat template"):
        load_text_tokenizer(str(tmp_path))


# ---- Qwen3 chat template ----

def user(content):
    return {"role": "user", "content": content}


USER_Q = [user("Q")]


def render(tok, messages, **kw):
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def test_generation_prompt_thinking_modes(tok):
    prompt = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert render(tok, USER_Q, add_generation_prompt=True) == prompt  # thinking is the default
    assert render(tok, USER_Q, add_generation_prompt=True, enable_thinking=True) == prompt
    no_think = render(tok, USER_Q, add_generation_prompt=True, enable_thinking=False)
    assert no_think == prompt + "<think>\n\n</think>\n\n"


def test_system_prompt(tok):
    messages = [{"role": "system", "content": "S"}] + USER_Q
    assert render(tok, messages) == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"


def test_assistant_reasoning(tok):
    expected = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nR\n</think>\n\nA<|im_end|>\n"
    assert render(tok, USER_Q + [{"role": "assistant", "content": "A", "reasoning_content": "R"}]) == expected
    assert render(tok, USER_Q + [{"role": "assistant", "content": "<think>\nR\n</think>\n\nA"}]) == expected
    # the final answer turn always gets a think block, empty if there was no reasoning
    empty = "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n"
    assert render(tok, USER_Q + [{"role": "assistant", "content": "A"}]) == empty
    # reasoning of turns before the last user message is dropped, as in Qwen3
    history = USER_Q + [{"role": "assistant", "content": "A", "reasoning_content": "R"}, user("Q2")]
    assert render(tok, history) == (
        "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
    )


def test_template_tokens_are_single_ids(tok):
    text = render(tok, USER_Q + [{"role": "assistant", "content": "A", "reasoning_content": "R"}])
    ids = tok(text).input_ids
    assert ids[:3] == [151644, 872, 198]  # <|im_start|> user \n
    assert 151667 in ids and 151668 in ids and ids[-2:] == [151645, 198]


# ---- prune_tokenizer ----


def test_prune_reproduces_kegg_tokens(tok, pruned, kegg_texts, chat_texts):
    texts = kegg_texts + chat_texts
    full = tok(texts).input_ids
    small = pruned(texts).input_ids
    for f, s in zip(full, small):
        assert pruned.convert_ids_to_tokens(s) == tok.convert_ids_to_tokens(f)
    assert [pruned.decode(s) for s in small] == texts


def test_prune_only_reproduces_what_it_saw(tok, kegg_texts):
    # Pruned on raw KEGG text alone, the template word "assistant" is not kept whole: it still encodes and
    # decodes, in smaller pieces. Hence: prune on the text as the model will see it (chat-rendered).
    small = prune_tokenizer(tok, kegg_texts[:20])
    assert tok.tokenize("assistant") == ["assistant"]
    assert len(small.tokenize("assistant")) > 1
    assert small.decode(small("assistant").input_ids) == "assistant"


def test_prune_is_small_and_dense(tok, pruned):
    assert type(pruned) is type(tok)
    assert 256 + 26 < len(pruned) < 10_000
    assert sorted(pruned.get_vocab().values()) == list(range(len(pruned)))
    assert len(tok) == 151669  # the input tokenizer is untouched


def test_prune_keeps_specials_and_template(tok, pruned):
    k = pruned.vocab_size
    assert pruned.get_added_vocab() == {t: k + i for i, (t, _) in enumerate(QWEN3_ADDED_TOKENS)}
    assert {str(t): t.special for t in pruned.added_tokens_decoder.values()} == dict(QWEN3_ADDED_TOKENS)
    assert (pruned.eos_token, pruned.eos_token_id) == ("<|im_end|>", k + 2)
    assert (pruned.pad_token, pruned.pad_token_id) == ("<|endoftext|>", k)
    assert pruned.chat_template == tok.chat_template
    text = render(pruned, USER_Q, add_generation_prompt=True, enable_thinking=False)
    assert pruned.convert_ids_to_tokens(pruned(text).input_ids) == tok.convert_ids_to_tokens(tok(text).input_ids)


@pytest.mark.parametrize("text", ["Zebrafish ∆ 🧬 xyz", "日本語 ½ naïve café\r\n\tqwerty", "\x00\x7f"])
def test_prune_encodes_unseen_text(pruned, text):
    ids = pruned(text).input_ids
    assert max(ids) < pruned.vocab_size
    assert pruned.decode(ids) == text


def test_prune_keeps_tokens_added_later(tok):
    dna = ["<|dna_start|>", "<|dna_pad|>", "<|dna_end|>"]
    with_dna = copy.deepcopy(tok)
    with_dna.add_special_tokens({"extra_special_tokens": dna}, replace_extra_special_tokens=False)
    assert with_dna.convert_tokens_to_ids(dna) == [151669, 151670, 151671]
    small = prune_tokenizer(with_dna, ["Variant <|dna_start|><|dna_pad|><|dna_pad|><|dna_end|> in PDE11A"])
    k = small.vocab_size
    assert small.convert_tokens_to_ids(dna) == [k + 26, k + 27, k + 28]
    assert small(f"x{dna[1]}").input_ids[-1] == k + 27
    assert set(dna) <= set(small.extra_special_tokens)
    assert small.decode(small(f"{dna[0]}A{dna[2]}").input_ids, skip_special_tokens=True) == "A"


def test_prune_save_load_round_trip(pruned, kegg_texts, tmp_path):
    pruned.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert type(back) is type(pruned) and len(back) == len(pruned)
    assert back.get_vocab() == pruned.get_vocab()
    sample = kegg_texts[:20] + ["Zebrafish ∆ 🧬 xyz", render(pruned, USER_Q, add_generation_prompt=True)]
    assert back(sample).input_ids == pruned(sample).input_ids
    assert (back.eos_token_id, back.pad_token_id) == (pruned.eos_token_id, pruned.pad_token_id)
    assert back.chat_template == pruned.chat_template
