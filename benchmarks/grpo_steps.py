"""A few GRPO steps at the seed sizes on one GPU, random init (no weights are reachable offline).

    python benchmarks/grpo_steps.py --encoder genos-1.2b --text qwen3-4b --steps 3

Random weights never write a valid answer or an end-of-turn token, so every completion runs to max_new_tokens
and gets the same reward: advantages are 0. The timing still covers the whole step (sampled generation of
prompts x generations completions, the policy forward/backward over them, the optimizer step); the learning
signal itself is tested on CPU (tests/test_grpo.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sft_step import build  # noqa: E402  (same random-init model builder as the SFT benchmark)

from dnallm.data import load_kegg  # noqa: E402
from dnallm.grpo import GRPOConfig, grpo_train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="genos-1.2b")
    p.add_argument("--text", default="qwen3-4b")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per policy forward/backward (0: all)")
    p.add_argument("--no-grad-ckpt", action="store_true", help="policy forward without gradient checkpointing")
    args = p.parse_args()
    args.projector, args.stride, args.lora_r, args.attn = "mlp", 1, 32, "sdpa"
    args.grad_ckpt, args.loss_chunk, args.no_cache = not args.no_grad_ckpt, 1024, False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build(args, device, torch.bfloat16)
    cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.prompts, num_generations=args.generations,
                     max_new_tokens=args.max_new_tokens, lr=1e-5, length_target=args.max_new_tokens // 2,
                     length_limit=args.max_new_tokens, micro_batch_size=args.micro_batch or None,
                     gradient_checkpointing=args.grad_ckpt)
    start = time.time()
    log = grpo_train(model, load_kegg("train").select(range(64)), cfg, "/tmp/grpo_bench")
    seconds = time.time() - start
    print("RESULT " + json.dumps({
        "encoder": args.encoder, "text": args.text, "steps": args.steps, "prompts_per_step": args.prompts,
        "generations": args.generations, "max_new_tokens": args.max_new_tokens,
        "seconds_per_step": round(seconds / args.steps, 2), "final_loss": log[-1]["loss"],
        "mean_tokens": log[-1]["mean_tokens"],
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}), flush=True)


if __name__ == "__main__":
    main()
