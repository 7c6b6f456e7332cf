"""Reading variant files: VCF (plain, gzip or bgzip) and TSV into `VariantRecord`s, and the explain output TSV.

A small strict reader, not pysam, so that every problem names its line number and a bad line does not stop the
file (pysam reports a non-numeric POS or a short line only as "truncated file"). Multi-allelic records give one
record per ALT (key `LINE:ALT_NUMBER`). `read_vcf_header` gives the genome build a VCF states (its ##contig
lengths and ##reference).

TSV input: a header row with columns chrom, pos, ref, alt (required; `-` or an empty cell is an empty allele)
and optionally id, gene, question, network, genes_in_pathway; one variant (or comma-separated ALTs) per row.
Text cells use the escapes of the explain output TSV (`_uncell`); `read_results` reads that output back.
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dnallm.genome import describe

VCF_COLUMNS = ("CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO")
TSV_COLUMNS = ("chrom", "pos", "ref", "alt", "id", "gene", "question", "network", "genes_in_pathway")
TSV_ALIASES = {"chr": "chrom", "chromosome": "chrom", "position": "pos", "genes": "genes_in_pathway"}
OUT_COLUMNS = ("record", "line", "id", "chrom", "pos", "ref", "alt", "gene", "label", "probability", "top3",
               "delta_p", "reference_label", "encoder_dll", "padded", "warnings", "error", "question", "reasoning")


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


def _open_text(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:  # gzip and bgzip
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    # utf-8-sig: a byte-order mark (Excel and other Windows tools) would otherwise start the first header name
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for every non-blank line of a plain or gzipped text file."""
    number = 0
    with _open_text(path) as f:
        try:
            for number, raw in enumerate(f, 1):
                line = raw.rstrip("\r\n")
                if line.strip():
                    yield number, line
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise VariantFileError(f"{path.name} after line {number}: the compressed file is truncated or corrupt "
                                   f"({e or type(e).__name__})") from e


def parse_info(info: str) -> dict[str, str]:
    return {} if info == "." else dict(item.partition("=")[::2] for item in info.split(";") if item)


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


def _bad(source: str, number: int, problem: str, chrom: str | None = None) -> VariantRecord:
    """The one record of a line that cannot be read; its error names the file and line."""
    return VariantRecord(source, number, 1, chrom=chrom, error=f"{source} line {number}: {problem}")


def _empty_in_list(alleles: list[str]) -> int:
    """The 1-based index of the first empty (or blank) allele of a comma-separated list, 0 if none."""
    return next((i for i, a in enumerate(alleles, 1) if not a.strip()), 0)


def _is_qual(text: str) -> bool:
    try:
        return text == "." or math.isfinite(float(text))
    except ValueError:
        return False


def parse_vcf_line(line: str, number: int, source: str = "VCF") -> list[VariantRecord]:
    """The records (one per ALT) of one VCF data line; a malformed line gives one record with `error` set."""
    cols = line.split("\t")
    if len(cols) < 8:
        hint = " (the line looks space-separated; VCF columns are tab-separated)" if len(line.split()) >= 8 else ""
        return [_bad(source, number, f"malformed VCF line: {len(cols)} tab-separated column(s), a data line needs "
                     f"at least 8 ({' '.join(VCF_COLUMNS)}){hint}")]
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
    elif not _is_qual(cols[5].strip()):  # htslib would write it back as 0, a real quality ("no variant")
        problem = f"QUAL {cols[5]!r} is not a number or '.'"
    if problem:
        return [_bad(source, number, f"malformed VCF line: {problem}", chrom or None)]
    alt_list = alts.split(",")
    if empty_alt := _empty_in_list(alt_list):  # "T," is a malformed list, not a deletion
        return [_bad(source, number, f"malformed VCF line: ALT {empty_alt} of {alts!r} is empty", chrom)]
    info_map = parse_info(info)
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
                yield _bad(path.name, number, "malformed VCF: a ## meta line after the #CHROM header line")
            continue
        if line.startswith("#"):
            if header:
                yield _bad(path.name, number, "malformed VCF: a second #CHROM header line")
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
            yield _bad(path.name, number, f"malformed TSV line: {len(cells)} tab-separated cell(s), the header has "
                       f"{len(columns)}")
            continue
        row = {c: (v.strip() or None) for c, v in zip(columns, cells)}
        pos = row["pos"] or ""
        if not row["chrom"] or not re.fullmatch(r"\d+", pos) or int(pos) < 1:
            problem = "chrom is empty" if not row["chrom"] else f"pos {pos!r} is not a 1-based position"
            yield _bad(path.name, number, f"malformed TSV line: {problem}", row["chrom"])
            continue
        alts = (row["alt"] or "").split(",")
        if len(alts) > 1 and (empty_alt := _empty_in_list(alts)):  # "A," is malformed; an empty cell is a deletion
            yield _bad(path.name, number, f"malformed TSV line: alt {empty_alt} of {row['alt']!r} is empty",
                       row["chrom"])
            continue
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


# the explain output TSV's cell escapes (also in TSV input text cells)
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _uncell(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(0)), text)


def read_results(path: str | Path) -> list[dict]:
    """The rows of an explain output TSV (complete lines only) as strings ("" for empty cells)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")[:-1]
    return [dict(zip(OUT_COLUMNS, map(_uncell, line.split("\t")))) for line in lines[1:]]
