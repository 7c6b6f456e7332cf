"""Where a batched decoding step spends its time (torch.profiler), for the generation lever of issue 7.

    python benchmarks/profile_decode.py --batch 128 --tokens 32

Random-init Genos-1.2B + Qwen3-4B layouts (merged LoRA, bf16), prompts from KEGG training rows. Prints the
wall time per new token for the dynamic and the static KV cache, and the top CUDA kernels of each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from sft_step import build, init_distributed, parser as sft_parser  # noqa: E402

from dnallm.data import load_kegg  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--stride", type=int, default=16)
    args = p.parse_args()
    device = torch.device("cuda")
    init_distributed(device)
    model = build(sft_parser().parse_args(["--stride", str(args.stride)]), device, torch.bfloat16).eval().merge_lora()
    rows = load_kegg("train").select(range(args.batch))
    proc = model.processor
    b = proc([proc.prompt(q) for q in rows["question"]], [[r, v] for r, v in zip(rows["ref_window"], rows["variant_window"])],
             padding_side="left", pad_to_multiple_of=64)
    b = {k: v.to(device) for k, v in b.items()}
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    model.generation_config.min_new_tokens = args.tokens
    print("prompt width", ids.shape[1], "attn", model.language_model.config._attn_implementation, flush=True)
    for static in (False, True):
        with torch.no_grad():
            for n in (4, args.tokens):  # warm-up (compiles when static), then the timed run
                torch.cuda.synchronize()
                t = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n,
                               cache_implementation="static" if static else None, **b)
                torch.cuda.synchronize()
                print(f"static={static} new_tokens={n}: {time.perf_counter() - t:.2f} s", flush=True)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens,
                               cache_implementation="static" if static else None, **b)
                torch.cuda.synchronize()
        print(f"---- static={static}: top CUDA ops")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
