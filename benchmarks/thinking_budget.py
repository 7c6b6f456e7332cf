"""Generate-mode accuracy against the thinking budget (the reasoning tokens allowed before `</think>` and the
constrained `Answer:` line are forced), on one split's kegg and kegg_hard views.

Diagnoses where generate mode loses to label scoring: if accuracy falls as the budget grows, the model's own
reasoning is what leads the answer away (docs/benchmarks.md, session 12).

    python benchmarks/thinking_budget.py --model runs/quickstart/model --split val --budgets 16 32 96 256 800
"""

from __future__ import annotations

import argparse
import json
import time

from dnallm.data import load_kegg
from dnallm.evaluation import control_inputs
from dnallm.inference import generate_answers, load_model
from dnallm.parsing import parse_answer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/quickstart/model")
    p.add_argument("--split", default="val")
    p.add_argument("--views", nargs="+", default=["kegg", "kegg_hard"])
    p.add_argument("--budgets", type=int, nargs="+", default=[16, 32, 96, 256, 800])
    p.add_argument("--batch-size", type=int, default=80)
    args = p.parse_args()
    model = load_model(args.model)
    for view in args.views:
        records = load_kegg(args.split, view=view)
        questions, windows = control_inputs(records)
        for budget in args.budgets:
            start = time.perf_counter()
            texts = generate_answers(model, questions, windows, batch_size=args.batch_size, max_new_tokens=budget)
            correct = sum(parse_answer(t) == gold for t, gold in zip(texts, records["label"]))
            reasoning_words = sum(len(t.split("</think>")[0].split()) for t in texts) / len(texts)
            print(json.dumps({"split": args.split, "view": view, "budget": budget, "n": len(texts),
                              "accuracy": round(100 * correct / len(texts), 1),
                              "mean_reasoning_words": round(reasoning_words, 1),
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
