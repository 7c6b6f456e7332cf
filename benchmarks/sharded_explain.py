"""Wall time of `dnallm explain --vcf ... --devices 1` vs `--devices N` on a VCF of KEGG test variants placed on
synthetic contigs, and whether the outputs are byte-identical (they must be).

    python benchmarks/sharded_explain.py --model runs/quickstart/model [--variants 48] [--devices 2] [--batch-size 8]

Each run is a fresh `python -m dnallm.cli` process, so the times include start-up and model loading (per worker).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dnallm.data import load_kegg
from dnallm.genome import write_kegg_contigs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="runs/quickstart/model")
    p.add_argument("--variants", type=int, default=48)
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    d = Path(tempfile.mkdtemp(prefix="sharded_bench_"))
    placed = write_kegg_contigs(load_kegg("test").select(range(args.variants)), d / "genome.fa")
    header = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    # a KEGG deletion/insertion has an empty allele; VCF needs the padding base before it
    lines = []
    for i, v in enumerate(placed):
        pos, ref, alt = v["pos"], v["ref"], v["alt"]
        if not ref or not alt:
            continue
        lines.append(f"{v['chrom']}\t{pos}\tv{i}\t{ref}\t{alt}\t.\t.\t.\n")
    (d / "in.vcf").write_text(header + "".join(lines))
    result = {"model": args.model, "variants": len(lines), "batch_size": args.batch_size}
    for n in (1, args.devices):
        t = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "dnallm.cli", "explain", "--vcf", str(d / "in.vcf"), "--fasta",
                              str(d / "genome.fa"), "--model", args.model, "--out", str(d / f"out{n}.tsv"),
                              "--batch-size", str(args.batch_size), "--devices", str(n), "--no-progress"],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        seconds = time.perf_counter() - t
        result[f"devices_{n}"] = {"wall_s": round(seconds, 2), "variants_per_s": round(len(lines) / seconds, 3),
                                  "cli": " ".join(run.stdout.split())}
    result["byte_identical"] = (d / "out1.tsv").read_bytes() == (d / f"out{args.devices}.tsv").read_bytes()
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
