"""Evaluation: greedy decoding with the strict `Answer:` parse and/or label scoring, metrics, controls, baselines.

One harness (`run_inputs`) answers questions with DNA windows in two modes: generate (greedy reasoning + the
strict final `Answer:` line) and score (the argmax of the 37 label probabilities). The main evaluation and every
control go through it; only their inputs differ (`control_inputs`):
  text-only      the prompt without the two sequence lines and no DNA inputs;
  dna-only       the question replaced by the kegg_hard sentence (skipped when it already is);
  shuffled-dna   another record's windows (a fixed permutation: no row keeps its own windows);
  ref-as-variant the reference window given as both reference and variant.
Baselines are trained on the matching training split and scored by the same metric functions.
"""

from __future__ import annotations

import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from dnallm.inference import generate_answers
from dnallm.labels import KEGG_LABELS, LABEL_TO_ID
from dnallm.parsing import parse_answer

CONTROLS = ("text-only", "dna-only", "shuffled-dna", "ref-as-variant")
ABSTAIN_THRESHOLD = 0.5
CURVE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.9)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion (well behaved near 0 and 1, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _ids(labels: list[str | None]) -> list[int]:
    return [LABEL_TO_ID.get(p, -1) if p else -1 for p in labels]


def classification_metrics(gold: list[str], predicted: list[str | None]) -> dict:
    """Accuracy and macro-F1; an unparseable prediction counts as wrong.

    macro_f1 averages over the labels present in the gold labels or the (valid) predictions, scikit-learn's
    default, so a perfect classifier scores 1.0 whatever labels a split lacks; macro_f1_37 averages over all 37
    (labels absent from both count 0: at most 26/37 on a test split holding 26 labels).
    """
    y_true = [LABEL_TO_ID[g] for g in gold]
    y_pred = _ids(predicted)
    n, correct = len(y_true), sum(t == p for t, p in zip(y_true, y_pred))
    low, high = wilson_interval(correct, n)
    present = sorted((set(y_true) | set(y_pred)) - {-1})
    return {"n": n, "correct": correct, "accuracy": accuracy_score(y_true, y_pred) if n else 0.0,
            "macro_f1": f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0) if n else 0.0,
            "macro_f1_37": f1_score(y_true, y_pred, labels=list(range(len(KEGG_LABELS))), average="macro",
                                    zero_division=0) if n else 0.0,
            "accuracy_ci_low": low, "accuracy_ci_high": high,
            "invalid_answers": sum(p == -1 for p in y_pred)}


