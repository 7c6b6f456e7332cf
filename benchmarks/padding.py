"""Issue 7, padding-free packing: how much padding do the trainer's batches carry? (CPU, seconds)

    python benchmarks/padding.py --stride 16 --batch 4 [--direct-answers]

Tokenizes the KEGG training split exactly as SFT does (the bundled Qwen3 tokenizer, DNA placeholders for the
given projector stride) and reports the share of padded positions in the trainer's length-grouped batches
and in plain shuffled batches. Packing (varlen attention) can save at most that share of the LM's tokens.
"""

from __future__ import annotations

import argparse
import json
import random

from dnallm.data import load_kegg
from dnallm.encoders.genos import build_base_tokenizer
from dnallm.processing import DNALLMProcessor
from dnallm.tokenization import BUNDLED_QWEN3_TOKENIZER, load_text_tokenizer
from dnallm.training import _batches


def pad_share(batches: list[list[int]]) -> float:
    real = sum(sum(b) for b in batches)
    padded = sum(len(b) * max(b) for b in batches)
    return 1 - real / padded


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--direct-answers", action="store_true")
    args = p.parse_args()
    proc = DNALLMProcessor(load_text_tokenizer(str(BUNDLED_QWEN3_TOKENIZER)), build_base_tokenizer(),
                           dna_stride=args.stride)
    lengths = []
    for r in load_kegg("train"):
        windows = [r["ref_window"], r["variant_window"]]
        for thinking in [True, False] if args.direct_answers else [True]:
            text = proc.prompt(r["question"], thinking) + proc.target(r["reasoning"] if thinking else None, r["label"])
            lengths.append(len(proc.tokenizer(proc.expand_dna(text, windows), add_special_tokens=False)["input_ids"]))
    examples = [{"input_ids": [0] * n} for n in lengths]
    rng = random.Random(0)
    grouped = [[len(e["input_ids"]) for e in b] for b in _batches(examples, args.batch, rng)]
    order = rng.sample(lengths, len(lengths))
    shuffled = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    print(json.dumps({"stride": args.stride, "batch": args.batch, "direct_answers": args.direct_answers,
                      "examples": len(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
                      "pad_share_length_grouped": round(pad_share(grouped), 4),
                      "pad_share_shuffled": round(pad_share(shuffled), 4)}))


if __name__ == "__main__":
    main()
