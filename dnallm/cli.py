"""The `dnallm` command: quickstart, eval, explain, app, mcp. Each command calls the library functions the API uses."""

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


DTYPE_OPTION = typer.Option("auto", help="Inference dtype: auto (bfloat16 on CUDA, float32 on CPU) | bfloat16 | "
                                             "float16 | float32")


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as `error: ...` (exit 2), not as a traceback; imported only when one is raised."""
    from dnallm.encoders.base import LoadingError
    from dnallm.variants.batch import OutputInUse

    return ValueError, OSError, ImportError, LoadingError, OutputInUse


def _dtype(name: str) -> str:
    from dnallm.inference import DTYPES

    if name not in DTYPES:
        raise typer.BadParameter(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}", param_hint="--dtype")
    return name


def _split(split: str) -> tuple[str, str]:
    from dnallm.evaluation import split_spec

    try:
        return split_spec(split)
    except ValueError as e:
        raise typer.BadParameter(str(e))


def fail(message: str, out: Console = console, soft_wrap: bool | None = None):
    out.print(f"[red]error:[/red] {message}", soft_wrap=soft_wrap)
    raise typer.Exit(2)


@app.command()
def quickstart(out: Path = typer.Option(Path("runs/quickstart"), help="Output folder"),
               pretrain: bool = typer.Option(False, help="Pretrain the two tiny stand-ins anew (~40 min on 2 cores) "
                                                         "instead of using the shipped ones"),
               reuse: bool = typer.Option(False, help="Reuse DIR/encoder and DIR/text-model from an earlier run"),
               splits: str = typer.Option("official", help="official | grouped (leak-free: no shared variant; "
                                                           "pretrains the stand-ins on grouped-train)"),
               device: str = typer.Option("cpu", help="cpu | cuda (same recipe; a GPU makes --pretrain fast)")):
    """Train the tiny embedded default on CPU, evaluate it on test and hard-test, explain one variant."""
    from dnallm.quickstart import run_quickstart

    result = run_quickstart(out, pretrain=pretrain, reuse=reuse, splits=splits, device=device)
    rows = result["summary"]
    splits_shown = [k for k in rows[0] if k not in ("system", "mode")]
    table = Table(title=f"tiny default: accuracy (n = {result['metrics']['n']} per split; hard-* = no pathway context "
                        "in the question)")
    for col in ("system", "mode", *splits_shown):
        table.add_column(col)
    for row in rows:
        table.add_row(row["system"], row["mode"],
                      *("–" if row[s] is None else f"{100 * row[s]:.1f} %" for s in splits_shown))
    console.print(table)
    console.print(f"timings (s): {result['timings']}")
    ex = result["example"]
    console.print(f"explain_variant on test row {ex['row']}: predicted {ex['label']!r}, gold {ex['gold']!r}")
    console.print(f"checkpoint: {out / 'model'}; reports: {out / 'eval'}/*/report.md")


@app.command("pretrain-stand-ins")
def pretrain_stand_ins(out: Path = typer.Option(..., help="Folder for encoder/, text-model/ and pretrain_log.json"),
                       device: str = typer.Option("cpu", help="cpu | cuda (the shipped ones were built on a GPU)"),
                       keep_encoder: bool = typer.Option(False, help="Take the shipped DNA stand-in (and its logged "
                                                         "losses) and pretrain the text stand-in alone")):
    """Pretrain the tiny preset's two stand-ins on the official train split (what dnallm/assets/tiny ships)."""
    from dnallm.data import load_kegg
    from dnallm.quickstart import SHIPPED_STAND_INS, build_tiny_models, load_preset

    log = build_tiny_models(out, load_kegg("train"), load_preset("tiny"), device=device,
                            encoder_from=SHIPPED_STAND_INS if keep_encoder else None)
    console.print(f"DNA loss {log['dna_losses'][0]:.3f} -> {log['dna_losses'][-1]:.3f}, text loss "
                  f"{log['text_losses'][0]:.3f} -> {log['text_losses'][-1]:.3f}; wrote {out}")