def per_label_table(gold: list[str], predicted: list[str | None]) -> list[dict]:
    """Precision, recall, F1, support (gold count) and predicted count for each of the 37 labels."""
    y_true, y_pred = [LABEL_TO_ID[g] for g in gold], _ids(predicted)
    labels = list(range(len(KEGG_LABELS)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                     zero_division=0)
    return [{"label": KEGG_LABELS[j], "support": int(support[j]), "predicted": y_pred.count(j),
             "precision": float(precision[j]), "recall": float(recall[j]), "f1": float(f1[j])} for j in labels]


def abstain_metrics(gold: list[str], probabilities: np.ndarray, threshold: float = ABSTAIN_THRESHOLD) -> dict:
    """Predict the most probable label, abstain where its probability is below `threshold`."""
    top = probabilities.max(1)
    best = probabilities.argmax(1)
    answered = top >= threshold
    correct = int(sum(bool(a) and KEGG_LABELS[j] == g for a, j, g in zip(answered, best, gold)))
    n_answered, n = int(answered.sum()), len(gold)
    low, high = wilson_interval(correct, n_answered)
    return {"threshold": threshold, "n": n, "answered": n_answered, "coverage": n_answered / n if n else 0.0,
            "correct": correct, "accuracy_on_answered": correct / n_answered if n_answered else None,
            "accuracy_on_answered_ci_low": low, "accuracy_on_answered_ci_high": high}


def top_k_accuracy(gold: list[str], probabilities: np.ndarray, k: int = 3) -> float:
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return float(np.mean([LABEL_TO_ID[g] in row for g, row in zip(gold, best.tolist())])) if len(gold) else 0.0


def calibration_metrics(gold: list[str], probabilities: np.ndarray) -> dict:
    from dnallm.calibration import N_BINS, expected_calibration_error, reliability_bins

    confidence = probabilities.max(1)
    correct = [KEGG_LABELS[j] == g for j, g in zip(probabilities.argmax(1), gold)]
    return {"ece": expected_calibration_error(confidence, correct), "n_bins": N_BINS,
            "mean_confidence": float(confidence.mean()) if len(gold) else 0.0,
            "bins": reliability_bins(confidence, correct)}


# ---- inputs: the main evaluation and the controls ----

def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation with no fixed point (Sattolo's algorithm: one n-cycle); identity for n < 2."""
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def derange_by_content(items: list, seed: int = 0) -> list[int]:
    """A fixed permutation under which no position gets an item equal to its own (where that can be done).

    `derangement` moves every row, but two rows can hold the same windows (one variant asked two questions), so a
    row could still be given its own DNA. Each such row swaps its source with the first row where the swap gives both
    a different item. Raises if one item fills more than half the rows (no such permutation may exist)."""
    perm = derangement(len(items), seed)
    for i in range(len(items)):
        if items[perm[i]] != items[i]:
            continue
        for k in range(len(items)):
            if items[perm[k]] != items[i] and items[perm[i]] != items[k]:
                perm[i], perm[k] = perm[k], perm[i]
                break
        else:
            raise ValueError(f"cannot give row {i} another row's windows: most rows hold the same windows")
    return perm


def control_inputs(records, control: str | None = None) -> tuple[list[str], list[tuple[str, ...]]]:
    """Questions and per-record windows for the main evaluation (control=None) or one control.

    text-only gives each record no windows: `run_inputs` then builds prompts without the sequence lines.
    """
    from dnallm.data import HARD_QUESTION

    questions = list(records["question"])
    windows = list(zip(records["ref_window"], records["variant_window"]))
    if control is None:
        return questions, windows
    if control == "text-only":
        return questions, [()] * len(windows)
    if control == "dna-only":
        return [HARD_QUESTION] * len(questions), windows
    if control == "shuffled-dna":
        return questions, [windows[j] for j in derange_by_content(windows)]
    if control == "ref-as-variant":
        return questions, [(ref, ref) for ref, _ in windows]
    raise ValueError(f"unknown control {control!r}; expected one of {CONTROLS}")


def run_inputs(model, questions: list[str], windows: list[tuple[str, ...]], generate: bool = True,
               score: bool = True, batch_size: int = 16, score_batch_size: int = 16, max_new_tokens: int = 1024,
               progress=None, constrained: bool = True) -> dict:
    """The harness: generated texts + parsed labels and/or label probabilities + argmax labels.

    Records without windows (all of them, or none) are asked without DNA (`processor.without_dna`).
    """
    from dnallm.scoring import label_probabilities

    has_dna = [bool(w) for w in windows]
    if any(has_dna) and not all(has_dna):
        raise ValueError("either every record has DNA windows or none has")
    run: dict = {"texts": None, "generated": None, "probabilities": None, "scored": None}
    notify = progress or (lambda stage, done: None)
    with nullcontext() if all(has_dna) else model.processor.without_dna():
        if generate:
            notify("generate", 0)
            run["texts"] = generate_answers(model, questions, windows, batch_size=batch_size,
                                            max_new_tokens=max_new_tokens, constrained=constrained,
                                            progress=progress and (lambda n: progress("generate", n)))
            run["generated"] = [parse_answer(t) for t in run["texts"]]
        if score:
            notify("score", 0)
            probs = label_probabilities(model, questions, windows, batch_size=score_batch_size).float().cpu().numpy()
            run["probabilities"] = probs.astype(np.float64)
            run["scored"] = [KEGG_LABELS[j] for j in probs.argmax(1)]
            notify("score", len(questions))
    return run


def mode_metrics(gold: list[str], run: dict) -> dict:
    """Metrics of each mode a run has: generate and/or score (score adds top-3 accuracy)."""
    out = {}
    if run["generated"] is not None:
        out["generate"] = classification_metrics(gold, run["generated"])
    if run["scored"] is not None:
        out["score"] = {**classification_metrics(gold, run["scored"]),
                        "top3_accuracy": top_k_accuracy(gold, run["probabilities"], 3)}
    if len(out) == 2:
        out["mode_agreement"] = float(np.mean([g == s for g, s in zip(run["generated"], run["scored"])]))
    return out


# ---- splits and baselines ----

def split_spec(split: str) -> tuple[str, str]:
    """`[hard-]test|val|train|grouped-test|grouped-val|grouped-train` -> (load_kegg split, view)."""
    from dnallm.data import GROUPED_SPLITS, SPLITS

    view, name = ("kegg_hard", split.removeprefix("hard-")) if split.startswith("hard-") else ("kegg", split)
    if name not in SPLITS + GROUPED_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected [hard-]{'|'.join(SPLITS + GROUPED_SPLITS)}")
    return name, view


def training_split(split: str) -> str:
    """The training split that belongs to an evaluation split (what the baselines are trained on)."""
    name, view = split_spec(split)
    train = "grouped-train" if name.startswith("grouped-") else "train"
    return f"hard-{train}" if view == "kegg_hard" else train


def _scored(gold: list[str], kind: str, predicted: list[str], probs: np.ndarray) -> dict:
    return {"kind": kind, **classification_metrics(gold, predicted), "top3_accuracy": top_k_accuracy(gold, probs, 3),
            "ece": calibration_metrics(gold, probs)["ece"]}


def selection_split(split: str) -> str:
    """The split a probe is selected on for an evaluation split: the matching val (grouped-val for grouped-*)."""
    name, _ = split_spec(split)
    return "grouped-val" if name.startswith("grouped-") else "val"


def probe_metrics(encoder, train_records, records, split: str, cache_dir: str | Path | None = None,
                  batch_size: int = 16, progress: bool = False) -> dict:
    """The encoder-alone row: a frozen encoder's pooled states -> logistic regression (`dnallm.probe`),
    fitted on `train_records`, selected on the val split that matches `split`."""
    from dnallm.data import load_kegg
    from dnallm.probe import run_probe

    selected_on = selection_split(split)
    if split_spec(split)[0] == selected_on:
        raise ValueError(f"the encoder-alone probe is selected on {selected_on}: its score on {split} "
                         "would not be held out; score it on a test split")
    window = len(records["ref_window"][0])  # the probe's train and val windows are cut to the evaluated rows' size
    result = run_probe(encoder, train_records, load_kegg(selected_on, window=window), records,
                       batch_size=batch_size, cache_dir=cache_dir, progress=progress)
    probe = {k: result[k] for k in ("feature_set", "C", "val_accuracy", "pooling", "layer", "seconds", "selection")}
    return {**_scored(list(records["label"]), "DNA only (frozen encoder)", result["predicted"],
                      result["probabilities"]), "probe": probe, "selected_on": selected_on}


# ---- the evaluation ----

def write_predictions(path: Path, records, predicted: list[str | None], main: dict, control_runs: dict,
                      threshold: float) -> None:
    """One JSON line per record: the headline prediction, the generated text, the 37 label probabilities,
    the top 3, whether it abstains, and each control's predictions."""
    from dnallm.scoring import top_k

    gold = list(records["label"])
    sources = records["source_split"] if "source_split" in records.column_names else [None] * len(gold)
    probs = main["probabilities"]
    tops = top_k(torch.from_numpy(probs), 3) if probs is not None else None
    with open(path, "w") as f:
        for i, (row, label) in enumerate(zip(records["row"], gold)):
            line = {"row": row, **({"source_split": sources[i]} if sources[i] else {}), "label": label,
                    "predicted": predicted[i], "correct": label == predicted[i]}
            if main["texts"] is not None:
                line["generated"] = main["texts"][i]
            if probs is not None:
                line.update(scored=main["scored"][i], top_k=[[lab, p] for lab, p in tops[i]],
                            abstained=bool(probs[i].max() < threshold),
                            probabilities=dict(zip(KEGG_LABELS, probs[i].tolist())))
            if control_runs:
                line["controls"] = {c: {m: r[key][i] for m, key in (("generate", "generated"), ("score", "scored"))
                                        if r[key] is not None} for c, r in control_runs.items()}
            f.write(json.dumps(line) + "\n")


def _run_with_controls(model, records, controls, progress, options: dict, controls_generate: bool):
    """The main run, then each control's run on its changed inputs: (main run, control runs, control metrics)."""
    gold = list(records["label"])
    main = run_inputs(model, *control_inputs(records), progress=progress, **options)
    control_runs, control_metrics = {}, {}
    main_inputs = list(zip(*control_inputs(records)))
    for control in controls:
        questions, windows = control_inputs(records, control)
        unchanged = sum(a == b for a, b in zip(main_inputs, zip(questions, windows)))
        if unchanged == len(gold):  # e.g. dna-only on the hard view, whose question already is that sentence
            control_metrics[control] = {"skipped": "same inputs as the main run"}
            continue
        t = time.time()
        control_runs[control] = run_inputs(model, questions, windows,
                                           progress=progress and (lambda s, n, c=control: progress(f"{c}/{s}", n)),
                                           **{**options, "generate": options["generate"] and controls_generate})
        control_metrics[control] = {**mode_metrics(gold, control_runs[control]), "inputs_unchanged": unchanged,
                                    "seconds": round(time.time() - t, 1)}
    return main, control_runs, control_metrics


def _check_windows(records, window: int, what: str) -> None:
    lengths = {len(w) for w in records["ref_window"]} | {len(w) for w in records["variant_window"]}
    if lengths != {window}:
        raise ValueError(f"{what}: the records hold windows of {sorted(lengths)} bp, but the model reads {window} bp "
                         f"windows (config.dna_config.window_size); load them with load_kegg(..., window={window})")


def evaluate_split(model, records, split: str, out_dir: str | Path, batch_size: int = 16,
                   max_new_tokens: int = 1024, progress=None, *, generate: bool = True, score: bool = True,
                   controls: tuple[str, ...] = (), train_records=None, threshold: float = ABSTAIN_THRESHOLD,
                   score_batch_size: int = 16, report: bool = True, probe: bool = True,
                   controls_generate: bool = True, probe_cache_dir: str | Path | None = None,
                   constrained: bool = True, encoder_cache=None) -> dict:
    """Evaluate one split and write metrics.json, predictions.jsonl and (report=True) report.md + PNGs.

    The top-level accuracy/macro-F1/CI are those of generation when `generate`, else of scoring (`mode`).
    `train_records` feed the baselines and the probe; None loads the split's `training_split`.
    probe=True adds the "encoder alone" row (`dnallm.probe`; pooled states kept in `probe_cache_dir` if given).
    controls_generate=False runs the controls in score mode only (generation is the costly part).
    constrained=True decodes the answer line over the 37 labels; False keeps free decoding with the strict parse.
    `progress(stage, done)` is called as the stages advance.
    `encoder_cache`: the `EmbeddingCache` the main run and the controls read encoder states from (share one across
    splits holding the same windows, as test and hard-test do); None: a new one for this call.
    """
    from dnallm.baselines import run_baselines
    from dnallm.data import load_kegg
    from dnallm.encoders.cache import EmbeddingCache

    if not (generate or score):
        raise ValueError("nothing to evaluate: enable generate and/or score")
    window = model.config.dna_config.window_size
    _check_windows(records, window, split)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    gold = list(records["label"])
    mode = "generate" if generate else "score"
    options = dict(generate=generate, score=score, batch_size=batch_size, score_batch_size=score_batch_size,
                   max_new_tokens=max_new_tokens, constrained=constrained)

    if encoder_cache is None:
        encoder_cache = EmbeddingCache(model.dna_encoder, dtype=next(model.projector.parameters()).dtype,
                                       device=model.device)
    with model.processor.cached_encoder_states(encoder_cache):
        main, control_runs, control_metrics = _run_with_controls(model, records, controls, progress, options,
                                                                 controls_generate)
    predicted = main["generated"] if generate else main["scored"]
    modes = mode_metrics(gold, main)
    decoding = ("label scoring (the most likely of the 37 labels, no reasoning)" if not generate else
                "greedy reasoning; answer constrained to the 37 labels (the most likely label after `Answer:`)"
                if constrained else "greedy, free answer line (strict parse: an answer that does not parse counts as wrong)")
    metrics = {"split": split, "mode": mode, **modes[mode], "decoding": decoding, "constrained": constrained,
               "modes": modes, "per_label": per_label_table(gold, predicted)}
    if score:
        from dnallm.scoring import scoring_form_trained

        metrics["score_form_trained"] = scoring_form_trained(model)
        probs = main["probabilities"]
        metrics["calibration"] = calibration_metrics(gold, probs)
        metrics["abstain"] = abstain_metrics(gold, probs, threshold)
        metrics["abstain_curve"] = [abstain_metrics(gold, probs, t) for t in CURVE_THRESHOLDS]

    metrics["controls"] = control_metrics

    trained_on = "given records" if train_records is not None else training_split(split)
    if train_records is None:
        train_records = load_kegg(*split_spec(trained_on), window=window)
    _check_windows(train_records, window, f"the baselines' training records ({trained_on})")
    metrics["baselines"] = {name: _scored(gold, kind, predicted, probs)
                            for name, (kind, predicted, probs) in run_baselines(train_records, records).items()}
    if probe and split_spec(split)[0] == selection_split(split):
        metrics["probe_left_out"] = f"the probe is selected on {split_spec(split)[0]}, so it has no held-out row here"
    elif probe:
        metrics["baselines"]["encoder alone"] = probe_metrics(model.dna_encoder, train_records, records, split,
                                                              probe_cache_dir)
    metrics["baselines_trained_on"] = f"{trained_on} (n={len(train_records)})"
    seen = set(train_records["variant_sequence"])
    metrics["rows_with_variant_in_train"] = sum(v in seen for v in records["variant_sequence"])
    metrics["seconds"] = round(time.time() - start, 1)
    if model.name_or_path:  # a loaded checkpoint: which training run these figures belong to (dnallm.model_card)
        from dnallm.model_card import checkpoint_identity

        metrics["checkpoint"] = {"path": model.name_or_path, "identity": checkpoint_identity(model.name_or_path)}
    metrics = json.loads(json.dumps(metrics))  # plain JSON types: the returned dict equals metrics.json

    write_predictions(out_dir / "predictions.jsonl", records, predicted, main, control_runs, threshold)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if report:
        from dnallm.report import write_report

        write_report(metrics, out_dir, gold, predicted)
    return metrics
