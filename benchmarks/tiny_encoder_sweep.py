"""Which tiny DNA stand-in knows loci? Pretrain Genos-layout encoders of several sizes/lengths, probe each layer.

For each configuration: next-base pretraining on the training windows (`dnallm.pretrain.pretrain_dna_encoder`,
the quickstart's function), then the encoder-alone probe (`dnallm.probe.run_probe`: mean-pooled states of one
layer -> logistic regression, selected on val) on the official test split for several layers. Prints one JSON line
per (config, layer) and writes them to OUT/sweep.jsonl; encoders are kept in OUT/encoders/NAME.

    python benchmarks/tiny_encoder_sweep.py --out /tmp/sweep --device cuda [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dnallm.data import load_kegg
from dnallm.encoders import build_encoder
from dnallm.pretrain import pretrain_dna_encoder
from dnallm.probe import run_probe

# name: (steps, batch_size, lr, layout)
CONFIGS = {
    "h64-s100": (100, 16, 2e-3, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4)),
    "h64-s1000": (1000, 16, 2e-3, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4)),
    "h128-s1000": (1000, 16, 1e-3, dict(hidden_size=128, intermediate_size=128, num_hidden_layers=4)),
    "h128-s3000": (3000, 16, 1e-3, dict(hidden_size=128, intermediate_size=128, num_hidden_layers=4)),
    "h128-l6-s3000": (3000, 16, 1e-3, dict(hidden_size=128, intermediate_size=128, num_hidden_layers=6)),
    "h256-s3000": (3000, 16, 5e-4, dict(hidden_size=256, intermediate_size=256, num_hidden_layers=4)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--probe-jobs", type=int, default=1, help="logistic-regression fits in parallel threads")
    args = parser.parse_args()
    train, val, test = (load_kegg(s) for s in ("train", "val", "test"))
    hard_test = load_kegg("test", view="kegg_hard")
    assert hard_test["variant_window"] == test["variant_window"]  # the probe sees DNA only: one number for both
    windows = list(train["ref_window"]) + list(train["variant_window"])
    results = []
    for name, (steps, batch_size, lr, layout) in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        out = args.out / "encoders" / name
        t = time.time()
        losses = pretrain_dna_encoder(windows, out, steps=steps, batch_size=batch_size, lr=lr, device=args.device,
                                      **layout)
        pretrain_s = time.time() - t
        for layer in range(1, layout["num_hidden_layers"] + 1):
            encoder = build_encoder("genos", str(out), layer=layer).to(args.device)
            r = run_probe(encoder, train, val, test, batch_size=64, n_jobs=args.probe_jobs)
            row = {"config": name, "layer": layer, "steps": steps, **layout, "pretrain_s": round(pretrain_s, 1),
                   "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                   "feature_set": r["feature_set"], "C": r["C"], "val_accuracy": r["val_accuracy"],
                   "test_accuracy": sum(p == g for p, g in zip(r["predicted"], test["label"])) / len(test),
                   "probe_s": r["seconds"], "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"}
            print(json.dumps(row), flush=True)
            results.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))


if __name__ == "__main__":
    main()