@app.command("eval")
def evaluate(model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
             split: str = typer.Option("test", help="test | grouped-test, each also as hard-* (the probe is selected on "
                                                    "val / grouped-val)"),
             out: Optional[Path] = typer.Option(None, help="Output folder (default: MODEL/eval/SPLIT)"),
             batch_size: int = 16, max_new_tokens: int = 1024,
             score_batch_size: int = typer.Option(16, help="Questions per label-scoring batch (all 37 labels in one packed pass each)"),
             generate: bool = typer.Option(True, help="Greedy reasoning + final Answer: line (headline mode)"),
             constrained: bool = typer.Option(True, help="Answer line constrained to the 37 labels (--no-constrained: "
                                                         "free decoding, strict parse; invalid answers count as wrong)"),
             probe: bool = typer.Option(True, help="Add the encoder-alone row (frozen encoder -> logistic regression)"),
             score: bool = typer.Option(True, help="Label probabilities: scoring mode, top-3, calibration, abstain"),
             controls: bool = typer.Option(False, help="Also run the controls (text-only, dna-only, shuffled-dna, "
                                                       "ref-as-variant): each costs as much as the main run"),
             threshold: float = typer.Option(0.5, help="Abstain when the top label probability is below this"),
             limit: Optional[int] = typer.Option(None, help="Evaluate only the first N rows (smoke runs)"),
             dtype: str = DTYPE_OPTION,
             liger: bool = typer.Option(False, help="liger-kernel's RMSNorm/SwiGLU/RoPE kernels in the LM (CUDA, "
                                                     "the `liger` extra; faster label scoring)")):
    """Evaluate a checkpoint; writes metrics.json, predictions.jsonl, report.md and PNGs (baselines included)."""
    from tqdm import tqdm

    from dnallm.data import load_kegg
    from dnallm.evaluation import CONTROLS, evaluate_split
    from dnallm.inference import load_model

    name, view = _split(split)
    if not (generate or score):
        raise typer.BadParameter("--no-generate and --no-score leave nothing to evaluate")
    try:
        checkpoint = load_model(str(model.resolve()), dtype=_dtype(dtype), liger=liger)
    except _user_errors() as e:
        fail(f"cannot load {model}: {e}")
    records = load_kegg(name, view=view, window=checkpoint.config.dna_config.window_size)
    if limit:
        records = records.select(range(min(limit, len(records))))
    out = out or model.resolve() / "eval" / split  # per checkpoint: sibling checkpoints under runs/ never share one
    bars: dict = {}

    def progress(stage: str, done: int) -> None:
        if stage not in bars:
            bars[stage] = tqdm(total=len(records), desc=f"{split} {stage}", unit="variant")
        bars[stage].update(done - bars[stage].n)
        if done >= len(records):
            bars[stage].close()

    metrics = evaluate_split(checkpoint, records, split, out, batch_size=batch_size,
                             max_new_tokens=max_new_tokens, generate=generate, score=score,
                             controls=CONTROLS if controls else (), threshold=threshold,
                             score_batch_size=score_batch_size, constrained=constrained, probe=probe,
                             progress=progress)
    console.print(_metrics_table(metrics, f"{model} ({metrics['mode']} mode)"))
    for name, result in metrics["baselines"].items():
        console.print(f"baseline {name}: accuracy {result['accuracy']:.4f}, macro-F1 {result['macro_f1']:.4f}")
    console.print(f"wrote {out / 'metrics.json'}, {out / 'predictions.jsonl'} and {out / 'report.md'}")


