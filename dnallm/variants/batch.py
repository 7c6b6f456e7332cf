"""The resumable batch runner: `explain_file` explains every variant of a VCF/TSV file into an output TSV.

One line per record, appended and fsynced as it is done; `resume` continues a killed run and gives byte-identical
output. `Genome.windows` cuts the windows, `questions.build_question` writes the question when none is given,
`inference.explain_many` asks the model in batches. A VCF header whose `##contig` lengths or `##reference`
contradict the FASTA (another genome build) stops the run before any work (`Genome.check_build`); a bad record
only gets its error.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, ContextManager

from dnallm.genome import VariantError, open_genome
from dnallm.questions import build_question
from dnallm.variants.reading import OUT_COLUMNS, VariantRecord, read_variants, read_vcf_header
from dnallm.variants.vcf_out import write_vcf_out


class OutputInUse(RuntimeError):
    """The output is being written by another run (it holds OUT.lock)."""


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _result_row(rec: VariantRecord, question=None, windows=None, explanation=None, error=None) -> dict:
    row = {"record": rec.key, "line": rec.line, "id": rec.id, "chrom": rec.chrom, "pos": rec.pos, "ref": rec.ref,
           "alt": rec.alt, "gene": rec.gene, "error": error or rec.error, "question": question}
    if windows is not None:
        row.update(padded=windows.padded, warnings=" | ".join(windows.warnings))
    if explanation is not None:
        ex = explanation
        row.update(label=ex.label, probability=f"{ex.label_probabilities[ex.label]:.6f}" if ex.label else None,
                   top3="|".join(f"{label}:{p:.6f}" for label, p in ex.top_k), reasoning=ex.reasoning)
        if ex.contrast is not None:  # --contrast: the label's probability with the variant minus with the reference
            row.update(delta_p=f"{ex.contrast['delta_p']:.6f}", reference_label=ex.contrast["reference_label"])
        if ex.encoder_dll is not None:  # --encoder-dll: the encoder's zero-shot score, variant minus reference
            row.update(encoder_dll=f"{ex.encoder_dll:.6f}")
    return row


def _has_records(out: Path) -> bool:
    """Whether anything follows the header line (read to the second line only: an output can be large)."""
    with open(out, "rb") as f:
        f.readline()
        return bool(f.read(1))


def _resume_keys(out: Path) -> list[str]:
    """Keys already in `out`, after cutting a partly written last line (a run killed mid-write)."""
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(out, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
        data = data[: data.rfind(b"\n") + 1]
    lines = data.decode().split("\n")[:-1]
    if not lines:
        return []
    if lines[0] != "\t".join(OUT_COLUMNS):
        raise ValueError(f"{out} does not start with the explain output header; cannot resume it")
    return [line.split("\t", 1)[0] for line in lines[1:]]


def _append(f, text: str) -> None:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def check_settings(variants: Path, fmt: str | None, mode: str, batch_size: int, vcf_out,
                   max_new_tokens: int = 1024) -> str:
    """The input format (from the name unless given), after refusing bad settings before any work (and before the
    output exists, which a later run would then have to resume with the same settings)."""
    fmt = fmt or ("tsv" if re.search(r"\.(tsv|txt)(\.gz)?$", variants.name, re.I) else "vcf")
    if mode not in ("generate", "score"):
        raise ValueError(f"unknown mode {mode!r}; expected 'generate' or 'score'")
    if mode == "generate" and max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1 in generate mode, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if vcf_out is not None and fmt != "vcf":
        raise ValueError("--vcf-out needs VCF input (--vcf)")
    return fmt


def open_input(variants: Path, fmt: str, fasta):
    """(genome, number of records): file-level errors and a VCF from another build stop the run before any work."""
    genome = open_genome(fasta)
    total = sum(1 for _ in read_variants(variants, fmt))  # also surfaces file-level errors before any work
    if fmt == "vcf":  # a header from another build than the FASTA stops the run before any work
        genome.check_build(*read_vcf_header(variants), source=variants.name)
    return genome, total


def meta_file(out: Path) -> Path:
    """OUT.meta.json: the settings OUT was written with (a resume must match them)."""
    return out.with_name(out.name + ".meta.json")


def write_meta(out: Path, meta: dict) -> None:
    path = meta_file(out)
    tmp = path.with_name(path.name + ".tmp")  # atomic: a crash leaves the old file or the new
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


@contextmanager
def output_lock(out: Path):
    """Exclusive use of OUT while a run writes it: a second run on the same output (or a --resume while a killed
    run's workers still write) is refused instead of appending the same records twice. An flock on OUT.lock,
    released (and the file removed) on exit, and by the kernel if the process dies."""
    import fcntl

    lock_path = out.with_name(out.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputInUse(f"{out} is being written by another process (it holds {lock_path.name}); wait for "
                               "it to finish, or stop it, then rerun with --resume") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def explain_file(variants: str | Path, fasta: str | Path, model, out: str | Path, fmt: str | None = None,
                 vcf_out: str | Path | None = None, resume: bool = False, batch_size: int = 8, mode: str = "score",
                 max_new_tokens: int = 1024, progress: bool = True, dtype: str = "auto", contrast: bool = False,
                 encoder_dll: bool = False, on_progress: Callable[[int, int], None] | None = None,
                 batch_lock: Callable[[], ContextManager] | None = None, shard: tuple[int, int] | None = None,
                 device: str | None = None) -> dict:
    """Explain every variant of a VCF/TSV file into a TSV (one line per record, appended and fsynced).

    `dtype` (auto | bfloat16 | float16 | float32) applies when `model` is a path (auto: bf16 on CUDA, else fp32).

    Records are taken in fixed chunks of `batch_size` (by record order), so a resumed run batches exactly as an
    uninterrupted one and writes the same output. `resume` skips the records already in `out` (settings must
    match, see OUT.meta.json); a bad record gets its message in the `error` column and the run goes on.
    `vcf_out` (VCF input only) is written at the end from `out`: the input VCF with DNALLM_* INFO fields.
    `contrast`: fill the `delta_p` / `reference_label` columns (dnallm.evidence; one more scoring pass).
    `encoder_dll`: fill the `encoder_dll` column (the encoder's zero-shot score; needs its LM head, checked before
    any record is read).
    `on_progress(done, total)` is called after each written record (counting those a resume skipped), for callers
    that report progress other than by the tqdm bar (the MCP server). `batch_lock()`, when given, is entered around
    each model batch only: a server sharing the model between requests lets others in between batches.
    `shard=(rank, n)` (`--devices N`, dnallm.variants.sharded): only the chunks k with k % n == rank, into the part
    file `out`, so every batch holds the records it holds in a 1-device run; `on_progress` then counts this shard's
    records (called once at the start too). `device`: where a model given as a path is loaded (default: cuda if
    available, else cpu).
    Returns a summary with counts and timings.
    """
    from tqdm import tqdm

    from dnallm.inference import check_prompt, explain_many, load_model
    from dnallm.modeling import DNALLMForConditionalGeneration

    variants, out = Path(variants), Path(out)
    fmt = check_settings(variants, fmt, mode, batch_size, vcf_out, max_new_tokens)
    if shard is not None and (vcf_out is not None or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"shard {shard!r}: expected (rank, n) with 0 <= rank < n, and no vcf_out (the merger "
                         "writes it)")
    model_name = "<model object>" if isinstance(model, DNALLMForConditionalGeneration) else str(Path(model).resolve())
    meta = {"variants": str(variants.resolve()), "format": fmt, "fasta": str(Path(fasta).resolve()),
            "model": model_name, "mode": mode, "batch_size": batch_size, "contrast": contrast,
            "encoder_dll": encoder_dll,
            "max_new_tokens": max_new_tokens if mode == "generate" else None,
            "dtype": None if isinstance(model, DNALLMForConditionalGeneration) else dtype}
    if shard is not None:  # a part file resumes only as the same shard of the same number of devices
        meta["shard"] = f"{shard[0]} of {shard[1]}"
    with output_lock(out):
        meta_path = meta_file(out)
        genome, total = open_input(variants, fmt, fasta)

        done: list[str] = []
        if out.exists() and not resume and _has_records(out):  # a header alone: start again
            raise FileExistsError(f"{out} exists: pass --resume to continue it, or remove it")
        if resume and out.exists():
            done = _resume_keys(out)
        if done:  # an output without records yet (a run stopped before its first batch) starts again, any settings
            old = json.loads(meta_path.read_text()) if meta_path.exists() else None
            if old is None:
                raise ValueError(f"cannot resume {out}: {meta_path.name} (the settings it was written with) is missing")
            diff = {key: (old.get(key), value) for key, value in meta.items() if old.get(key) != value}
            if diff:
                raise ValueError(f"cannot resume {out}: it was written with other settings "
                                 f"({'; '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in diff.items())})")
        if not done:
            write_meta(out, meta)
        t_load = time.perf_counter()
        if not isinstance(model, DNALLMForConditionalGeneration):
            model = load_model(model_name, device=device, dtype=dtype)
        load_s = time.perf_counter() - t_load
        window = model.config.dna_config.window_size
        if encoder_dll:  # an encoder without its LM head fails now, not at the first good record
            model.dna_encoder.require_lm_head()

        stats = {"records": total, "skipped": len(done), "written": 0, "errors": 0, "padded": 0}
        bar = tqdm(total=total, initial=len(done), unit="variant", desc=f"explain ({mode})", file=sys.stderr,
                   disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        records = read_variants(variants, fmt)
        if shard is not None and on_progress is not None:
            on_progress(len(done), total)
        with open(out, "a" if done else "w", encoding="utf-8") as f:
            if not done:
                _append(f, "\t".join(OUT_COLUMNS) + "\n")
            index = 0  # records of this run's chunks so far (all chunks unless sharded)
            for k, chunk in enumerate(iter(lambda: list(itertools.islice(records, batch_size)), [])):
                if shard is not None and k % shard[1] != shard[0]:
                    continue  # another device's chunk
                keys = [r.key for r in chunk]
                seen = done[index:index + len(chunk)]
                if seen != keys[:len(seen)]:
                    theirs, ours = next((a, b) for a, b in zip(seen, keys) if a != b)
                    raise ValueError(f"cannot resume {out}: it holds record {theirs} where the input has {ours} "
                                     "(was the input changed?)")
                index += len(chunk)
                if len(seen) == len(chunk):
                    continue
                rows: list[dict | None] = [None] * len(chunk)
                todo = []  # (i, question, windows): the whole chunk is asked, so batches match an uninterrupted run
                for i, rec in enumerate(chunk):
                    if rec.error:
                        rows[i] = _result_row(rec)
                        continue
                    question = rec.question or build_question(rec.gene, rec.chrom, rec.network, rec.pathway_genes)
                    try:
                        w = genome.windows(rec.chrom, rec.pos, rec.ref, rec.alt, where=rec.where, window=window)
                        check_prompt(model, question, (w.reference, w.variant),
                                     max_new_tokens if mode == "generate" else 0)
                    except VariantError as e:
                        rows[i] = _result_row(rec, question=question, error=str(e))
                        continue
                    except ValueError as e:  # the question (from the file, or built from its GENE): this record's
                        rows[i] = _result_row(rec, question=question, error=f"{rec.where}: {e}")
                        continue
                    todo.append((i, question, w))
                with batch_lock() if batch_lock is not None else nullcontext():
                    explanations = explain_many(model, [q for _, q, _ in todo],
                                                [(w.reference, w.variant) for _, _, w in todo], mode=mode,
                                                max_new_tokens=max_new_tokens, k=3, batch_size=batch_size,
                                                contrast=contrast, encoder_dll=encoder_dll)
                for (i, question, w), ex in zip(todo, explanations):
                    rows[i] = _result_row(chunk[i], question=question, windows=w, explanation=ex)
                for row in rows[len(seen):]:
                    _append(f, "\t".join(_cell(row.get(c)) for c in OUT_COLUMNS) + "\n")
                    stats["written"] += 1
                    stats["errors"] += bool(row["error"])
                    stats["padded"] += bool(row.get("padded"))
                    bar.update(1)
                    if on_progress is not None:
                        on_progress(len(done) + stats["written"], total)
        bar.close()
        if index < len(done):
            raise ValueError(f"cannot resume {out}: it holds {len(done)} records, the input only {index} "
                             "(was the input changed?)")
        seconds = time.perf_counter() - t0
        stats.update(seconds=round(seconds, 3), model_load_seconds=round(load_s, 3),
                     variants_per_second=round(stats["written"] / seconds, 3) if seconds > 0 else None)
        if vcf_out is not None:
            stats["vcf_lines_dropped"] = write_vcf_out(variants, out, vcf_out)
        return stats
