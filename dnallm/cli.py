"""The `dnallm` command: quickstart, eval, explain. Each command calls the library functions the API uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DNA-language reasoning about genetic variants.")
console = Console()


def _metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("split", "n", "accuracy", "95% CI", "macro-F1", "invalid"):
        table.add_column(col)
    table.add_row(metrics["split"], str(metrics["n"]), f"{metrics['accuracy']:.4f}",
                  f"[{metrics['accuracy_ci_low']:.3f}, {metrics['accuracy_ci_high']:.3f}]",
                  f"{metrics['macro_f1']:.4f}", str(metrics["invalid_answers"]))
    return table


@app.command()
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), help="Output folder"),
               skip_pretrain: bool = typer.Option(False, help="Reuse DIR/encoder and DIR/text-model if present")):
    """Train the tiny embedded default on CPU, evaluate it on the KEGG test split, explain one variant."""
    from dnallm.quickstart import run_quickstart

    result = run_quickstart(out, skip_pretrain=skip_pretrain)
    console.print(_metrics_table(result["metrics"], "KEGG official test (tiny default)"))
    console.print(f"timings: {result['timings']}")
    ex = result["example"]
    console.print(f"explain_variant on test row {ex['row']}: predicted {ex['label']!r}, gold {ex['gold']!r}")
    console.print(f"checkpoint: {out / 'model'}")


@app.command("eval")
def evaluate(model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
             split: str = typer.Option("test", help="test | val | grouped-test | grouped-val, each also as hard-*"),
             out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL/../eval/SPLIT)"),
             batch_size: int = 16, max_new_tokens: int = 1024,
             score_batch_size: int = typer.Option(8, help="Questions per label-scoring batch (x 37 continuations)"),
             generate: bool = typer.Option(True, help="Greedy generation + strict Answer: parse (headline mode)"),
             score: bool = typer.Option(True, help="Label probabilities: scoring mode, top-3, calibration, abstain"),
             controls: bool = typer.Option(False, help="Also run the controls (text-only, dna-only, shuffled-dna, "
                                                       "ref-as-variant): each costs as much as the main run"),
             threshold: float = typer.Option(0.5, help="Abstain when the top label probability is below this"),
             limit: Optional[int] = typer.Option(None, help="Evaluate only the first N rows (smoke runs)")):
    """Evaluate a checkpoint; writes metrics.json, predictions.jsonl, report.md and PNGs (baselines included)."""
    from tqdm import tqdm

    from dnallm.data import load_kegg
    from dnallm.evaluation import CONTROLS, evaluate_split, split_spec
    from dnallm.inference import load_model

    try:
        name, view = split_spec(split)
    except ValueError as e:
        raise typer.BadParameter(str(e))
    if not (generate or score):
        raise typer.BadParameter("--no-generate and --no-score leave nothing to evaluate")
    records = load_kegg(name, view=view)
    if limit:
        records = records.select(range(min(limit, len(records))))
    out = out or model.resolve().parent / "eval" / split
    bars: dict = {}

    def progress(stage: str, done: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=len(records), desc=f"{split} {stage}", unit="variant")
        bars[stage].update(done - bars[stage].n)
        if done >= len(records):
            bars[stage].close()

    metrics = evaluate_split(load_model(str(model.resolve())), records, split, out, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, generate=generate, score=score,
                             controls=CONTROLS if controls else (), threshold=threshold,
                             score_batch_size=score_batch_size,
                             progress=progress)
    console.print(_metrics_table(metrics, f"{model} ({metrics['mode']} mode)"))
    for name, result in metrics["baselines"].items():
        console.print(f"baseline {name}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")
    console.print(f"wrote {out / 'metrics.json'}, {out / 'predictions.jsonl'} and {out / 'report.md'}")


@app.command()
def explain(question: str = typer.Option(..., help="Question about the variant"),
            reference: str = typer.Option(..., help="Reference sequence (1024 bp window or KEGG layout)"),
            variant: str = typer.Option(..., help="Variant sequence (1024 bp window or KEGG layout)"),
            model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
            mode: str = typer.Option("generate", help="generate (reasoning + answer) | score (label probabilities only)")):
    """Explain one variant; prints JSON with label, reasoning, raw text and label probabilities."""
    from dnallm.inference import explain_variant

    try:
        result = explain_variant(question, reference, variant, model=model, mode=mode)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    print(json.dumps(result.to_dict(), indent=2))


if __name__ == "__main__":
    app()
