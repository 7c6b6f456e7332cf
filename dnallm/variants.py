"""Variants from VCF and TSV files, questions for them, and batched explanations.

`explain_variant` (one variant) and `dnallm explain --vcf/--tsv` (a file) run the same functions:
`Genome.windows` cuts the windows, `questions.build_question` writes the question when none is given,
`inference.explain_many` asks the model in batches.

Reading (`read_variants`): a small strict reader, not pysam, so that every problem names its line number and a
bad line does not stop the file (pysam reports a non-numeric POS or a short line only as "truncated file").
Multi-allelic records give one record per ALT (key `LINE:ALT_NUMBER`). A VCF header whose `##contig` lengths
or `##reference` contradict the FASTA (another genome build) stops `explain_file` before any work
(`Genome.check_build`); a bad record only gets its error.

TSV input: a header row with columns chrom, pos, ref, alt (required; `-` or an empty cell is an empty allele)
and optionally id, gene, question, network, genes_in_pathway; one variant (or comma-separated ALTs) per row.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dnallm.genome import VariantError, describe, open_genome
from dnallm.questions import build_question

VCF_COLUMNS = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
TSV_COLUMNS = ("chrom", "pos", "ref", "alt", "id", "gene", "question", "network", "genes_in_pathway")
TSV_ALIASES = {"chr": "chrom", "chromosome": "chrom", "position": "pos", "genes": "genes_in_pathway"}
OUT_COLUMNS = ("record", "line", "id", "chrom", "pos", "ref", "alt", "gene", "label", "probability", "top3",
               "padded", "warnings", "error", "question", "reasoning")
INFO_HEADER = (
    '##INFO=<ID=DNALLM_LABEL,Number=A,Type=String,Description="dnallm predicted KEGG disease label for each ALT '
    '(spaces written as underscores)">',
    '##INFO=<ID=DNALLM_PROB,Number=A,Type=Float,Description="dnallm label-scoring probability of DNALLM_LABEL">',
    '##INFO=<ID=DNALLM_TOP3,Number=A,Type=String,Description="dnallm top-3 labels for each ALT as '
    'label:probability joined by | (spaces written as underscores)">',
)


class VariantFileError(ValueError):
    """A variant file that cannot be read at all (not a VCF, a TSV header without the needed columns)."""


@dataclass
class VariantRecord:
    """One ALT of one input line. `error` holds a problem found while reading (the line is malformed)."""

    source: str
    line: int
    alt_number: int
    chrom: str | None = None
    pos: int | None = None
    ref: str | None = None
    alt: str | None = None
    id: str | None = None
    gene: str | None = None
    question: str | None = None
    network: str | None = None
    pathway_genes: str | None = None
    n_alts: int = 1
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.line}:{self.alt_number}"

    @property
    def where(self) -> str:
        w = f"{self.source} line {self.line}" + (f" ALT {self.alt_number}" if self.n_alts > 1 else "")
        return w if self.error else f"{w} ({describe(self.chrom, self.pos, self.ref, self.alt)})"


# ---- reading --------------------------------------------------------------------------------------------------

def _open_text(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:  # gzip and bgzip
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every non-blank line of a plain or gzipped text file."""
    with _open_text(path) as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if line.strip():
                yield number, line


def parse_info(info: str) -> dict[str, str]:
    if info in ("", "."):
        return {}
    out = {}
    for item in info.split(";"):
        if item:
            k, _, v = item.partition("=")
            out[k] = v
    return out


def gene_from_info(info: dict[str, str], alt: str) -> str | None:
    """Gene symbol from INFO: GENE=, dbSNP/ClinVar GENEINFO=SYMBOL:ID|..., or SnpEff ANN (Gene_Name of this ALT)."""
    if info.get("GENE"):
        return info["GENE"].split(",")[0].split("|")[0] or None
    if info.get("GENEINFO"):
        return info["GENEINFO"].split("|")[0].split(":")[0] or None
    if info.get("ANN"):
        entries = [e.split("|") for e in info["ANN"].split(",")]
        genes = [e[3] for e in entries if len(e) > 3 and e[3] and e[0].upper() == alt.upper()]
        genes = genes or [e[3] for e in entries if len(e) > 3 and e[3]]
        return genes[0] if genes else None
    return None


