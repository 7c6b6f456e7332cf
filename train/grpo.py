"""GRPO stage on top of an SFT checkpoint: `python train/grpo.py --model SFT_CKPT --config PRESET.yaml --out DIR`.

Reads the preset's `grpo:` section (see dnallm.grpo.GRPOConfig: micro_batch_size, gradient_checkpointing,
save_every, resume, ...); trains on the train split only. On a GPU the model loads in bf16 and the trainable
weights train in fp32. DIR/last holds a resumable state; `--resume` continues from it. Several GPUs:
`torchrun --nproc_per_node N train/grpo.py ...` (data parallel, see dnallm.grpo).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from dnallm.data import load_views, training_views
from dnallm.grpo import GRPOConfig, grpo_train
from dnallm.modeling import ADAPTER_DIR, DNALLMForConditionalGeneration
from dnallm.quickstart import load_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="SFT checkpoint folder")
    parser.add_argument("--config", required=True, help="YAML preset with a grpo: section")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training rows of each view")
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="sequences per policy forward/backward (overrides the preset's grpo.micro_batch_size)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last (same as grpo.resume: true)")
    args = parser.parse_args()
    preset = load_preset(args.config)
    cfg = GRPOConfig(**preset.get("grpo", {}))
    if args.micro_batch_size:
        cfg.micro_batch_size = args.micro_batch_size
    cfg.resume = cfg.resume or args.resume
    cuda = torch.cuda.is_available()
    model = DNALLMForConditionalGeneration.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else None, is_trainable=True)
    if cuda:  # one GPU per rank under torchrun
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    model.to(f"cuda:{torch.cuda.current_device()}" if cuda else "cpu")
    # the windows it was trained on; --limit cuts each view (a cut of the joined views would keep the first alone)
    records = load_views("train", training_views(preset), window=model.config.dna_config.window_size, limit=args.limit)
    grpo_train(model, records, cfg, args.out, reference_adapter=Path(args.model) / ADAPTER_DIR if cfg.beta else None)


if __name__ == "__main__":
    main()
