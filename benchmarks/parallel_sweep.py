"""Run tiny_sft_sweep.py variants as parallel processes spread over the visible GPUs (the tiny default is step-time
bound on a GPU, so several runs share one card). Each variant's JSON line and log go to OUT.

    python benchmarks/parallel_sweep.py --out OUT --variants benchmarks/sweeps/cheaper_mix.json --gpus 0,1 --generate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", type=Path, required=True, help="JSON object {name: preset overrides}")
    parser.add_argument("--gpus", default="0", help="comma-separated GPU ids the runs take in turn")
    parser.add_argument("--work", type=Path, default=Path("/tmp/parallel_sweep"), help="checkpoints and eval files")
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--stand-ins", default="dnallm/assets/tiny",
                        help="the encoder/ and text-model/ every run uses (for --splits grouped: ones pretrained on "
                             "grouped-train; tiny_sft_sweep.py refuses the shipped ones)")
    parser.add_argument("--splits", choices=("official", "grouped"), default="official")
    args = parser.parse_args()
    variants = json.loads(args.variants.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    procs = []
    for k, (name, overrides) in enumerate(variants.items()):
        cmd = [sys.executable, "benchmarks/tiny_sft_sweep.py", "--out", str(args.work / name), "--stand-ins",
               args.stand_ins, "--splits", args.splits, "--device", "cuda", "--variant", name, json.dumps(overrides)]
        cmd += ["--generate"] if args.generate else []
        gpus = args.gpus.split(",")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)], "OMP_NUM_THREADS": "2"}
        procs.append((name, subprocess.Popen(cmd, env=env, stdout=open(args.out / f"{name}.log", "w"),
                                             stderr=subprocess.STDOUT)))
    rows = []
    for name, p in procs:
        p.wait()
        result = args.work / name / "sft_sweep.jsonl"
        rows += result.read_text().splitlines() if p.returncode == 0 and result.exists() else \
            [json.dumps({"variant": name, "error": f"exit {p.returncode}, see {name}.log"})]
    (args.out / "results.jsonl").write_text("".join(r + "\n" for r in rows))
    print("".join(r + "\n" for r in rows))


if __name__ == "__main__":
    main()
