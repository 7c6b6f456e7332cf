"""Ref-vs-alt contrast over a split (issue 17): how much the variant moves the model's answers.

    python benchmarks/contrast_stats.py --model runs/quickstart/model [--view kegg_hard] [--split test] \
        [--encoder-dll]

Score mode: every row is scored with its variant window and with the reference in its place
(dnallm.inference.explain_many(contrast=True)). Prints the accuracy both ways, the share of answers that change
when the variant is removed, and delta_p (p of the answer's label, variant minus reference) for correct and
wrong answers. --encoder-dll adds the encoder's zero-shot score (issue 17, part 3): its median for correct and
wrong answers, SNVs and indels.
"""

import argparse
import json
import statistics
import time

from dnallm.data import load_kegg
from dnallm.inference import explain_many, load_model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--view", default="kegg_hard")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--encoder-dll", action="store_true")
    args = p.parse_args()
    model = load_model(args.model)
    rows = load_kegg(args.split, view=args.view)
    t = time.perf_counter()
    out = explain_many(model, list(rows["question"]), list(zip(rows["ref_window"], rows["variant_window"])),
                       mode="score", batch_size=args.batch_size, contrast=True, encoder_dll=args.encoder_dll)
    seconds = time.perf_counter() - t
    gold = list(rows["label"])
    right = [ex.label == g for ex, g in zip(out, gold)]
    deltas = [ex.contrast["delta_p"] for ex in out]
    summary = {
        "model": args.model, "split": args.split, "view": args.view, "n": len(out),
        "accuracy_with_variant": round(sum(right) / len(out), 4),
        "accuracy_with_reference_in_its_place": round(sum(ex.contrast["reference_label"] == g
                                                          for ex, g in zip(out, gold)) / len(out), 4),
        "answers_changed_without_the_variant": round(sum(ex.contrast["reference_label"] != ex.label
                                                         for ex in out) / len(out), 4),
        "median_delta_p_correct": round(statistics.median([d for d, r in zip(deltas, right) if r] or [0]), 4),
        "median_delta_p_wrong": round(statistics.median([d for d, r in zip(deltas, right) if not r] or [0]), 4),
        "seconds_for_both_scorings" + ("_and_encoder_dll" if args.encoder_dll else ""): round(seconds, 1),
    }
    if args.encoder_dll:
        snv = [len(r["ref_allele"]) == len(r["alt_allele"]) == 1 for r in rows]
        indel = [len(r["ref_allele"]) != len(r["alt_allele"]) for r in rows]
        dll = [ex.encoder_dll for ex in out]
        for name, keep in (("correct", right), ("wrong", [not r for r in right]), ("snv", snv), ("indel", indel)):
            chosen = [d for d, k in zip(dll, keep) if k]
            summary[f"median_encoder_dll_{name}"] = round(statistics.median(chosen), 4) if chosen else None
            summary[f"n_{name}"] = len(chosen)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
