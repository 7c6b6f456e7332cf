"""Evaluation speed on the CPU, one process, alternating repeats: what each cheaper path costs and that it changes
no answer.

1. Encoder: windows/s reading a middle layer (the pass stops there) vs the last layer (the whole stack).
2. Generation of one split (greedy reasoning + constrained answer): static vs dynamic KV cache, LoRA merged vs
   unmerged; the texts of every variant are compared with the first configuration's.
   --attn: instead, the merged model with static cache under each attention implementation (sdpa, sdpa_gqa), and
   label scoring too (the largest difference of the label log-probabilities from the first).

    python benchmarks/cpu_eval_speed.py --model runs/quickstart/model [--split test] [--view kegg_hard] [--repeats 2]
    python benchmarks/cpu_eval_speed.py --model runs/quickstart/model --view kegg --attn sdpa sdpa_gqa
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dnallm.configuration import DNALLMConfig
from dnallm.data import load_kegg
from dnallm.encoders import build_encoder
from dnallm.evaluation import control_inputs
from dnallm.inference import generate_answers
from dnallm.modeling import DNALLMForConditionalGeneration, _resolve
from dnallm.scoring import label_logprobs


def encoder_speed(checkpoint: Path, windows: list[str], repeats: int) -> dict:
    cfg = DNALLMConfig.from_pretrained(checkpoint).dna_config
    path = _resolve(cfg.encoder_name_or_path, checkpoint)  # relative to the checkpoint, as from_pretrained does
    out = {}
    for _ in range(repeats):
        for layer in (cfg.layer, -1):
            encoder = build_encoder(cfg.encoder_type, path, layer=layer)
            start = time.perf_counter()
            for i in range(0, len(windows), 16):
                encoder.encode(windows[i:i + 16])
            out.setdefault(f"layer {layer}", []).append(round(len(windows) / (time.perf_counter() - start), 1))
    return {"windows": len(windows), "windows_per_s": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model")
    p.add_argument("--split", default="test")
    p.add_argument("--view", default="kegg_hard")
    p.add_argument("--batch-size", type=int, default=80)
    p.add_argument("--max-new-tokens", type=int, default=800)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--attn", nargs="*", default=None)
    args = p.parse_args()
    records = load_kegg(args.split, view=args.view)
    questions, windows = control_inputs(records)
    unmerged = DNALLMForConditionalGeneration.from_pretrained(args.model).eval()
    merged = DNALLMForConditionalGeneration.from_pretrained(args.model).eval().merge_lora()
    result = {"model": args.model, "split": args.split, "view": args.view, "threads": torch.get_num_threads(),
              "encoder": encoder_speed(Path(args.model), list(records["variant_window"])[:128], args.repeats)}
    runs = {"merged, static cache": (merged, True), "merged, dynamic cache": (merged, False),
            "unmerged, static cache": (unmerged, True)}
    if args.attn:
        runs = {f"merged, static cache, {a}": (merged, True, a) for a in args.attn}
        scores, score_seconds = {}, {}
    seconds, reference, same = {}, None, {}
    for _ in range(args.repeats):
        for name, (model, static, *attn) in runs.items():
            if attn:
                model.set_attn_implementation(attn[0])
                start = time.perf_counter()
                scores[name] = label_logprobs(model, questions, windows, batch_size=16)
                score_seconds.setdefault(name, []).append(round(time.perf_counter() - start, 1))
            start = time.perf_counter()
            texts = generate_answers(model, questions, windows, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, static_cache=static)
            seconds.setdefault(name, []).append(round(time.perf_counter() - start, 1))
            reference = reference or texts
            same[name] = sum(a == b for a, b in zip(texts, reference))
    result["generate_seconds"] = seconds
    result["texts_equal_to_first"] = {name: f"{n}/{len(questions)}" for name, n in same.items()}
    if args.attn:
        first = next(iter(scores.values()))
        result["score_seconds"] = score_seconds
        result["label_logprob_max_abs_diff_to_first"] = {n: float((s - first).abs().max()) for n, s in scores.items()}
        result["top_label_equal_to_first"] = {n: f"{int((s.argmax(1) == first.argmax(1)).sum())}/{len(questions)}"
                                              for n, s in scores.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