@app.command()
def probe(encoder: Optional[str] = typer.Option(None, help="Encoder hub id or local path (e.g. ZhejiangLab/Genos-1.2B)"),
          encoder_type: str = typer.Option("genos", help="genos | nt | hyenadna | evo2 | hf"),
          layer: Optional[int] = typer.Option(None, help="Hidden layer to pool (default: the encoder's default)"),
          model: Optional[Path] = typer.Option(None, help="Or: a dnallm checkpoint, whose encoder (and layer) is probed"),
          split: str = typer.Option("test", help="test | grouped-test, each also as hard-* (the probe is selected on "
                                                    "val / grouped-val)"),
          out: Optional[Path] = typer.Option(None, help="Write the result (with every candidate's val accuracy) as JSON"),
          cache_dir: Optional[Path] = typer.Option(None, help="Keep pooled encoder states here (reused next time)"),
          batch_size: int = typer.Option(16, help="Windows per encoder batch"),
          device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when available)")):
    """Encoder alone: frozen encoder -> mean-pooled states -> logistic regression (train, selected on val)."""
    import torch

    from dnallm.data import load_kegg
    from dnallm.encoders import build_encoder
    from dnallm.evaluation import probe_metrics, selection_split, training_split

    if (encoder is None) == (model is None):
        raise typer.BadParameter("give --encoder (with --encoder-type, --layer) or --model, not both")
    name, view = _split(split)
    if name == selection_split(split):
        raise typer.BadParameter(f"the probe is selected on {name}, so its score there is not held out; "
                                 "give a test split")
    if model is not None:
        from dnallm.configuration import DNALLMConfig
        from dnallm.modeling import _resolve

        config = DNALLMConfig.from_pretrained(model)
        encoder_type, layer = config.dna_config.encoder_type, config.dna_config.layer
        encoder = _resolve(config.dna_config.encoder_name_or_path, model.resolve())
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dna_encoder = build_encoder(encoder_type, encoder, layer=layer).to(device)
    metrics = {"split": split, "encoder": encoder, "encoder_type": encoder_type,
               **probe_metrics(dna_encoder, load_kegg(*_split(training_split(split))), load_kegg(name, view=view),
                               split, cache_dir=cache_dir, batch_size=batch_size, progress=True)}
    p = metrics["probe"]
    console.print(_metrics_table(metrics, f"encoder alone: {encoder} (layer {p['layer']}, {p['feature_set']}, "
                                          f"C={p['C']}, val {p['val_accuracy']:.3f})"))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2))
        console.print(f"wrote {out}")


# One variant's inputs, shared by explain and attribute (the same options, the same help).
_QUESTION = typer.Option(None, help="Question about the variant (default: built from --gene/--chrom, else the "
                                    "kegg_hard question)")
_REFERENCE = typer.Option(None, help="Reference sequence (1024 bp window or KEGG layout)")
_VARIANT = typer.Option(None, help="Variant sequence (1024 bp window or KEGG layout)")
_CHROM = typer.Option(None, help="One variant by coordinates: chromosome (chr1 or 1)")
_POS = typer.Option(None, help="1-based position of REF (VCF POS)")
_REF = typer.Option(None, help="REF allele (checked against --fasta)")
_ALT = typer.Option(None, help="ALT allele")
_GENE = typer.Option(None, help="Gene symbol for the built question")
_FASTA = typer.Option(None, help="Genome FASTA (plain or bgzip) for coordinates")


