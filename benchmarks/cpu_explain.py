"""explain_variant latency on CPU, scoring mode (and optionally generation), on a saved checkpoint.

    python benchmarks/cpu_explain.py --model runs/quickstart/model [--n 20] [--generate-tokens 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dnallm.data import load_kegg
from dnallm.inference import explain_variant, load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="runs/quickstart/model")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--generate-tokens", type=int, default=0, help="also time generate mode with this budget")
    args = p.parse_args()
    model = load_model(args.model)
    rows = load_kegg("test").select(range(args.n + 1))
    result = {"model": args.model, "threads": torch.get_num_threads(), "n": args.n}
    for mode, kwargs in [("score", {}), ("generate", {"max_new_tokens": args.generate_tokens})]:
        if mode == "generate" and not args.generate_tokens:
            continue
        explain_variant(rows[0]["question"], rows[0]["ref_window"], rows[0]["variant_window"], model=model,
                        mode=mode, **kwargs)  # warm-up
        times = []
        for r in rows.select(range(1, args.n + 1)):
            t = time.perf_counter()
            explain_variant(r["question"], r["ref_window"], r["variant_window"], model=model, mode=mode, **kwargs)
            times.append(time.perf_counter() - t)
        result[mode] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
                        "mean_s": round(statistics.mean(times), 3)}
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
