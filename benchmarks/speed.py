"""Issues 7 and 15: the BioReason-style baselines and dnallm's fast path, in one process on one GPU, same inputs.

    python benchmarks/speed.py [--text qwen3-4b]                    # everything, one process
    python benchmarks/speed.py --only-train --train baseline_ds baseline_plain fast fast_flce fast_liger ...
    python benchmarks/speed.py --only-generate 128 [--dynamic-too]  # scoring + generation jobs only
    python benchmarks/speed.py --only-score 16 32 64 [--liger-too]  # label scoring only
    python benchmarks/speed.py --cpu-smoke --train baseline_ds baseline_plain fast --train-samples 8  # code check

Random-init Genos-1.2B + Qwen3-4B layouts, LoRA r = 32 on all linear layers, bf16.
Training (benchmarks/train_bench.py has the settings, the FLOP count behind the MFU, and the layouts): each
setting is `--train-repeats` timed passes over the same `--train-samples` examples after `--train-warmup` steps;
reported as the median repeat's samples/s with every repeat's rate, tokens/s, LM MFU, peak memory, and the ratio over the
FASTER of the two baselines:
  baseline_ds    : batch 1, linear projector, one token per base (2 x 1024 DNA tokens), encoder re-run every step,
                   DeepSpeed ZeRO-2 (as our SFT trainer runs).
  baseline_plain : the same step in a plain PyTorch loop (no DeepSpeed; AdamW, gradient clipping), BioReason's way.
  fast           : mlp projector pooling 16 bases per token (2 x 64 DNA tokens), encoder outputs cached, batch 4 of
                   length-grouped examples (as the trainer batches them), chunked answer loss, DeepSpeed ZeRO-2.
  fast_* levers  : liger fused linear cross-entropy (flce), liger RMSNorm/SwiGLU/RoPE kernels (liger), batch 8/16,
                   gradient checkpointing (ckpt), plain loop with fused AdamW (plain).
Inference: generation with HF generate on the unmerged LoRA model at batch 1 (baseline); LoRA merged, scoring of
all 37 labels (one prompt pass + one tree-masked pass); a generation job through `generate_answers`
(length-grouped batches, reasoning, forced `Answer:` line, label) with a static KV cache and the decoding step
compiled (CUDA graphs), compilation included in the time.
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
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from sft_step import build, init_distributed, parser as sft_parser  # noqa: E402
from train_bench import SETTINGS, matmul_tflops, run_training  # noqa: E402

from dnallm.data import load_kegg  # noqa: E402
from dnallm.inference import generate_answers  # noqa: E402
from dnallm.scoring import label_probabilities  # noqa: E402

DEFAULT_TRAIN = ("baseline_ds", "baseline_plain", "fast")


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
    p.add_argument("--encoder", default="genos-1.2b")
    p.add_argument("--train", nargs="*", default=list(DEFAULT_TRAIN), metavar="SETTING",
                   help=f"training settings, in order (liger-kernel ones run last); known: {', '.join(SETTINGS)}")
    p.add_argument("--train-samples", type=int, default=24,
                   help="examples per timed repeat: every setting times the same ones, at its own batch size")
    p.add_argument("--train-repeats", type=int, default=3)
    p.add_argument("--train-warmup", type=int, default=3)
    p.add_argument("--only-train", action="store_true", help="training settings only")
    p.add_argument("--gen-tokens", type=int, default=550)
    p.add_argument("--gen-batch", type=int, default=128)
    p.add_argument("--score-n", type=int, default=512)
    p.add_argument("--score-batch", type=int, default=16)
    p.add_argument("--fast-stride", type=int, default=16)
    p.add_argument("--skip-baseline-generation", action="store_true")
    p.add_argument("--only-generate", type=int, nargs="*", default=None,
                   help="skip training; measure scoring and fast-path generation at these batch sizes")
    p.add_argument("--only-score", type=int, nargs="*", default=None,
                   help="skip training and generation; measure label scoring at these batch sizes")
    p.add_argument("--liger-too", action="store_true",
                   help="--only-score: then again with liger's RMSNorm/SwiGLU/RoPE kernels patched into the LM")
    p.add_argument("--extra-score-batches", type=int, nargs="*", default=[])
    p.add_argument("--dynamic-too", action="store_true", help="also time generation with the dynamic cache")
    p.add_argument("--attn", nargs="+", default=["sdpa_gqa"],
                   help="attention implementations for scoring and generation, each timed in turn on one model "
                        "(sdpa_gqa: dnallm.attention)")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny layouts, fp32, on the CPU: checks the training code paths (no numbers to report)")
    args = p.parse_args()
    if args.cpu_smoke:
        device, dtype = torch.device("cpu"), torch.float32
        args.text = args.encoder = "tiny"
    else:
        device, dtype = torch.device("cuda"), torch.bfloat16
    init_distributed(device)
    records = load_kegg("train")
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
               "transformers": transformers.__version__, "text": args.text, "encoder": args.encoder}
    print("ENV " + json.dumps(results), flush=True)

    if args.only_score or args.only_generate:  # inference only: the fast path's model, LoRA merged, no training
        fast = sft_parser().parse_args(["--text", args.text, "--encoder", args.encoder,
                                        "--stride", str(args.fast_stride)])
        model = build(fast, device, dtype).eval().merge_lora()
    if args.only_score:
        for kernels in (False, True) if args.liger_too else (False,):
            if kernels:  # what load_model(liger=True) applies, on the merged LM
                from dnallm.losses import apply_liger_kernels

                apply_liger_kernels(model.language_model)
            for attn in args.attn:
                model.set_attn_implementation(attn)
                for sb in args.only_score:
                    torch.cuda.reset_peak_memory_stats()
                    row = scoring_rate(model, records, args.score_n, sb)
                    row.update(liger_kernels=kernels, attn=attn,
                               peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
                    print("RESULT score_fast " + json.dumps(row), flush=True)
        return
    if args.only_generate:
        for attn in args.attn:
            model.set_attn_implementation(attn)
            for sb in args.extra_score_batches + [args.score_batch]:
                row = scoring_rate(model, records, args.score_n, sb)
                print("RESULT score_fast " + json.dumps({**row, "attn": attn}), flush=True)
            for b in args.only_generate:
                for static in (False, True) if args.dynamic_too else (True,):
                    row = answer_rate(model, records, b, args.gen_tokens, static)
                    print("RESULT generate_fast " + json.dumps({**row, "attn": attn}), flush=True)
                    gc.collect()
                    torch.cuda.empty_cache()
        return

    results["matmul_tflops_measured"] = matmul_tflops()
    print("RESULT matmul " + json.dumps({"bf16_8192_tflops": results["matmul_tflops_measured"]}), flush=True)
    results["train"] = run_training(args.train, records, args, device, dtype)
    if args.only_train or args.cpu_smoke:
        print("SUMMARY " + json.dumps(results), flush=True)
        return
    if not args.skip_baseline_generation:
        base = sft_parser().parse_args(["--text", args.text, "--encoder", args.encoder, "--projector", "linear",
                                        "--stride", "1"])
        model = build(base, device, dtype).eval()
        results["generate_baseline"] = generation_rate(model, records, 1, args.gen_tokens)
        print("RESULT generate_baseline " + json.dumps(results["generate_baseline"]), flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    fast = sft_parser().parse_args(["--text", args.text, "--encoder", args.encoder, "--stride", str(args.fast_stride)])
    model = build(fast, device, dtype).eval().merge_lora()  # inference: LoRA folded into the weights
    results["score_fast"] = scoring_rate(model, records, args.score_n, args.score_batch)
    print("RESULT score_fast " + json.dumps(results["score_fast"]), flush=True)
    results["generate_fast"] = answer_rate(model, records, args.gen_batch, args.gen_tokens, static_cache=True)
    print("RESULT generate_fast " + json.dumps(results["generate_fast"]), flush=True)
    if "generate_baseline" in results:
        results["generate_speedup"] = round(results["generate_fast"]["variants_per_h"]
                                            / results["generate_baseline"]["variants_per_h"], 1)
    print("SUMMARY " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
