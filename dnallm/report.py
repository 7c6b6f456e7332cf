"""The evaluation report: report.md (model, controls and baselines side by side; abstention; calibration;
per-label table) with a confusion-matrix PNG and a reliability-diagram PNG, all from metrics.json's content."""

from __future__ import annotations

from pathlib import Path

from sklearn.metrics import confusion_matrix

from dnallm.labels import KEGG_LABELS, LABEL_TO_ID

NO_ANSWER = "(no valid answer)"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"


def confusion_matrix_png(gold: list[str], predicted: list[str | None], path: str | Path, title: str = "") -> Path:
    """37 x 38 counts: rows gold label, columns predicted label plus a last column for no valid answer."""
    from matplotlib.figure import Figure  # no pyplot: no process-wide backend switch, safe in worker threads

    n_labels = len(KEGG_LABELS)
    y_true = [LABEL_TO_ID[g] for g in gold]
    y_pred = [LABEL_TO_ID.get(p, n_labels) if p else n_labels for p in predicted]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(n_labels + 1)))[:n_labels]
    fig = Figure(figsize=(13, 12))
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(1, cm.max()))
    for i, j in zip(*cm.nonzero()):
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=6,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(n_labels + 1), [*KEGG_LABELS, NO_ANSWER], rotation=90, fontsize=7)
    ax.set_yticks(range(n_labels), KEGG_LABELS, fontsize=7)
    ax.set(xlabel="predicted", ylabel="gold", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return Path(path)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _row(system: str, mode: str, m: dict) -> str:
    ci = f"[{_pct(m['accuracy_ci_low'])}, {_pct(m['accuracy_ci_high'])}]"
    return (f"| {system} | {mode} | {_pct(m['accuracy'])} | {ci} | {m['macro_f1']:.3f} | "
            f"{_pct(m.get('top3_accuracy'))} | {m['invalid_answers']} | {m['n']} |")


def system_rows(metrics: dict):
    """(system, mode, its metrics) for the model's answer modes, each control and each baseline, in report
    order; a control skipped because its inputs equal the main run's comes once, with mode "–"."""
    for mode in ("generate", "score"):
        if mode in metrics["modes"]:
            yield "model", mode, metrics["modes"][mode]
    for control, result in metrics.get("controls", {}).items():
        if "skipped" in result:
            yield f"control: {control}", "–", result
        for mode in ("generate", "score"):
            if mode in result:
                yield f"control: {control}", mode, result[mode]
    for name, result in metrics.get("baselines", {}).items():
        yield f"baseline: {name}", result.get("kind", ""), result


def comparison_table(metrics: dict) -> list[str]:
    lines = ["| system | mode | accuracy | 95 % CI | macro-F1 | top-3 | invalid | n |",
             "|---|---|---|---|---|---|---|---|"]
    for system, mode, result in system_rows(metrics):
        if "skipped" in result:
            lines.append(f"| {system} | – | skipped: {result['skipped']} | | | | | |")
        else:
            lines.append(_row("**model**" if system == "model" else system, mode, result))
    return lines


def write_report(metrics: dict, out_dir: str | Path, gold: list[str], predicted: list[str | None]) -> Path:
    """Write report.md, confusion_matrix.png and (with label probabilities) reliability.png into out_dir."""
    out_dir = Path(out_dir)
    mode = metrics["mode"]
    confusion_matrix_png(gold, predicted, out_dir / CONFUSION_PNG, f"{metrics['split']} ({mode} mode)")
    lines = [f"# Evaluation on `{metrics['split']}`", "",
             f"n = {metrics['n']}; headline mode: **{mode}** (decoding: {metrics['decoding']}; only the final "
             f"`Answer:` line counts); baselines trained on "
             f"{metrics['baselines_trained_on']}; {metrics['seconds']} s.", "",
             f"**Accuracy {_pct(metrics['accuracy'])}** (95 % Wilson interval [{_pct(metrics['accuracy_ci_low'])}, "
             f"{_pct(metrics['accuracy_ci_high'])}]), macro-F1 {metrics['macro_f1']:.3f} over the labels present in gold or "
             f"predictions ({metrics['macro_f1_37']:.3f} over all 37).", ""]
    if metrics.get("score_form_trained") is False:
        lines += ["**Warning**: this checkpoint was trained without direct answers; label scoring (score mode, the "
                  "probabilities) reads the direct-answer form it never learnt.", ""]
    lines += [f"Leakage check: {metrics['rows_with_variant_in_train']} of {metrics['n']} rows have a variant sequence "
              f"that also occurs in {metrics['baselines_trained_on']}"
              + (" (the grouped split is leak-free only for a model trained on `grouped-train`)."
                 if "grouped-" in metrics["split"] else ".")
              + ("" if metrics["split"].startswith("hard-") else " The question text carries the pathway context: "
                 "compare the model with the TF-IDF text baseline."), ""]
    lines += ["## Model, controls and baselines", "", *comparison_table(metrics), ""]
    if metrics.get("probe_left_out"):
        lines += [f"No encoder-alone row: {metrics['probe_left_out']}.", ""]
    if "mode_agreement" in metrics["modes"]:
        lines += [f"Generation and scoring agree on {_pct(metrics['modes']['mode_agreement'])} of the rows.", ""]
    if metrics.get("controls"):
        lines += ["Controls: *text-only* = prompt without the sequence lines, no DNA; *dna-only* = question replaced "
                  "by “What disease does this contribute to?”; *shuffled-dna* = another record's windows (fixed "
                  "permutation; no row keeps its own); *ref-as-variant* = the reference window as both sequences.", ""]
        unchanged = {c: r["inputs_unchanged"] for c, r in metrics["controls"].items() if r.get("inputs_unchanged")}
        if unchanged:
            lines += [f"Rows whose control input equals the main input (e.g. a donor with identical windows): "
                      f"{unchanged}.", ""]
    if "abstain" in metrics:
        a = metrics["abstain"]
        lines += [f"## Abstention (scoring mode, threshold {a['threshold']})", "",
                  f"Answered {a['answered']} of {a['n']} (coverage {_pct(a['coverage'])}); accuracy on answered "
                  + (f"{_pct(a['accuracy_on_answered'])} [{_pct(a['accuracy_on_answered_ci_low'])}, "
                     f"{_pct(a['accuracy_on_answered_ci_high'])}]." if a["answered"] else "–."), "",
                  "| threshold | coverage | accuracy on answered |", "|---|---|---|",
                  *[f"| {c['threshold']} | {_pct(c['coverage'])} | {_pct(c['accuracy_on_answered'])} |"
                    for c in metrics["abstain_curve"]], ""]
    if "calibration" in metrics:
        from dnallm.calibration import reliability_diagram

        c = metrics["calibration"]
        reliability_diagram(c["bins"], out_dir / RELIABILITY_PNG, f"{metrics['split']}: ECE {c['ece']:.3f}")
        baseline_ece = ", ".join(f"{k} {v['ece']:.3f}" for k, v in metrics.get("baselines", {}).items())
        lines += ["## Calibration (scoring mode)", "",
                  f"ECE ({c['n_bins']} equal-width bins) {c['ece']:.3f}; mean top probability "
                  f"{c['mean_confidence']:.3f} vs accuracy {_pct(metrics['modes']['score']['accuracy'])}. "
                  f"Baselines: {baseline_ece}.", "", f"![reliability diagram]({RELIABILITY_PNG})", ""]
    lines += [f"## Per label ({mode} mode)", "", "| label | support | predicted | precision | recall | F1 |",
              "|---|---|---|---|---|---|",
              *[f"| {r['label']} | {r['support']} | {r['predicted']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                f"{r['f1']:.3f} |" for r in metrics["per_label"]], "",
              f"## Confusion matrix ({mode} mode)", "", f"![confusion matrix]({CONFUSION_PNG})", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
