"""Issue 7: the BioReason-style baseline and dnallm's fast path, in one process on one GPU, same inputs.

    python benchmarks/speed.py [--text qwen3-4b]                 # everything, one process
    python benchmarks/speed.py --only-generate 128 [--dynamic-too]  # scoring + generation jobs only
    python benchmarks/speed.py --only-score 8 32 64                 # label scoring only

Random-init Genos-1.2B + Qwen3-4B layouts, LoRA r = 32 on all linear layers, bf16, DeepSpeed ZeRO-2.
  baseline : batch 1, linear projector, one token per base (2 x 1024 DNA tokens), encoder re-run every step,
             generation with HF generate on the unmerged LoRA model at batch 1.
  fast     : mlp projector pooling 16 bases per token (2 x 64 DNA tokens), encoder outputs cached, batch 4 of
             length-grouped examples (as the trainer batches them), chunked answer loss; LoRA merged for inference;
             scoring of all 37 labels (one prompt pass + one tree-masked pass); a generation job through
             `generate_answers` (length-grouped batches, reasoning, forced `Answer:` line, label) with a static
             KV cache and the decoding step compiled (CUDA graphs), compilation included in the time.
Random weights never emit end-of-turn, so every generation runs the full --gen-tokens, like the reference's 550.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sft_step import build, init_distributed, parser as sft_parser, time_sft_steps  # noqa: E402

from dnallm.data import load_kegg  # noqa: E402
from dnallm.inference import generate_answers  # noqa: E402
from dnallm.scoring import label_probabilities  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def generation_rate(model, records, batch: int, tokens: int) -> dict:
    """The BioReason way: HF generate at one batch, dynamic KV cache, whatever LoRA state the model has."""
    proc = model.processor
    rows = records.select(range(batch))
    b = proc([proc.prompt(q) for q in rows["question"]], [[r, v] for r, v in zip(rows["ref_window"], rows["variant_window"])],
             padding_side="left")
    b = {k: v.to(model.device) for k, v in b.items()}
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    model.generation_config.min_new_tokens = tokens  # a fixed length for a fair rate
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, **b)  # warm-up
    sync()
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, **b)[:, ids.shape[1]:]
    sync()
    seconds = time.perf_counter() - t
    return {"batch": batch, "new_tokens": out.shape[1], "seconds": round(seconds, 2),
            "variants_per_h": round(batch / seconds * 3600, 1)}


@torch.no_grad()
def answer_rate(model, records, batch: int, tokens: int, static_cache: bool, job_batches: int = 3) -> dict:
    """dnallm's path: `generate_answers` (length-grouped batches; reasoning, then the forced `Answer:` line and
    the label), as the evaluation and the batch CLI run it, on a job of `job_batches` batches. The time is the
    whole job's, compilation included when static_cache."""
    qs, ws = list(records["question"]), list(zip(records["ref_window"], records["variant_window"]))
    model.generation_config.min_new_tokens = 4
    generate_answers(model, qs[:8], ws[:8], batch_size=8, max_new_tokens=4, max_answer_tokens=2)  # CUDA warm-up
    model.generation_config.min_new_tokens = tokens  # random weights: every row runs the full budget
    torch.cuda.reset_peak_memory_stats()
    n = batch * job_batches
    sync()
    t = time.perf_counter()
    texts = generate_answers(model, qs[:n], ws[:n], batch_size=batch, max_new_tokens=tokens, static_cache=static_cache)
    sync()
    seconds = time.perf_counter() - t
    return {"batch": batch, "static_cache": static_cache, "reasoning_tokens": tokens, "variants": len(texts),
            "seconds": round(seconds, 2), "variants_per_h": round(len(texts) / seconds * 3600, 1),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


@torch.no_grad()
def scoring_rate(model, records, n: int, batch: int, repeats: int = 3) -> dict:
    """Label scoring of `n` variants: one untimed pass first (every batch shape's first run is slower), then
    `repeats` timed passes; the rate is the median pass's."""
    rows = records.select(range(n))
    questions, windows = list(rows["question"]), list(zip(rows["ref_window"], rows["variant_window"]))
    label_probabilities(model, questions, windows, batch_size=batch)  # warm-up over the same shapes
    seconds = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        label_probabilities(model, questions, windows, batch_size=batch)
        sync()
        seconds.append(time.perf_counter() - t)
    median = sorted(seconds)[len(seconds) // 2]
    return {"variants": n, "batch": batch, "seconds": round(median, 2), "seconds_all": [round(s, 2) for s in seconds],
            "variants_per_h": round(n / median * 3600, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--text", default="qwen3-4b")
    p.add_argument("--train-steps", type=int, default=8)
    p.add_argument("--gen-tokens", type=int, default=550)
    p.add_argument("--gen-batch", type=int, default=128)
    p.add_argument("--score-n", type=int, default=512)
    p.add_argument("--score-batch", type=int, default=16)
    p.add_argument("--fast-stride", type=int, default=16)
    p.add_argument("--fast-batch", type=int, default=4)
    p.add_argument("--fast-grad-ckpt", action="store_true")
    p.add_argument("--skip-baseline-generation", action="store_true")
    p.add_argument("--only-generate", type=int, nargs="*", default=None,
                   help="skip training; measure scoring and fast-path generation at these batch sizes")
    p.add_argument("--only-score", type=int, nargs="*", default=None,
                   help="skip training and generation; measure label scoring at these batch sizes")
    p.add_argument("--extra-score-batches", type=int, nargs="*", default=[])
    p.add_argument("--dynamic-too", action="store_true", help="also time generation with the dynamic cache")
    args = p.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    init_distributed(device)
    records = load_kegg("train")
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "text": args.text}

    if args.only_score or args.only_generate:  # inference only: the fast path's model, LoRA merged, no training
        fast = sft_parser().parse_args(["--text", args.text, "--stride", str(args.fast_stride)])
        model = build(fast, device, dtype).eval().merge_lora()
    if args.only_score:
        for sb in args.only_score:
            torch.cuda.reset_peak_memory_stats()
            row = scoring_rate(model, records, args.score_n, sb)
            row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print("RESULT score_fast " + json.dumps(row), flush=True)
        return
    if args.only_generate:
        for sb in args.extra_score_batches + [args.score_batch]:
            print("RESULT score_fast " + json.dumps(scoring_rate(model, records, args.score_n, sb)), flush=True)
        for b in args.only_generate:
            for static in (False, True) if args.dynamic_too else (True,):
                row = answer_rate(model, records, b, args.gen_tokens, static)
                print("RESULT generate_fast " + json.dumps(row), flush=True)
                gc.collect()
                torch.cuda.empty_cache()
        return
    base = sft_parser().parse_args(["--text", args.text, "--projector", "linear", "--stride", "1", "--batch", "1",
                                    "--no-cache", "--steps", str(args.train_steps), "--label", "baseline"])
    model = build(base, device, dtype)
    results["train_baseline"] = time_sft_steps(model, records.select(range(base.steps + base.warmup)), base, device, dtype)
    print("RESULT " + json.dumps(results["train_baseline"]), flush=True)
    if not args.skip_baseline_generation:
        model.eval()
        results["generate_baseline"] = generation_rate(model, records, 1, args.gen_tokens)
        print("RESULT generate_baseline " + json.dumps(results["generate_baseline"]), flush=True)
    del model  # free the baseline before building the fast path (same card, one at a time)
    gc.collect()
    torch.cuda.empty_cache()

    fast = sft_parser().parse_args(["--text", args.text, "--projector", "mlp", "--stride", str(args.fast_stride),
                                    "--batch", str(args.fast_batch), "--steps", str(args.train_steps), "--label", "fast"]
                                   + (["--grad-ckpt"] if args.fast_grad_ckpt else []))
    model = build(fast, device, dtype)
    n = fast.batch * (fast.steps + fast.warmup)
    results["train_fast"] = time_sft_steps(model, records.select(range(n)), fast, device, dtype)
    print("RESULT " + json.dumps(results["train_fast"]), flush=True)
    gc.collect()
    torch.cuda.empty_cache()
    model.eval().merge_lora()  # inference: LoRA folded into the weights
    results["score_fast"] = scoring_rate(model, records, args.score_n, args.score_batch)
    print("RESULT score_fast " + json.dumps(results["score_fast"]), flush=True)
    results["generate_fast"] = answer_rate(model, records, args.gen_batch, args.gen_tokens, static_cache=True)
    print("RESULT generate_fast " + json.dumps(results["generate_fast"]), flush=True)
    results["train_speedup"] = round(results["train_fast"]["samples_per_s"] / results["train_baseline"]["samples_per_s"], 2)
    if "generate_baseline" in results:
        results["generate_speedup"] = round(results["generate_fast"]["variants_per_h"]
                                            / results["generate_baseline"]["variants_per_h"], 1)
    print("SUMMARY " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
