"""SFT entry point: `python train/sft.py --config PRESET.yaml|tiny --out DIR` or `deepspeed train/sft.py ...`.

A thin wrapper over `dnallm.training.train_sft`: the encoder is frozen and cached, the projector and LoRA are
trained, the checkpoint is chosen on the validation split, and the test split is never read.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from dnallm.configuration import DNALLMConfig
from dnallm.data import load_views, training_views
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.quickstart import load_preset
from dnallm.training import SFTConfig, train_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="a YAML preset with model: and sft: sections "
                        "(train/configs/*.yaml), or a packaged preset's name (tiny)")
    parser.add_argument("--out", required=True, help="checkpoint folder")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N rows of train and val (smoke runs)")
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    args = parser.parse_args()

    preset = load_preset(args.config)
    sft = SFTConfig.from_dict(preset.get("sft", {}))
    device = torch.device("cpu")
    if torch.cuda.is_available():  # with or without DeepSpeed (one GPU runs without it)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if sft.deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    dtype = torch.bfloat16 if sft.bf16 and device.type == "cuda" else None
    torch.manual_seed(sft.seed)  # the fresh projector and LoRA weights: the same on every rank and every run
    # relative model paths (the tiny preset's ../encoder) are relative to the checkpoint folder
    Path(args.out).mkdir(parents=True, exist_ok=True)
    model = DNALLMForConditionalGeneration.build(DNALLMConfig(**preset["model"]), dtype=dtype, base_dir=Path(args.out))
    model.add_lora()
    model.to(device)
    views = training_views(preset)
    window = model.config.dna_config.window_size
    # --limit keeps the first rows of each split, then builds the view mix from them (as the quickstart does)
    train, val = (load_views(split, views, window=window, limit=args.limit) for split in ("train", "val"))
    train_sft(model, train, val, sft, args.out)
    if torch.distributed.is_initialized():
        # An explicit teardown: left to interpreter exit, a 2-rank gloo run sometimes aborted after finishing
        # ("terminate called without an active exception", rank 0 SIGABRT; tests/test_distributed_cpu.py).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
