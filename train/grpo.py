"""GRPO stage on top of an SFT checkpoint: `python train/grpo.py --model SFT_CKPT --config PRESET.yaml --out DIR`.

Reads the preset's `grpo:` section (see dnallm.grpo.GRPOConfig); trains on the train split only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from dnallm.data import load_views, training_views
from dnallm.grpo import GRPOConfig, grpo_train
from dnallm.modeling import ADAPTER_DIR, DNALLMForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="SFT checkpoint folder")
    parser.add_argument("--config", required=True, help="YAML preset with a grpo: section")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training rows")
    args = parser.parse_args()
    preset = yaml.safe_load(Path(args.config).read_text())
    cfg = GRPOConfig(**preset.get("grpo", {}))
    cuda = torch.cuda.is_available()
    model = DNALLMForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if cuda else None, is_trainable=True)
    model.to("cuda" if cuda else "cpu")
    records = load_views("train", training_views(preset))
    if args.limit:
        records = records.select(range(args.limit))
    grpo_train(model, records, cfg, args.out, reference_adapter=Path(args.model) / ADAPTER_DIR if cfg.beta else None)


if __name__ == "__main__":
    main()
