"""Dump a checkpoint's greedy answers and label log-probabilities for a split, or compare two dumps.

Used to show that a refactor changes no answer: dump with the old code, dump with the new, compare.

    python benchmarks/golden_answers.py dump --model runs/quickstart/model --out old.json
    python benchmarks/golden_answers.py compare old.json new.json
    python benchmarks/golden_answers.py dump --model M --out gqa.json --attn sdpa_gqa [--dtype float32]  # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def dump(model_path: str, out: str, split: str, views: list[str], batch_size: int, max_new_tokens: int,
         dtype: str = "auto", attn: str | None = None) -> None:
    from dnallm.data import load_kegg
    from dnallm.evaluation import control_inputs
    from dnallm.inference import generate_answers, load_model
    from dnallm.scoring import label_logprobs

    model = load_model(model_path, dtype=dtype)
    if attn:
        model.set_attn_implementation(attn)
    result = {}
    for view in views:
        questions, windows = control_inputs(load_kegg(split, view=view))
        start = time.perf_counter()
        texts = generate_answers(model, questions, windows, batch_size=batch_size, max_new_tokens=max_new_tokens)
        result[view] = {"texts": texts, "logprobs": label_logprobs(model, questions, windows).tolist(),
                        "seconds": round(time.perf_counter() - start, 1)}
        print(view, result[view]["seconds"], "s", flush=True)
    with open(out, "w") as f:
        json.dump(result, f)


def compare(a_path: str, b_path: str) -> dict:
    a, b = (json.load(open(p)) for p in (a_path, b_path))
    report = {}
    for view in a:
        la, lb = np.array(a[view]["logprobs"]), np.array(b[view]["logprobs"])
        report[view] = {"texts_equal": f"{sum(x == y for x, y in zip(a[view]['texts'], b[view]['texts']))}"
                                       f"/{len(a[view]['texts'])}",
                        "logprobs_max_abs_diff": float(np.abs(la - lb).max()),
                        "top_label_equal": f"{int((la.argmax(1) == lb.argmax(1)).sum())}/{len(la)}"}
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--model", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--split", default="test")
    d.add_argument("--views", nargs="+", default=["kegg", "kegg_hard"])
    d.add_argument("--batch-size", type=int, default=80)
    d.add_argument("--max-new-tokens", type=int, default=800)
    d.add_argument("--dtype", default="auto")
    d.add_argument("--attn", default=None, help="attention implementation (default: the library's)")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    if args.command == "dump":
        dump(args.model, args.out, args.split, args.views, args.batch_size, args.max_new_tokens, args.dtype, args.attn)
    else:
        print(json.dumps(compare(args.a, args.b), indent=2))


if __name__ == "__main__":
    main()
