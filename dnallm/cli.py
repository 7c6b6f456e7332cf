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
             split: str = typer.Option("test", help="test | val | hard-test | hard-val"),
             out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL/../eval/SPLIT)"),
             batch_size: int = 16, max_new_tokens: int = 1024):
    """Greedy evaluation with the strict Answer: parse; writes metrics.json and predictions.jsonl."""
    from tqdm import tqdm

    from dnallm.data import load_kegg
    from dnallm.evaluation import evaluate_split
    from dnallm.inference import load_model

    view, name = ("kegg_hard", split.removeprefix("hard-")) if split.startswith("hard-") else ("kegg", split)
    if name not in ("test", "val"):
        raise typer.BadParameter(f"unknown split {split!r}")
    records = load_kegg(name, view=view)
    out = out or model.resolve().parent / "eval" / split
    bar = tqdm(total=len(records), desc=f"eval {split}", unit="variant")
    metrics = evaluate_split(load_model(str(model.resolve())), records, split, out, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, progress=lambda n: bar.update(n - bar.n))
    bar.close()
    console.print(_metrics_table(metrics, str(model)))
    console.print(f"wrote {out / 'metrics.json'} and {out / 'predictions.jsonl'}")


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
