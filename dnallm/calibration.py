"""Calibration of the label probabilities: expected calibration error and a reliability diagram.

ECE with equal-width confidence bins (0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1] (a confidence of exactly 0
goes to the first bin): sum over bins of |bin| / n x |accuracy(bin) - mean confidence(bin)|, where the
confidence of a prediction is its top probability and it is correct when that label is the gold one.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

N_BINS = 15


def reliability_bins(confidences, correct, n_bins: int = N_BINS) -> list[dict]:
    """Per bin: lower/upper edge, count, mean confidence and accuracy (None for an empty bin)."""
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(conf, edges[1:-1], right=True)  # edges[b] < conf <= edges[b + 1]
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                     "confidence": float(conf[members].mean()) if count else None,
                     "accuracy": float(hit[members].mean()) if count else None})
    return bins


def expected_calibration_error(confidences, correct, n_bins: int = N_BINS) -> float:
    n = len(confidences)
    if n == 0:
        return 0.0
    return math.fsum(b["count"] / n * abs(b["accuracy"] - b["confidence"])
                     for b in reliability_bins(confidences, correct, n_bins) if b["count"])


def reliability_diagram(bins: list[dict], path: str | Path, title: str = "Reliability diagram") -> Path:
    """Bar chart of accuracy per confidence bin against the diagonal, with bin counts; saved as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend switch, safe in worker threads

    width = bins[0]["high"] - bins[0]["low"]
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    full = [b for b in bins if b["count"]]
    lows, accuracy = [b["low"] for b in full], [b["accuracy"] for b in full]
    ax.bar(lows, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(lows, [b["confidence"] - b["accuracy"] for b in full], bottom=accuracy, width=width, align="edge",
           color="tab:red", alpha=0.3, label="gap to confidence")
    for b in full:
        ax.text(b["low"] + width / 2, min(b["accuracy"], 0.95) + 0.02, str(b["count"]), ha="center", fontsize=7)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top label probability)", ylabel="accuracy", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)