@app.command()
def explain(question: Optional[str] = _QUESTION,
            reference: Optional[str] = _REFERENCE,
            variant: Optional[str] = _VARIANT,
            chrom: Optional[str] = _CHROM,
            pos: Optional[int] = _POS,
            ref: Optional[str] = _REF,
            alt: Optional[str] = _ALT,
            gene: Optional[str] = _GENE,
            vcf: Optional[Path] = typer.Option(None, help="Explain every variant of a VCF (.vcf or .vcf.gz)"),
            tsv: Optional[Path] = typer.Option(None, help="Explain every variant of a TSV (chrom pos ref alt "
                                                          "[id gene question network genes_in_pathway])"),
            fasta: Optional[Path] = _FASTA,
            out: Optional[Path] = typer.Option(None, help="Results TSV for --vcf/--tsv (one line per record)"),
            vcf_out: Optional[Path] = typer.Option(None, help="Also write the input VCF with DNALLM_* INFO fields"),
            resume: bool = typer.Option(False, help="Continue OUT: skip the records already in it"),
            batch_size: int = typer.Option(8, help="Variants per model batch (--vcf/--tsv)"),
            devices: int = typer.Option(1, help="--vcf/--tsv: worker processes, one per GPU (or N CPU workers "
                                        "without CUDA); the output equals a 1-device run's"),
            max_new_tokens: int = typer.Option(1024, help="Reasoning budget in generate mode"),
            model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
            mode: Optional[str] = typer.Option(None, help="generate (reasoning + answer) | score (label "
                                                          "probabilities only); default: generate for one "
                                                          "variant, score for --vcf/--tsv"),
            progress: bool = typer.Option(True, help="Progress bar (--vcf/--tsv)"),
            contrast: bool = typer.Option(False, help="Also score with the reference in the variant's place: "
                                          "delta_p of the answer's label (evidence that the variant moved it)"),
            encoder_dll: bool = typer.Option(False, help="Also the frozen encoder's zero-shot score: log-likelihood "
                                             "of the variant window minus the reference window under its own LM "
                                             "head (--vcf/--tsv: encoder_dll column, DNALLM_DLL)"),
            dtype: str = DTYPE_OPTION):
    """Explain one variant (sequences or coordinates; prints JSON) or every variant of a VCF/TSV (writes TSV)."""
    if vcf is not None or tsv is not None:
        from dnallm.variants import explain_file

        if vcf is not None and tsv is not None:
            fail("give --vcf or --tsv, not both")
        unused = [name for name, v in (("--question", question), ("--reference", reference), ("--variant", variant),
                                       ("--chrom", chrom), ("--pos", pos), ("--ref", ref), ("--alt", alt),
                                       ("--gene", gene)) if v is not None]
        if unused:
            fail(f"{', '.join(unused)} cannot be combined with --vcf/--tsv (the file gives the variants)")
        if fasta is None or out is None:
            fail("--vcf/--tsv need --fasta (the genome) and --out (the results TSV)")
        if devices < 1:
            fail(f"--devices must be >= 1, got {devices}")
        settings = dict(fmt="vcf" if vcf is not None else "tsv", vcf_out=vcf_out, resume=resume,
                        batch_size=batch_size, mode=mode or "score", max_new_tokens=max_new_tokens, progress=progress,
                        dtype=_dtype(dtype), contrast=contrast, encoder_dll=encoder_dll)
        try:
            if devices == 1:
                summary = explain_file(vcf or tsv, fasta, model, out, **settings)
            else:  # chunk k of batch_size records to worker k % N, merged in record order (dnallm.variants.sharded)
                from dnallm.variants.sharded import explain_file_sharded

                summary = explain_file_sharded(vcf or tsv, fasta, model, out, devices, **settings)
        except _user_errors() as e:
            fail(str(e))
        console.print(f"{summary['written']} records written to {out} ({summary['skipped']} already there, "
                      f"{summary['errors']} with an error, {summary['padded']} padded) in {summary['seconds']} s: "
                      f"{summary['variants_per_second']} variants/s")
        if vcf_out is not None:
            console.print(f"wrote {vcf_out} ({summary['vcf_lines_dropped']} malformed input lines left out)")
        return
    batch_only = [name for name, v in (("--out", out), ("--vcf-out", vcf_out)) if v is not None] + \
        (["--resume"] if resume else []) + (["--devices"] if devices != 1 else [])
    if batch_only:
        fail(f"{', '.join(batch_only)} need --vcf or --tsv")
    try:
        result = _explain_one(question, reference, variant, chrom, pos, ref, alt, fasta, gene, model,
                              mode or "generate", max_new_tokens, dtype, contrast=contrast, encoder_dll=encoder_dll)
    except _user_errors() as e:
        fail(str(e))
    print(json.dumps(result.to_dict(), indent=2))


def _explain_one(question, reference, variant, chrom, pos, ref, alt, fasta, gene, model, mode, max_new_tokens,
                 dtype, **evidence):
    """explain_variant for one variant given as sequences or coordinates (`explain`, `attribute`)."""
    from dnallm.inference import explain_variant

    if all(v is None for v in (reference, variant, chrom, pos, ref, alt)):
        raise ValueError("give --reference and --variant, or --chrom --pos --ref --alt --fasta, or --vcf/--tsv with "
                         "--fasta and --out")
    return explain_variant(question, reference, variant, model=model, mode=mode, max_new_tokens=max_new_tokens,
                           chrom=chrom, pos=pos, ref=ref, alt=alt, fasta=fasta, gene=gene, dtype=_dtype(dtype),
                           **evidence)


