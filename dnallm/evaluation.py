"""Evaluation: greedy decoding, strict `Answer:` parse, accuracy with a Wilson interval, macro-F1 (37 labels)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from sklearn.metrics import accuracy_score, f1_score

from dnallm.inference import generate_answers, parse_answer
from dnallm.labels import KEGG_LABELS, LABEL_TO_ID


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion (well behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def classification_metrics(gold: list[str], predicted: list[str | None]) -> dict:
    """Accuracy and macro-F1 over all 37 labels; an unparseable prediction counts as wrong."""
    y_true = [LABEL_TO_ID[g] for g in gold]
    y_pred = [LABEL_TO_ID.get(p, -1) if p else -1 for p in predicted]
    n, correct = len(y_true), sum(t == p for t, p in zip(y_true, y_pred))
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": accuracy_score(y_true, y_pred) if n else 0.0,
            "macro_f1": f1_score(y_true, y_pred, labels=list(range(len(KEGG_LABELS))), average="macro",
                                 zero_division=0) if n else 0.0,
            "accuracy_ci_low": low, "accuracy_ci_high": high,
            "invalid_answers": sum(p == -1 for p in y_pred)}


def evaluate_split(model, records, split: str, out_dir: str | Path, batch_size: int = 16,
                   max_new_tokens: int = 1024, progress=None) -> dict:
    """Generate for every record, score, and write metrics.json and predictions.jsonl to out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    texts = generate_answers(model, list(records["question"]),
                             list(zip(records["ref_window"], records["variant_window"])),
                             batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)
    predicted = [parse_answer(t) for t in texts]
    metrics = {"split": split, **classification_metrics(list(records["label"]), predicted),
               "decoding": "greedy", "seconds": round(time.time() - start, 1)}
    with open(out_dir / "predictions.jsonl", "w") as f:
        for row, gold, pred, text in zip(records["row"], records["label"], predicted, texts):
            f.write(json.dumps({"row": row, "label": gold, "predicted": pred, "correct": gold == pred,
                                "generated": text}) + "\n")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
