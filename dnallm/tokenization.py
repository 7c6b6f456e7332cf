"""Text tokenizer: the real Qwen3 tokenizer built offline, a bundled copy of it, and vocabulary pruning.

There is no Hugging Face Hub here, and the Qwen3 tokenizer.json was not available as a file. The Qwen3 BPE
is the Qwen2.5 one, so we rebuild it from vocab.json + merges.txt + the Qwen3 chat template
(see /work/shared/tokenizers/qwen3/SOURCE.md), add the 26 added tokens at their real ids and ship the
result under dnallm/assets/qwen3-tokenizer/. Rebuild it with:

    python -m dnallm.tokenization --src /work/shared/tokenizers/qwen3 --out dnallm/assets/qwen3-tokenizer
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer

BUNDLED_QWEN3_TOKENIZER = Path(__file__).parent / "assets" / "qwen3-tokenizer"
BUNDLED_ALIAS = "bundled:qwen3"

# The 26 added tokens of Qwen3, in id order from 151643 (<|endoftext|>) to 151668 (</think>), with the `special`
# flag of the real tokenizer_config.json: "skipped by decode(skip_special_tokens=True)". The chat control and
# vision tokens are; <think>, <tool_call>, the FIM/repo tokens etc. are not: the model emits them and parsers read them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    *((t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                          "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                          "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")),
    *((t, False) for t in ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                           "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                           "<think>", "</think>")),
)
QWEN3_FIRST_ADDED_ID = 151643
QWEN3_MODEL_MAX_LENGTH = 131072  # Qwen3-0.6B tokenizer_config.json


def build_qwen3_tokenizer(src_dir: str | Path) -> PreTrainedTokenizerBase:
    """Build the Qwen3 tokenizer from vocab.json, merges.txt and Qwen-Qwen3-0.6B.jinja in `src_dir`."""
    src_dir = Path(src_dir)
    vocab = json.loads((src_dir / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(QWEN3_FIRST_ADDED_ID)), "vocab ids must be 0..151642"
    # One merge per line, "left right". Only a "#version" header is a comment: 96 real merges start with "#"
    # ("# #", "## ##", ...), so skipping every "#" line would silently change the tokenizer.
    lines = (src_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    assert all(len(m) == 2 for m in merges), "malformed merges.txt line"

    # vocab/merges as Python objects (file paths gave an empty tokenizer in transformers 5). No named specials yet,
    # so the added tokens below get their ids purely from the order we add them in.
    # clean_up_tokenization_spaces=False: decode must give back the text, byte for byte.
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token=None, pad_token=None,
                         clean_up_tokenization_spaces=False, split_special_tokens=False,
                         model_max_length=QWEN3_MODEL_MAX_LENGTH)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN3_ADDED_TOKENS])
    for i, (t, _) in enumerate(QWEN3_ADDED_TOKENS):
        got = tok.convert_tokens_to_ids(t)
        assert got == QWEN3_FIRST_ADDED_ID + i, f"{t} got id {got}, expected {QWEN3_FIRST_ADDED_ID + i}"

    # Named specials, as in the real config; all already added, so no id moves.
    tok.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                            "extra_special_tokens": [t for t, s in QWEN3_ADDED_TOKENS if s and t != "<|endoftext|>"]})
    assert len(tok) == QWEN3_FIRST_ADDED_ID + len(QWEN3_ADDED_TOKENS)
    tok.chat_template = (src_dir / "Qwen-Qwen3-0.6B.jinja").read_text(encoding="utf-8")
    return tok


def load_text_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """AutoTokenizer.from_pretrained(hub id or local dir); "bundled:qwen3" means the copy shipped here."""
    path = BUNDLED_QWEN3_TOKENIZER if name_or_path == BUNDLED_ALIAS else name_or_path
    tok = AutoTokenizer.from_pretrained(path)
    if not tok.chat_template:
        raise ValueError(f"tokenizer {name_or_path!r} has no chat template; dnallm needs a chat (Qwen3-style) one")
    return tok


def _bpe_pieces(token: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """Every piece BPE builds on its way from the bytes of `token` up to `token` itself.

    Merges never cross a final token's boundaries, so the merges inside it are those BPE makes on its bytes
    alone (lowest rank first, leftmost on ties, as in `tokenizers`)."""
    parts = list(token)  # byte-level: one character per byte
    pieces = list(parts)
    while len(parts) > 1:
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:])))
        if rank == len(ranks):
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        pieces.append(parts[i])
    return pieces


def _remap_ids(node, new_id: dict[str, int]) -> None:
    """Post-processors (TemplateProcessing) store special tokens as {"ids", "tokens"}: renumber by token."""
    if isinstance(node, dict):
        if "ids" in node and "tokens" in node:
            node["ids"] = [new_id[t] for t in node["tokens"]]
        for v in node.values():
            _remap_ids(v, new_id)
    elif isinstance(node, list):
        for v in node:
            _remap_ids(v, new_id)


def prune_tokenizer(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> PreTrainedTokenizerBase:
    """A copy of a byte-level BPE `tokenizer` that keeps only the vocabulary `texts` need (for tiny CPU models the
    151,936-row embedding/output layer dominates the cost; the KEGG text uses ~5,000 ids).

    Kept: the 256 byte tokens (any text still encodes, in smaller pieces), every token of `texts` with every
    intermediate piece of the merges that build it (so `texts` encode to exactly the same tokens), and all added
    tokens (renumbered after the vocabulary, same order). Pass the text as the model will see it, chat template
    rendered: the template's own words are only kept whole if they occur in `texts`.
    """
    texts = list(texts)
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    assert model["type"] == "BPE", f"prune_tokenizer needs a BPE tokenizer, got {model['type']}"
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    ranks = {pair: r for r, pair in enumerate(merges)}
    added = sorted(backend["added_tokens"], key=lambda t: t["id"])

    full = [e.tokens for e in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    keep = {c for c in pre_tokenizers.ByteLevel.alphabet() if c in vocab}
    keep |= {t["content"] for t in added if t["content"] in vocab}  # added tokens that live in the vocab
    for token in {t for tokens in full for t in tokens if t in vocab}:
        keep.update(_bpe_pieces(token, ranks))

    new_vocab = {t: i for i, t in enumerate(sorted(keep, key=vocab.__getitem__))}
    new_id = dict(new_vocab)
    for t in added:
        if t["content"] not in new_id:
            new_id[t["content"]] = len(new_id)
        t["id"] = new_id[t["content"]]
    new_merges = [(a, b) for a, b in merges if a in keep and b in keep and a + b in keep]
    model["vocab"], model["merges"], backend["added_tokens"] = new_vocab, new_merges, added
    _remap_ids(backend.get("post_processor"), new_id)

    # A deep copy keeps all the Python-side state (specials, chat template, ...); its memo swaps in the small backend
    # and vocab/merges (Qwen2Tokenizer keeps copies of its inputs) instead of copying the 151k-entry originals.
    memo = {id(tokenizer.backend_tokenizer): Tokenizer.from_str(json.dumps(backend))}
    for name, small in (("_vocab", new_vocab), ("_merges", new_merges)):
        if name in vars(tokenizer):
            memo[id(vars(tokenizer)[name])] = small
    pruned = copy.deepcopy(tokenizer, memo)

    again = [e.tokens for e in pruned.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
    if again != full:
        raise RuntimeError("pruned tokenizer does not reproduce the full tokenizer on `texts`")
    return pruned


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the bundled Qwen3 tokenizer from vocab/merges/template.")
    parser.add_argument("--src", default="/work/shared/tokenizers/qwen3")
    parser.add_argument("--out", default=str(BUNDLED_QWEN3_TOKENIZER))
    args = parser.parse_args()

    tok = build_qwen3_tokenizer(args.src)
    tok.save_pretrained(args.out)
    back = AutoTokenizer.from_pretrained(args.out)  # what users get: check nothing was lost on the way
    sample = "Hello, world!\n<|im_start|>user\n11β-hydroxylase ACGT<think>x</think><|im_end|>"
    assert back(sample).input_ids == tok(sample).input_ids
    assert back.get_added_vocab() == tok.get_added_vocab() and len(back) == len(tok)
    assert back.chat_template == tok.chat_template
    assert (back.eos_token, back.pad_token) == ("<|im_end|>", "<|endoftext|>")
    print(f"wrote {args.out}: {len(tok)} tokens, 'Hello, world!' -> {back('Hello, world!').input_ids}")


if __name__ == "__main__":
    main()