@app.command()
def attribute(question: Optional[str] = _QUESTION,
              reference: Optional[str] = _REFERENCE,
              variant: Optional[str] = _VARIANT,
              chrom: Optional[str] = _CHROM,
              pos: Optional[int] = _POS,
              ref: Optional[str] = _REF,
              alt: Optional[str] = _ALT,
              gene: Optional[str] = _GENE,
              fasta: Optional[Path] = _FASTA,
              out: Path = typer.Option(..., help="Output folder: ism.tsv, ism.png, explanation.json"),
              flank: int = typer.Option(32, help="Mutate every position within ±FLANK bp of the variant (at most "
                                                 "511 for 1024 bp windows)"),
              batch_size: int = typer.Option(16, help="Mutated windows per scoring batch"),
              model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
              mode: str = typer.Option("score", help="score (the map of the top scored label) | generate (of the "
                                                     "label the model writes after its reasoning)"),
              max_new_tokens: int = typer.Option(1024, help="Reasoning budget in generate mode"),
              encoder_dll: bool = typer.Option(False, help="Also the encoder's zero-shot score"),
              dtype: str = DTYPE_OPTION):
    """In-silico mutagenesis map of one variant: each base within ±FLANK bp mutated, the change of log p(label)."""
    from dnallm.ism import ism_png, ism_tsv

    if batch_size < 1:
        fail(f"--batch-size must be >= 1, got {batch_size}")
    try:
        result = _explain_one(question, reference, variant, chrom, pos, ref, alt, fasta, gene, model, mode,
                              max_new_tokens, dtype, attribution=True, attribution_flank=flank,
                              attribution_batch_size=batch_size, encoder_dll=encoder_dll)
    except _user_errors() as e:
        fail(str(e))
    out.mkdir(parents=True, exist_ok=True)
    m = result.attribution
    (out / "ism.tsv").write_text(ism_tsv(m))
    (out / "ism.png").write_bytes(ism_png(m))
    (out / "explanation.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    strongest = min(((d, o, b) for o, row in zip(m["offsets"], m["delta"]) for d, b in zip(row, m["bases"])
                     if d is not None), default=None)
    console.print(f"label {m['label']!r} (log p {m['log_p']:.4f}, {m['variant_kind']}): {m['n_windows']} mutated "
                  f"windows over ±{m['flank']} bp" + (f"; strongest drop {strongest[0]:+.4g} at offset "
                                                     f"{strongest[1]:+d} -> {strongest[2]}" if strongest else ""))
    console.print(f"wrote {out / 'ism.tsv'}, {out / 'ism.png'} and {out / 'explanation.json'}")


