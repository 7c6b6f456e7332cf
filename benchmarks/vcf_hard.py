"""The DNA must carry the answer: KEGG test variants as a VCF at genome coordinates, with no gene annotation.

Places the official test rows on synthetic contigs (`dnallm.genome.write_kegg_contigs`: each row's own 4 kb of
sequence, so the windows cut from the FASTA equal the dataset's), writes a VCF of them without any INFO (so the
question is the kegg_hard one) and runs the batch CLI, `dnallm explain --vcf`, on it. Prints accuracy against the
rows' labels, the number of distinct labels answered, and the hard-test accuracy of the same mode for comparison.
Rows whose REF or ALT is empty (VCF needs a padding base, which would move the window) are left out and counted.

    python benchmarks/vcf_hard.py --model runs/quickstart/model --out /tmp/vcf [--mode score|generate]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

from dnallm.data import load_kegg
from dnallm.genome import write_kegg_contigs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--mode", default="score", choices=("score", "generate"))
    parser.add_argument("--max-new-tokens", type=int, default=800)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    test = load_kegg("test")
    placed = write_kegg_contigs(test, args.out / "genome.fa", rows_per_contig=20)
    usable = [(p, label) for p, label in zip(placed, test["label"]) if p["ref"] and p["alt"]]
    with open(args.out / "kegg_test.vcf", "w") as f:
        f.write("##fileformat=VCFv4.2\n")
        for name in sorted({p["chrom"] for p, _ in usable}, key=lambda c: int(c[3:])):
            f.write(f"##contig=<ID={name}>\n")
        f.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for p, _ in usable:
            f.write(f"{p['chrom']}\t{p['pos']}\ttest_row_{p['row']}\t{p['ref']}\t{p['alt']}\t.\tPASS\t.\n")
    out_tsv = args.out / f"out-{args.mode}.tsv"
    out_tsv.unlink(missing_ok=True)
    (args.out / f"out-{args.mode}.tsv.meta.json").unlink(missing_ok=True)
    t = time.time()
    subprocess.run([sys.executable, "-m", "dnallm.cli", "explain", "--vcf", str(args.out / "kegg_test.vcf"),
                    "--fasta", str(args.out / "genome.fa"), "--model", str(args.model), "--out", str(out_tsv),
                    "--mode", args.mode, "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "16"],
                   check=True)
    seconds = time.time() - t
    gold = {f"test_row_{p['row']}": label for p, label in usable}
    with open(out_tsv) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    answered = [r["label"] for r in rows]
    correct = sum(r["label"] == gold[r["id"]] for r in rows)
    print(json.dumps({"mode": args.mode, "variants": len(rows), "left_out_empty_allele": len(placed) - len(usable),
                      "errors": sum(bool(r["error"]) for r in rows), "accuracy": round(correct / len(rows), 4),
                      "distinct_labels": len(set(answered)), "seconds": round(seconds, 1),
                      "questions": sorted({r["question"] for r in rows})}))


if __name__ == "__main__":
    main()
