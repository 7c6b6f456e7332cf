"""Baselines every evaluation report shows next to the model, trained on the same training split.

- majority: always the most frequent training label (ties: the first of the 37 labels).
- tfidf-logreg: a text-only classifier, TF-IDF of the question (word 1-2-grams, sublinear tf) + logistic
  regression (C=10, newton-cg). It never sees DNA; on the official test split it reaches 140/146 (95.9 %) because the
  question carries the pathway context.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from dnallm.labels import KEGG_LABELS, LABEL_TO_ID


def majority_baseline(train_labels: list[str], questions: list[str]) -> tuple[list[str], np.ndarray]:
    """Predictions and [n, 37] probabilities (the training label frequencies, the same for every row)."""
    counts = Counter(train_labels)
    label = min(counts, key=lambda lab: (-counts[lab], LABEL_TO_ID[lab]))
    freq = np.array([counts[lab] for lab in KEGG_LABELS], dtype=float) / len(train_labels)
    return [label] * len(questions), np.tile(freq, (len(questions), 1))


def tfidf_logreg_baseline(train_questions: list[str], train_labels: list[str],
                          questions: list[str]) -> tuple[list[str], np.ndarray]:
    """Fit on the training questions, predict the given ones; probabilities over all 37 labels (0 for
    labels absent from training)."""
    clf = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                        LogisticRegression(C=10.0, solver="newton-cg", max_iter=1000))
    y = [LABEL_TO_ID[lab] for lab in train_labels]
    if len(set(y)) == 1:  # LogisticRegression needs two classes; one class is the majority baseline
        return majority_baseline(train_labels, questions)
    clf.fit(train_questions, y)
    probs = np.zeros((len(questions), len(KEGG_LABELS)))
    probs[:, clf.classes_] = clf.predict_proba(questions)
    return [KEGG_LABELS[j] for j in probs.argmax(1)], probs


BASELINES = {"majority": lambda train_q, train_y, q: majority_baseline(train_y, q),
             "tfidf-logreg": tfidf_logreg_baseline}


def run_baselines(train_questions: list[str], train_labels: list[str],
                  questions: list[str]) -> dict[str, tuple[list[str], np.ndarray]]:
    """name -> (predicted labels, [n, 37] probabilities) for every baseline."""
    return {name: fn(train_questions, train_labels, questions) for name, fn in BASELINES.items()}