def _load_app_module():
    """Load the Gradio UI from app/app.py in the source checkout: app/ is not part of the installed package, so it
    is loaded by path, under a private module name, and only when `dnallm app` runs."""
    import importlib.util
    import sys

    if "dnallm_app" in sys.modules:
        return sys.modules["dnallm_app"]
    path = Path(__file__).resolve().parents[1] / "app" / "app.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the app ships with the source checkout; install with "
                                f"`pip install -e \".[app]\"` from a clone")
    spec = importlib.util.spec_from_file_location("dnallm_app", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dnallm_app"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["dnallm_app"]
        raise
    return module


@app.command("app")
def serve_app(model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
              host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback unless --allow-remote)"),
              port: int = typer.Option(7860, help="Port"),
              max_new_tokens: int = typer.Option(1024, help="Default thinking budget (adjustable in the UI)"),
              concurrency_limit: int = typer.Option(1, help="Requests the model serves at once (Gradio queue)"),
              fasta: Optional[list[Path]] = typer.Option(None, help="A genome FASTA coordinate input may read "
                                                                    "(repeatable; offered by file name)"),
              genome_dir: Optional[Path] = typer.Option(None, help="A folder whose FASTA files (.fa/.fasta/.fna"
                                                                   "[.gz]) coordinate input may read"),
              allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a --host other than loopback"),
              dtype: str = DTYPE_OPTION):
    """Start the Gradio chat UI (app/app.py) for one checkpoint; the same settings as `python app/app.py`."""
    try:
        ui = _load_app_module()
    except ModuleNotFoundError as e:
        fail(f"{e}; install the app extra: pip install -e \".[app]\"")
    except FileNotFoundError as e:
        fail(str(e))
    try:
        ui.serve(str(model), host=host, port=port, max_new_tokens=max_new_tokens, concurrency_limit=concurrency_limit,
                 fasta=fasta or [], genome_dir=genome_dir, allow_remote=allow_remote, dtype=_dtype(dtype))
    except ui.StartError as e:  # a refused host or a bad genome file
        fail(str(e), soft_wrap=True)
    except FileNotFoundError as e:
        fail(f"{e} (train one with `dnallm quickstart` or pass --model)")
    except _user_errors() as e:  # a checkpoint that does not load: another encoder, missing weights, ...
        fail(f"cannot load {model}: {e}", soft_wrap=True)


@app.command("mcp")
def serve_mcp(model: Path = typer.Option(Path("runs/quickstart/model"), help="Checkpoint folder"),
              fasta: Optional[list[Path]] = typer.Option(None, help="A genome FASTA that chrom/pos/ref/alt input may "
                                                                    "read (repeatable; callers pick it by file name)"),
              genome_dir: Optional[Path] = typer.Option(None, help="A folder whose FASTA files (.fa/.fasta/.fna"
                                                                   "[.gz]) chrom/pos/ref/alt input may read"),
              vcf_dir: Optional[Path] = typer.Option(None, help="A folder whose .vcf/.vcf.gz files explain_vcf may "
                                                                "run as jobs (by file name); needs --jobs-dir"),
              jobs_dir: Optional[Path] = typer.Option(None, help="Where explain_vcf jobs write their results "
                                                                 "(created if missing)"),
              http: bool = typer.Option(False, "--http", help="Serve streamable HTTP at http://HOST:PORT/mcp "
                                                              "instead of stdio"),
              host: str = typer.Option("127.0.0.1", help="--http: interface to bind (loopback unless "
                                                         "--allow-remote)"),
              port: int = typer.Option(8000, help="--http: port"),
              allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a --host other than loopback"),
              max_inline: int = typer.Option(20, help="The most VCF records explain_vcf answers inline (vcf_text)"),
              concurrency: int = typer.Option(1, help="Model calls served at once; the rest wait in arrival order"),
              max_new_tokens: int = typer.Option(1024, help="Thinking budget: the default and the most a call may "
                                                            "ask for"),
              batch_size: int = typer.Option(8, help="Variants per model batch in explain_vcf"),
              dtype: str = DTYPE_OPTION):
    """Serve the model to LLM agents over the Model Context Protocol (stdio, or --http); see README "MCP server"."""
    err = Console(stderr=True)  # stdout is the protocol's channel in stdio mode
    try:
        from dnallm.mcp_server import build_server, make_settings, serve
        from dnallm.serving import StartError, check_host
    except ModuleNotFoundError as e:
        fail(f"{e}; install the mcp extra: pip install -e \".[mcp]\"", err)
    try:
        if http:
            check_host(host, allow_remote)
        settings = make_settings(model, fasta or [], genome_dir, vcf_dir, jobs_dir, max_inline=max_inline,
                                 concurrency=concurrency, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 dtype=_dtype(dtype))
    except StartError as e:
        fail(str(e), err, soft_wrap=True)
    try:
        server = build_server(settings)  # the model loads now, before any client connects
    except _user_errors() as e:  # not a checkpoint, missing weights, another encoder, ...
        fail(f"cannot load {model}: {e}", err, soft_wrap=True)
    serve(server, http=http, host=host, port=port)


if __name__ == "__main__":
    app()
