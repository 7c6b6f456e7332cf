"""Does the DNA carry the answer after SFT? Train the tiny preset's SFT stage under several settings, score each.

Builds (or reuses) the tiny stand-ins in OUT/stand-ins with the preset's pretraining settings, then for each variant
(a JSON object of overrides for the preset's model/sft/data sections) runs the real recipe (frozen encoder,
projector + LoRA, the preset's training-view mix) and evaluates label scoring on test and hard-test (official, or
with --splits grouped grouped-test and hard-grouped-test) with the text-only and shuffled-DNA controls. One JSON line
per variant in OUT/sft_sweep.jsonl.

    python benchmarks/tiny_sft_sweep.py --out /tmp/sft --device cuda \
        --variant base '{}' --variant stride128 '{"model": {"projector_stride": 128}}'
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from dnallm.configuration import DNALLMConfig
from dnallm.data import load_kegg, load_views, training_views
from dnallm.evaluation import evaluate_split
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.quickstart import SHIPPED_STAND_INS, build_tiny_models, load_preset
from dnallm.training import SFTConfig, train_sft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--stand-ins", type=Path, default=None, help="reuse this folder's encoder/ and text-model/")
    parser.add_argument("--text-pretrain", default=None, metavar="JSON",
                        help="overrides for the preset's text_pretrain section: build OUT/stand-ins with the shipped "
                             "encoder and a text stand-in pretrained with these settings")
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each split (smoke runs)")
    parser.add_argument("--generate", action="store_true",
                        help="also generate (reasoning + constrained answer) on both splits")
    parser.add_argument("--splits", choices=("official", "grouped"), default="official",
                        help="grouped: train/select on grouped-train/val, score grouped-test and hard-grouped-test "
                             "(stand-ins built anew on grouped-train unless --stand-ins holds them)")
    parser.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), default=[])
    args = parser.parse_args()
    prefix = "grouped-" if args.splits == "grouped" else ""
    base = load_preset("tiny")
    stand_ins = args.stand_ins or args.out / "stand-ins"
    if args.splits == "grouped" and (args.text_pretrain or stand_ins.resolve() == SHIPPED_STAND_INS.resolve()):
        # The shipped stand-ins (and --text-pretrain, which reuses their encoder) were pretrained on the official
        # train split, which holds grouped-test's variants, questions and reasoning.
        parser.error("--splits grouped needs stand-ins pretrained on grouped-train: give a new --stand-ins folder "
                     "(built there) or one built by build_tiny_models on grouped-train, and no --text-pretrain")
    if args.text_pretrain:
        base["text_pretrain"].update(json.loads(args.text_pretrain))
        t = time.time()
        log = build_tiny_models(stand_ins, load_kegg(prefix + "train"), base, device=args.device,
                                encoder_from=SHIPPED_STAND_INS)
        print(f"text stand-in built in {time.time() - t:.0f}s, loss {log['text_losses'][0]:.3f} -> "
              f"{sum(log['text_losses'][-20:]) / 20:.3f}", flush=True)
    elif not (stand_ins / "encoder").exists():
        t = time.time()
        build_tiny_models(stand_ins, load_kegg(prefix + "train"), base, device=args.device)
        print(f"stand-ins built in {time.time() - t:.0f}s", flush=True)
    rows = []
    for name, overrides in args.variant or [("base", "{}")]:
        preset = copy.deepcopy(base)
        for section, values in json.loads(overrides).items():
            preset[section].update(values)
        out = args.out / name
        torch.manual_seed(0)
        config = DNALLMConfig(**{**preset["model"], "dna_config": {**preset["model"]["dna_config"],
                                                                   "encoder_name_or_path": str((stand_ins / "encoder").resolve())},
                                 "text_model_name_or_path": str((stand_ins / "text-model").resolve())})
        model = DNALLMForConditionalGeneration.build(config)
        model.add_lora()
        model.to(args.device)
        views = training_views(preset)
        t = time.time()
        summary = train_sft(model, load_views(prefix + "train", views, limit=args.limit),
                            load_views(prefix + "val", views, limit=args.limit),
                            SFTConfig.from_dict({**preset["sft"], "tensorboard": False}), out / "model")
        sft_s = time.time() - t
        best = DNALLMForConditionalGeneration.from_pretrained(out / "model").to(args.device).eval()
        row = {"variant": name, "overrides": json.loads(overrides), "sft_s": round(sft_s, 1),
               "best_val_loss": summary["best_val_loss"], "train_tokens": summary["train_tokens_per_epoch"],
               "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
        # val (score mode, no controls): where a variant is chosen; test and hard-test are reported, not chosen on
        val_records = load_kegg(prefix + "val")
        val_records = val_records.select(range(min(args.limit or len(val_records), len(val_records))))
        val = evaluate_split(best, val_records, prefix + "val", out / "eval" / "val", generate=False, probe=False,
                             score_batch_size=32, report=False)
        row[prefix + "val"] = round(val["modes"]["score"]["accuracy"], 4)
        for split, view in ((prefix + "test", "kegg"), ("hard-" + prefix + "test", "kegg_hard")):
            records = load_kegg(prefix + "test", view=view)
            records = records.select(range(min(args.limit or len(records), len(records))))
            m = evaluate_split(best, records, split, out / "eval" / split,
                               generate=args.generate, batch_size=146, max_new_tokens=preset["eval"]["max_new_tokens"],
                               controls=("text-only", "shuffled-dna"), controls_generate=False, probe=False,
                               score_batch_size=32, report=False)
            row[split] = round(m["modes"]["score"]["accuracy"], 4)
            if args.generate:
                row[f"{split} generate"] = round(m["accuracy"], 4)
            for control in ("text-only", "shuffled-dna"):
                row[f"{split} {control}"] = round(m["controls"][control]["score"]["accuracy"], 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    (args.out / "sft_sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