def parse_vcf_line(line: str, number: int, source: str = "VCF") -> list[VariantRecord]:
    """The records (one per ALT) of one VCF data line; a malformed line gives one record with `error` set."""
    cols = line.split("\t")
    if len(cols) < 8:
        hint = " (the line looks space-separated; VCF columns are tab-separated)" if len(line.split()) >= 8 else ""
        return [VariantRecord(source, number, 1, error=f"{source} line {number}: malformed VCF line: {len(cols)} "
                              f"tab-separated column(s), a data line needs at least 8 ({' '.join(VCF_COLUMNS)})"
                              f"{hint}")]
    chrom, pos, vid, ref, alts, info = cols[0].strip(), cols[1].strip(), cols[2], cols[3], cols[4], cols[7]
    problem = None
    if not chrom:
        problem = "CHROM is empty"
    elif not re.fullmatch(r"\d+", pos) or int(pos) < 1:
        problem = f"POS {pos!r} is not a 1-based position (an integer >= 1)"
    elif not ref.strip():
        problem = "REF is empty"
    elif not alts.strip():
        problem = "ALT is empty"
    if problem:
        return [VariantRecord(source, number, 1, chrom=chrom or None,
                              error=f"{source} line {number}: malformed VCF line: {problem}")]
    info_map = parse_info(info)
    alt_list = alts.split(",")
    return [VariantRecord(source, number, i, chrom=chrom, pos=int(pos), ref=ref, alt=alt,
                          id=None if vid in (".", "") else vid, gene=gene_from_info(info_map, alt),
                          n_alts=len(alt_list))
            for i, alt in enumerate(alt_list, 1)]


_CONTIG_ID = re.compile(r"^##contig=<(?:[^>]*?,)?ID=([^,>]+)")
_CONTIG_LENGTH = re.compile(r"[<,]length=(\d+)\s*[,>]")


def read_vcf_header(path: str | Path) -> tuple[dict[str, tuple[int, int]], tuple[str, int] | None]:
    """The genome build a VCF states: its ##contig lengths (ID -> (length, line number); contigs without a
    numeric length are left out) and its ##reference (value, line number) or None. Reads the ## lines only."""
    path = Path(path)
    contigs: dict[str, tuple[int, int]] = {}
    reference = None
    for number, line in _numbered_lines(path):
        if not line.startswith("##"):
            break
        if line.startswith("##reference="):
            reference = (line.removeprefix("##reference=").strip(), number)
        name, length = _CONTIG_ID.match(line), _CONTIG_LENGTH.search(line)
        if name and length:
            contigs[name.group(1).strip()] = (int(length.group(1)), number)
    return contigs, reference


def read_vcf(path: str | Path) -> Iterator[VariantRecord]:
    """VCF (plain, gzip or bgzip) -> records; file-level problems raise VariantFileError."""
    path = Path(path)
    header = False
    for number, line in _numbered_lines(path):
        if line.startswith("##"):
            if header:
                yield VariantRecord(path.name, number, 1, error=f"{path.name} line {number}: malformed VCF: "
                                    "a ## meta line after the #CHROM header line")
            continue
        if line.startswith("#"):
            if header:
                yield VariantRecord(path.name, number, 1, error=f"{path.name} line {number}: malformed VCF: "
                                    "a second #CHROM header line")
                continue
            cols = tuple(c.strip() for c in line[1:].split("\t"))
            if cols[:8] != VCF_COLUMNS:
                raise VariantFileError(f"{path.name} line {number}: the VCF header line must be the tab-separated "
                                       f"#{' '.join(VCF_COLUMNS)}, found {line[:80]!r}")
            header = True
            continue
        if not header:
            raise VariantFileError(f"{path.name} line {number}: data before the #CHROM header line - is this a "
                                   "VCF file? (use --tsv for a table with chrom, pos, ref, alt columns)")
        yield from parse_vcf_line(line, number, path.name)
    if not header:
        raise VariantFileError(f"{path.name}: no #CHROM header line - is this a VCF file?")


def _allele(text: str | None) -> str:
    """A TSV allele: `-` or an empty cell is an empty allele."""
    text = (text or "").strip()
    return "" if text == "-" else text


def _text(cell: str | None) -> str | None:
    """A TSV text cell: `\\n`, `\\t` and `\\\\` stand for a newline, a tab and a backslash (as in the output TSV)."""
    return None if cell is None else _uncell(cell)


