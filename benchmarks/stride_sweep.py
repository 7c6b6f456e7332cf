"""Issue 7: the accuracy cost of DNA-token compression on the tiny preset (CPU).

    python benchmarks/stride_sweep.py --base runs/quickstart --strides 8 32 128 1024 --out runs/stride-sweep

Reuses the tiny pretrained encoder and text model of a quickstart run (BASE/encoder, BASE/text-model), then for
each projector stride runs the tiny preset's SFT recipe unchanged (frozen encoder, mlp projector + LoRA,
checkpoint chosen on val loss) and scores the official test split in label-scoring mode, with the text-only
control (same checkpoint, DNA spans removed) so the DNA's own contribution is visible. One JSON line per stride.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dnallm.configuration import DNALLMConfig
from dnallm.data import load_kegg
from dnallm.evaluation import evaluate_split
from dnallm.modeling import DNALLMForCausalLM
from dnallm.quickstart import load_preset
from dnallm.training import SFTConfig, train_sft


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="a quickstart output folder with encoder/ and text-model/")
    p.add_argument("--strides", type=int, nargs="+", default=[8, 32, 128, 1024])
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="runs/stride-sweep")
    args = p.parse_args()
    base, out = Path(args.base).resolve(), Path(args.out)
    preset = load_preset("tiny")
    train, val, test = load_kegg("train"), load_kegg("val"), load_kegg(args.split)
    for stride in args.strides:
        torch.manual_seed(0)
        run = out / f"stride-{stride}"
        (run / "model").mkdir(parents=True, exist_ok=True)
        config = DNALLMConfig(encoder_type="genos", encoder_name_or_path=str(base / "encoder"),
                              text_model_name_or_path=str(base / "text-model"),
                              **{**preset["model"], "projector_stride": stride})
        model = DNALLMForCausalLM.build(config)
        model.add_lora()
        t = time.time()
        summary = train_sft(model, train, val, SFTConfig.from_dict(preset["sft"]), run / "model")
        sft_s = time.time() - t
        best = DNALLMForCausalLM.from_pretrained(run / "model").eval()
        m = evaluate_split(best, test, args.split, run / "eval", generate=False, controls=("text-only",),
                           score_batch_size=16, report=False)
        row = {"stride": stride, "dna_tokens_per_window": -(-1024 // stride), "sft_s": round(sft_s, 1),
               "best_val_loss": summary["best_val_loss"], "accuracy": m["accuracy"],
               "ci95": [m["accuracy_ci_low"], m["accuracy_ci_high"]], "macro_f1": m["macro_f1"],
               "text_only_accuracy": m["controls"]["text-only"]["score"]["accuracy"]}
        print("RESULT " + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