def read_tsv(path: str | Path) -> Iterator[VariantRecord]:
    """TSV (see module docstring) -> records; a header without chrom/pos/ref/alt raises VariantFileError."""
    path = Path(path)
    columns = None
    for number, line in _numbered_lines(path):
        if line.startswith("##"):
            continue
        cells = line.split("\t")
        if columns is None:
            names = [c.strip().lstrip("#").strip().lower() for c in cells]
            columns = [TSV_ALIASES.get(name, name) for name in names]
            missing = [c for c in TSV_COLUMNS[:4] if c not in columns]
            if missing:
                raise VariantFileError(f"{path.name} line {number}: the TSV header lacks column(s) "
                                       f"{', '.join(missing)}; it needs chrom, pos, ref, alt (tab-separated) and "
                                       f"may add {', '.join(TSV_COLUMNS[4:])}; found {cells}")
            continue
        if len(cells) != len(columns):
            yield VariantRecord(path.name, number, 1, error=f"{path.name} line {number}: malformed TSV line: "
                                f"{len(cells)} tab-separated cell(s), the header has {len(columns)}")
            continue
        row = {c: (v.strip() or None) for c, v in zip(columns, cells)}
        pos = row["pos"] or ""
        if not row["chrom"] or not re.fullmatch(r"\d+", pos) or int(pos) < 1:
            problem = "chrom is empty" if not row["chrom"] else f"pos {pos!r} is not a 1-based position"
            yield VariantRecord(path.name, number, 1, chrom=row["chrom"],
                                error=f"{path.name} line {number}: malformed TSV line: {problem}")
            continue
        alts = (row["alt"] or "").split(",")
        for i, alt in enumerate(alts, 1):
            yield VariantRecord(path.name, number, i, chrom=row["chrom"], pos=int(pos), ref=_allele(row["ref"]),
                                alt=_allele(alt), id=row.get("id"), gene=row.get("gene"),
                                question=_text(row.get("question")), network=_text(row.get("network")),
                                pathway_genes=_text(row.get("genes_in_pathway")),
                                n_alts=len(alts))
    if columns is None:
        raise VariantFileError(f"{path.name}: empty TSV (no header row)")


def read_variants(path: str | Path, fmt: str) -> Iterator[VariantRecord]:
    if fmt not in ("vcf", "tsv"):
        raise ValueError(f"unknown variant file format {fmt!r}; expected 'vcf' or 'tsv'")
    return read_vcf(path) if fmt == "vcf" else read_tsv(path)


# ---- batch files ----------------------------------------------------------------------------------------------

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
    return row


def _format_row(row: dict) -> str:
    return "\t".join(_cell(row.get(c)) for c in OUT_COLUMNS) + "\n"


_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _uncell(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(0)), text)


def read_results(path: str | Path) -> list[dict]:
    """The rows of an explain output TSV (complete lines only) as strings ("" for empty cells)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")[:-1]
    return [dict(zip(OUT_COLUMNS, map(_uncell, line.split("\t")))) for line in lines[1:]]


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


def explain_file(variants: str | Path, fasta: str | Path, model, out: str | Path, fmt: str | None = None,
                 vcf_out: str | Path | None = None, resume: bool = False, batch_size: int = 8, mode: str = "score",
                 max_new_tokens: int = 1024, progress: bool = True, dtype: str = "auto") -> dict:
    """Explain every variant of a VCF/TSV file into a TSV (one line per record, appended and fsynced).

    `dtype` (auto | bfloat16 | float16 | float32) applies when `model` is a path (auto: bf16 on CUDA, else fp32).

    Records are taken in fixed chunks of `batch_size` (by record order), so a resumed run batches exactly as an
    uninterrupted one and writes the same output. `resume` skips the records already in `out` (settings must
    match, see OUT.meta.json); a bad record gets its message in the `error` column and the run goes on.
    `vcf_out` (VCF input only) is written at the end from `out`: the input VCF with DNALLM_* INFO fields.
    Returns a summary with counts and timings.
    """
    from tqdm import tqdm

    from dnallm.inference import explain_many, load_model
    from dnallm.modeling import DNALLMForConditionalGeneration

    variants, out = Path(variants), Path(out)
    fmt = fmt or ("tsv" if re.search(r"\.(tsv|txt)(\.gz)?$", variants.name, re.I) else "vcf")
    if mode not in ("generate", "score"):
        raise ValueError(f"unknown mode {mode!r}; expected 'generate' or 'score'")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if vcf_out is not None and fmt != "vcf":
        raise ValueError("--vcf-out needs VCF input (--vcf)")
    model_name = "<model object>" if isinstance(model, DNALLMForConditionalGeneration) else str(Path(model).resolve())
    meta = {"variants": str(variants.resolve()), "format": fmt, "fasta": str(Path(fasta).resolve()),
            "model": model_name, "mode": mode, "batch_size": batch_size,
            "max_new_tokens": max_new_tokens if mode == "generate" else None,
            "dtype": None if isinstance(model, DNALLMForConditionalGeneration) else dtype}
    meta_path = out.with_name(out.name + ".meta.json")
    genome = open_genome(fasta)
    total = sum(1 for _ in read_variants(variants, fmt))  # also surfaces file-level errors before any work
    if fmt == "vcf":  # a header from another build than the FASTA stops the run before any work
        genome.check_build(*read_vcf_header(variants), source=variants.name)

    done: list[str] = []
    if out.exists() and out.stat().st_size and not resume:
        raise FileExistsError(f"{out} exists: pass --resume to continue it, or remove it")
    if resume and out.exists():
        old = json.loads(meta_path.read_text()) if meta_path.exists() else None
        if old is None:
            raise ValueError(f"cannot resume {out}: {meta_path.name} (the settings it was written with) is missing")
        diff = {key: (old.get(key), value) for key, value in meta.items() if old.get(key) != value}
        if diff:
            raise ValueError(f"cannot resume {out}: it was written with other settings "
                             f"({'; '.join(f'{k}: {a!r} then, {b!r} now' for k, (a, b) in diff.items())})")
        done = _resume_keys(out)
    if not done:
        tmp = meta_path.with_name(meta_path.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, meta_path)
    t_load = time.perf_counter()
    if not isinstance(model, DNALLMForConditionalGeneration):
        model = load_model(model_name, dtype=dtype)
    load_s = time.perf_counter() - t_load
    window = model.config.dna_config.window_size

    stats = {"records": total, "skipped": len(done), "written": 0, "errors": 0, "padded": 0}
    bar = tqdm(total=total, initial=len(done), unit="variant", desc=f"explain ({mode})", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    records = read_variants(variants, fmt)
    with open(out, "a" if done else "w", encoding="utf-8") as f:
        if not done:
            _append(f, "\t".join(OUT_COLUMNS) + "\n")
        index = 0
        while True:
            chunk = []
            for rec in records:
                chunk.append(rec)
                if len(chunk) == batch_size:
                    break
            if not chunk:
                break
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
                except VariantError as e:
                    rows[i] = _result_row(rec, question=question, error=str(e))
                    continue
                todo.append((i, question, w))
            explanations = explain_many(model, [q for _, q, _ in todo], [(w.reference, w.variant) for _, _, w in todo],
                                        mode=mode, max_new_tokens=max_new_tokens, k=3, batch_size=batch_size)
            for (i, question, w), ex in zip(todo, explanations):
                rows[i] = _result_row(chunk[i], question=question, windows=w, explanation=ex)
            for row in rows[len(seen):]:
                _append(f, _format_row(row))
                stats["written"] += 1
                stats["errors"] += bool(row["error"])
                stats["padded"] += bool(row.get("padded"))
                bar.update(1)
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


def _info_text(label: str) -> str:
    return label.replace(" ", "_")


def write_vcf_out(vcf_in: str | Path, results_tsv: str | Path, vcf_out: str | Path) -> int:
    """The input VCF with DNALLM_LABEL / DNALLM_PROB / DNALLM_TOP3 (Number=A) added to INFO, from the results
    TSV; written to a temporary file and renamed (bgzip when the name ends in .gz). Malformed input lines are
    left out (their error is in the TSV); returns how many."""
    vcf_in, vcf_out = Path(vcf_in), Path(vcf_out)
    results: dict[str, dict] = {row["record"]: row for row in read_results(results_tsv)}
    tmp = vcf_out.with_name(vcf_out.name + ".tmp")
    dropped = 0
    if vcf_out.name.endswith(".gz"):
        from Bio import bgzf

        handle = bgzf.BgzfWriter(str(tmp), "wb")
        write = lambda s: handle.write(s.encode())  # noqa: E731
    else:
        handle = open(tmp, "w", encoding="utf-8")
        write = handle.write
    with handle, _open_text(vcf_in) as f:
        for number, raw in enumerate(f, 1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            if line.startswith("##"):
                if not line.startswith("##INFO=<ID=DNALLM_"):
                    write(line + "\n")
                continue
            if line.startswith("#"):
                write("".join(h + "\n" for h in INFO_HEADER) + line + "\n")
                continue
            records = parse_vcf_line(line, number, vcf_in.name)
            if records[0].error:
                dropped += 1
                continue
            labels, probs, tops = [], [], []
            for rec in records:
                row = results.get(rec.key, {})
                labels.append(_info_text(row["label"]) if row.get("label") else ".")
                probs.append(row["probability"] if row.get("probability") else ".")
                tops.append(_info_text(row["top3"]) if row.get("top3") else ".")
            cols = line.split("\t")
            info = [item for item in ("" if cols[7] == "." else cols[7]).split(";")
                    if item and not item.startswith("DNALLM_")]
            if any(v != "." for v in labels):
                info.append("DNALLM_LABEL=" + ",".join(labels))
            if any(v != "." for v in probs):
                info.append("DNALLM_PROB=" + ",".join(probs))
            if any(v != "." for v in tops):
                info.append("DNALLM_TOP3=" + ",".join(tops))
            cols[7] = ";".join(info) or "."
            write("\t".join(cols) + "\n")
    os.replace(tmp, vcf_out)
    return dropped
