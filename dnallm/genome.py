"""Variants as coordinates: the model's reference and variant windows cut from a genome FASTA.

A variant is `chrom, pos, ref, alt` with `pos` the 1-based position of REF's first base (VCF POS). The windows
follow the KEGG window rule of `dnallm.data.centred_windows`: the 512 bp before REF, then REF (reference window) or
ALT (variant window), then as much downstream sequence as the window needs.

The variant is normalised first (`Genome.normalize`: shared end bases trimmed, indels left-aligned), so every way of
writing one change (VCF-anchored `100 AT>A`, KEGG-style `101 T>-`, ...) gives the same windows, with the first
changed base at index 512; an empty REF inserts ALT before `pos`. KEGG rows placed at their coordinates give
exactly the dataset's windows (KEGG's indels are left-aligned, and their padding base is the indel's last base).
`normalize=False` uses the alleles exactly as given.

Checks (each error names the variant and the problem): REF must match the FASTA (else: another genome build?), the
contig must exist after aliases (chr1 <-> 1, chrM <-> MT <-> M, KEGG's 23 / 24 -> X / Y), alleles must be
A/C/G/T/N, and a window that runs off a contig end is padded with N and flagged. For a whole VCF,
`Genome.check_build` compares the header's `##contig` lengths and `##reference` with the FASTA first.

FASTA files are read with pyfaidx, plain or bgzip (needs biopython); it writes its `.fai`/`.gzi` index next to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from dnallm.data import WINDOW_SIZE, centred_windows

ALLELE_BASES = frozenset("ACGTN")
# IUPAC nucleotide codes and the bases each stands for.
IUPAC_CODES = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "K": "GT", "M": "AC",
               "S": "CG", "W": "AT", "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG", "N": "ACGT"}
_MITO = ("chrM", "MT", "M", "chrMT")
# KEGG (and dnallm's questions) number the sex chromosomes: 23 is X, 24 is Y.
KEGG_SEX_CHROMOSOMES = {"23": "X", "24": "Y"}


class VariantError(ValueError):
    """A variant that cannot be turned into windows; the message names the variant and the problem."""


class GenomeBuildError(ValueError):
    """A variant file whose header says it is from another genome build than the FASTA (a whole-file error:
    its REF checks would fail record by record, or worse, pass by chance at shifted positions)."""


# The length of chromosome 1 tells the two human builds apart; _BUILD_NAME reads a build from a ##reference value
# such as GRCh38, hg19, b37, hs37d5.fa, human_g1k_v37.fasta or Homo_sapiens_assembly38.fasta.
CHR1_LENGTHS = {"GRCh37": 249250621, "GRCh38": 248956422}
_BUILD_NAME = re.compile(r"(?<![a-z0-9])(?:grch|hg|hs|b|v|ncbi|build|assembly)[ _.-]?(19|37|38)(?!\d)", re.I)


def build_named(text: str) -> str | None:
    """GRCh37 or GRCh38 when `text` (a ##reference value, a file name) names one of them, else None."""
    m = _BUILD_NAME.search(text)
    return None if m is None else "GRCh38" if m.group(1) == "38" else "GRCh37"


def describe(chrom, pos, ref, alt) -> str:
    """`chrom:pos REF>ALT`, the way error messages name a variant (`-` for an empty allele)."""
    return f"{chrom}:{pos} {ref or '-'}>{alt or '-'}"


def check_allele(allele: str | None, what: str, where: str) -> str:
    """An upper-cased REF/ALT of A/C/G/T/N ('' allowed: an empty allele); anything else is a VariantError."""
    if allele is None:
        raise VariantError(f"{where}: {what} is missing")
    a = allele.strip()
    if a in ("", "-"):
        return ""
    if a == ".":
        raise VariantError(f"{where}: {what} is '.' (no allele): not supported")
    if a == "*":
        raise VariantError(f"{where}: {what} '*' (an allele removed by an overlapping deletion) is not supported; "
                           "give the deletion itself")
    if a.startswith("<") and a.endswith(">"):
        raise VariantError(f"{where}: symbolic {what} {a} (a structural variant) is not supported; only "
                           "sequence alleles (A, C, G, T, N) are")
    if "[" in a or "]" in a or (len(a) > 1 and (a[0] == "." or a[-1] == ".")):
        raise VariantError(f"{where}: breakend {what} {a!r} (a structural rearrangement) is not supported; only "
                           "sequence alleles (A, C, G, T, N) are")
    a = a.upper()
    for i, b in enumerate(a):
        if b not in ALLELE_BASES:
            kind = "an IUPAC ambiguity code" if b in IUPAC_CODES else "not an IUPAC nucleotide code"
            raise VariantError(f"{where}: {what} {allele!r} has {b!r} at allele position {i + 1}, {kind}; "
                               "alleles must be A, C, G, T or N")
    return a


def kegg_chromosome(chrom: str) -> str:
    """A chromosome name without `chr`, with KEGG's numbers for the sex chromosomes read as X / Y (23 -> X)."""
    bare = re.sub(r"^chr", "", str(chrom).strip(), flags=re.I)
    return KEGG_SEX_CHROMOSOMES.get(bare, bare)


def contig_candidates(chrom: str) -> list[str]:
    """Names to try for `chrom`, in order: itself, then the chr-prefix toggled, then mitochondrial synonyms, or
    for KEGG's 23 / 24 the X / Y contig (a FASTA with a contig literally named 23 still gets that one)."""
    c = chrom.strip()
    bare = re.sub(r"^chr", "", c, flags=re.I)
    names = [c, bare, f"chr{bare}"]
    if bare.upper() in ("M", "MT"):
        names += list(_MITO)
    if bare in KEGG_SEX_CHROMOSOMES:
        names += [KEGG_SEX_CHROMOSOMES[bare], f"chr{KEGG_SEX_CHROMOSOMES[bare]}"]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class VariantWindows:
    reference: str            # the reference window (1024 bp)
    variant: str              # the variant window (1024 bp)
    contig: str               # the FASTA contig the chromosome name resolved to
    padded: bool              # True when N was added because the window runs off a contig end
    warnings: tuple[str, ...]
    pos: int                  # the variant the windows show: normalised (see Genome.normalize) unless
    ref: str                  # normalize=False; ref holds the FASTA's bases
    alt: str


class Genome:
    """A genome FASTA (plain or bgzip) read with pyfaidx; contig names are the first word of each header."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"genome FASTA {self.path} does not exist")
        try:
            import pyfaidx
        except ImportError:
            raise ImportError("reading a genome FASTA needs pyfaidx: pip install 'dnallm-variants[genome]'") from None
        try:
            self._fasta = pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=True)
        except ImportError as e:  # pyfaidx reads bgzip through biopython
            raise ImportError(f"reading the bgzip FASTA {self.path} needs biopython: "
                              f"pip install 'dnallm-variants[genome]' ({e})") from None
        except pyfaidx.UnsupportedCompressionFormat:
            raise ValueError(f"{self.path} is gzip-compressed but not with bgzip; recompress it with "
                             f"`gunzip -c {self.path.name} | bgzip > genome.fa.gz` or give the plain FASTA") from None
        except (pyfaidx.FastaIndexingError, ValueError, OSError) as e:
            raise ValueError(f"cannot read the genome FASTA {self.path}: {e}") from None
        self.lengths = {name: len(rec) for name, rec in self._fasta.records.items()}

    def _contig(self, chrom: str) -> str | None:
        return next((c for c in contig_candidates(str(chrom)) if c in self.lengths), None)

    def resolve(self, chrom: str, where: str) -> str:
        if (name := self._contig(chrom)) is not None:
            return name
        shown = ", ".join(list(self.lengths)[:8]) + (", ..." if len(self.lengths) > 8 else "")
        tried = ", ".join(contig_candidates(str(chrom)))
        raise VariantError(f"{where}: contig {chrom!r} is not in the genome FASTA {self.path.name} (tried {tried}; "
                           f"the FASTA has {shown}) - is it the same genome build as the variants?")

    def build(self) -> str | None:
        """GRCh37 or GRCh38 when the FASTA's chromosome 1 has that build's length, else None (unknown)."""
        contig = self._contig("1")
        return next((b for b, n in CHR1_LENGTHS.items() if contig and self.lengths[contig] == n), None)

    def check_build(self, contigs: dict[str, tuple[int, int]], reference: tuple[str, int] | None,
                    source: str) -> None:
        """Raise GenomeBuildError when a variant file's header contradicts the FASTA: a `##contig` length (given
        as name -> (length, line)) differs from the FASTA's contig of that name (after aliases), or
        `##reference` (value, line) names GRCh37 / GRCh38 while the FASTA's chromosome 1 has the other build's
        length. Contigs the FASTA lacks are left to the records on them."""
        differ = []
        for name, (length, line) in contigs.items():
            contig = self._contig(name)
            if contig is not None and self.lengths[contig] != length:
                differ.append(f"{source} line {line}: ##contig {name} has length={length}, but {contig} in the "
                              f"genome FASTA {self.path.name} has {self.lengths[contig]} bp")
        if differ:
            more = f" (and {len(differ) - 1} more contig(s) differ)" if len(differ) > 1 else ""
            raise GenomeBuildError(f"{differ[0]}{more} - the VCF and the FASTA are from different genome builds "
                                   "(e.g. GRCh37 vs GRCh38); use the FASTA the variants were called on")
        named, fasta_build = build_named(reference[0]) if reference else None, self.build()
        if named and fasta_build and named != fasta_build:
            raise GenomeBuildError(f"{source} line {reference[1]}: ##reference={reference[0]} names {named}, but "
                                   f"the genome FASTA {self.path.name} is {fasta_build} (its chromosome 1 has "
                                   f"{CHR1_LENGTHS[fasta_build]} bp, {named}'s has {CHR1_LENGTHS[named]}); use "
                                   "the FASTA the variants were called on")

    def fetch(self, contig: str, start: int, end: int) -> str:
        """Bases [start, end) of a contig (0-based), clamped to the contig."""
        start, end = max(0, start), min(end, self.lengths[contig])
        return self._fasta[contig][start:end] if end > start else ""

    def _bases_before(self, contig: str, pos: int, chunk: int = 512):
        """The FASTA's bases before 1-based `pos`, nearest first (read a chunk at a time)."""
        end = pos - 1
        while end > 0:
            start = max(0, end - chunk)
            yield from reversed(self.fetch(contig, start, end))
            end = start

    def normalize(self, contig: str, pos: int, ref: str, alt: str) -> tuple[int, str, str]:
        """One change, one form: (pos, ref, alt) with the bases REF and ALT share at either end trimmed (an allele
        may become empty) and an indel moved left while the base before it equals its last base (`bcftools norm`'s
        left-alignment, without the padding base). `ref` must be the FASTA's bases; the shift stops at an N."""
        while ref and alt and ref[-1] == alt[-1]:
            ref, alt = ref[:-1], alt[:-1]
        while ref and alt and ref[0] == alt[0]:
            ref, alt, pos = ref[1:], alt[1:], pos + 1
        if bool(ref) == bool(alt):  # a substitution (nothing to shift), or no change at all
            return pos, ref, alt
        indel = ref or alt
        for base in self._bases_before(contig, pos):
            if base != indel[-1] or base == "N":
                break
            indel, pos = base + indel[:-1], pos - 1
        return (pos, indel, "") if ref else (pos, "", indel)

    def windows(self, chrom: str, pos: int, ref: str, alt: str, where: str | None = None,
                window: int = WINDOW_SIZE, normalize: bool = True) -> VariantWindows:
        """The reference and variant windows of one variant (see the module docstring)."""
        where = where or describe(chrom, pos, ref, alt)
        ref, alt = check_allele(ref, "REF", where), check_allele(alt, "ALT", where)
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 1:
            raise VariantError(f"{where}: POS {pos!r} is not a 1-based position (an integer >= 1)")
        if chrom is None or not str(chrom).strip():
            raise VariantError(f"{where}: CHROM is empty")
        contig = self.resolve(str(chrom), where)
        length, start = self.lengths[contig], pos - 1
        if start + len(ref) > length:
            raise VariantError(f"{where}: REF at {contig}:{pos}-{pos + max(len(ref), 1) - 1} runs past the end of "
                               f"{contig} ({length} bp) - is it the same genome build as the variants?")
        genome_ref = self.fetch(contig, start, start + len(ref))
        for i, (r, g) in enumerate(zip(ref, genome_ref)):
            if not (r == g or r == "N" or (g != "N" and r in IUPAC_CODES.get(g, ""))):
                shown = genome_ref if len(genome_ref) <= 30 else genome_ref[:30] + "..."
                raise VariantError(f"{where}: REF {ref if len(ref) <= 30 else ref[:30] + '...'} does not match the "
                                   f"genome FASTA, which has {shown} at {contig}:{pos} (first difference at "
                                   f"{contig}:{pos + i}); this usually means the variants and the FASTA are from "
                                   "different genome builds (e.g. GRCh37 vs GRCh38)")
        same = ref == alt or genome_ref == alt
        if normalize and not same:  # the REF check above is on the variant as given; the windows on its normal form
            pos, ref, alt = self.normalize(contig, pos, genome_ref, alt)
            start = pos - 1
            genome_ref = self.fetch(contig, start, start + len(ref))
        half = window // 2
        need_down = max(0, window - half - min(len(ref), len(alt)))
        up = self.fetch(contig, start - half, start)
        down = self.fetch(contig, start + len(ref), start + len(ref) + need_down)
        warnings = []
        pad_up, pad_down = half - len(up), need_down - len(down)
        if pad_up:
            warnings.append(f"{where}: the window runs off the start of {contig}; {pad_up} N added before it")
        if pad_down:
            warnings.append(f"{where}: the window runs off the end of {contig} ({length} bp); {pad_down} N added "
                            "after it")
        cleaned = [self._window_bases(seq, contig, offset, where)
                   for seq, offset in ((up, start - len(up)), (genome_ref, start), (down, start + len(ref)))]
        (up, _), (genome_ref, _), (down, _) = cleaned
        replaced = sum(n for _, n in cleaned)
        if replaced:
            warnings.append(f"{where}: {replaced} IUPAC ambiguity code(s) in the genome window replaced by N")
        if len(alt) > window - half or len(ref) > window - half:
            warnings.append(f"{where}: an allele is longer than {window - half} bp; the windows show only its first "
                            f"{window - half} bp")
        if same:
            warnings.append(f"{where}: ALT equals REF; the reference and variant windows are identical")
        ref_window, variant_window = centred_windows("N" * pad_up + up, genome_ref, alt, down + "N" * pad_down, window)
        return VariantWindows(ref_window, variant_window, contig, bool(pad_up or pad_down), tuple(warnings),
                              pos, genome_ref, alt)

    @staticmethod
    def _window_bases(seq: str, contig: str, offset: int, where: str) -> tuple[str, int]:
        """FASTA bases as the encoder takes them (A/C/G/T/N): ambiguity codes become N (counted)."""
        if set(seq) <= ALLELE_BASES:
            return seq, 0
        for i, b in enumerate(seq):
            if b not in IUPAC_CODES:
                raise VariantError(f"{where}: the genome FASTA has {b!r} at {contig}:{offset + i + 1}, which is not "
                                   "an IUPAC nucleotide code - is the FASTA a DNA sequence file?")
        return "".join(b if b in ALLELE_BASES else "N" for b in seq), sum(b not in ALLELE_BASES for b in seq)


@lru_cache(maxsize=4)
def _open_genome(path: str, mtime: float) -> Genome:
    return Genome(path)


def open_genome(path: str | Path) -> Genome:
    """A Genome, opened once per process per file (reopened if the file changes)."""
    p = Path(path).resolve()
    return _open_genome(str(p), p.stat().st_mtime if p.exists() else 0.0)


# ---- KEGG rows as coordinates -------------------------------------------------------------------------------

_POS_ON_CHROM = re.compile(r"position\s+(\d[\d,]*)\s+(?:on|of|in)\s+(?:the\s+)?chromosome\s+([0-9]+|X|Y|MT|M)\b", re.I)
_CHROM_AT_POS = re.compile(r"chromosome\s+([0-9]+|X|Y|MT|M)\b(?:\s*\([^)]*\))?,?\s+(?:at\s+)?(?:genomic\s+)?"
                           r"position\s+(\d[\d,]*)", re.I)
_CHANGE = re.compile(r"(?<![A-Za-z])([ACGT]+)\s*(?:>|\bto\b)\s*([ACGT]+)(?![A-Za-z])")


@dataclass(frozen=True)
class KeggCoordinates:
    chrom: str
    pos: int
    ref: str
    alt: str


def parse_kegg_coordinates(reasoning: str) -> KeggCoordinates | None:
    """(chrom, pos, ref, alt) from a KEGG reasoning text, or None when the text does not state all four.

    Reads the KEGG forms "G>T substitution at position 11022300 on chromosome 1", "T to TT change ... at position
    179836493 on chromosome 5", "on chromosome 12 at position 12718210" (positions as stated: a few are one off).
    """
    m = _POS_ON_CHROM.search(reasoning)
    if m:
        pos, chrom = m.group(1), m.group(2)
    else:
        m = _CHROM_AT_POS.search(reasoning)
        if not m:
            return None
        chrom, pos = m.group(1), m.group(2)
    change = _CHANGE.search(reasoning)
    if not change:
        return None
    return KeggCoordinates(chrom.upper(), int(pos.replace(",", "")), change.group(1), change.group(2))


def write_kegg_contigs(rows, path: str | Path, rows_per_contig: int = 10, gap: int = 100) -> list[dict]:
    """Place KEGG rows' reference sequences on synthetic contigs, `gap` N apart, and write them as a FASTA (for
    tests, demos and benchmarks). Returns one dict per row: chrom, pos (1-based, of REF), ref, alt, row and the
    row's windows, to check `Genome.windows(chrom, pos, ref, alt)` against."""
    rows = list(rows)
    n_contigs = -(-len(rows) // rows_per_contig)
    names = [f"chr{i + 1}" for i in range(n_contigs)]
    placed, contigs = [], []
    for c in range(n_contigs):
        seq = "N" * gap
        for row in rows[c * rows_per_contig:(c + 1) * rows_per_contig]:
            placed.append({"chrom": names[c], "pos": len(seq) + 2001, "ref": row["ref_allele"],
                           "alt": row["alt_allele"], "ref_window": row["ref_window"],
                           "variant_window": row["variant_window"], "row": row.get("row")})
            seq += row["reference_sequence"] + "N" * gap
        contigs.append((names[c], seq))
    with open(path, "w") as f:
        for name, seq in contigs:
            f.write(f">{name} synthetic contig of KEGG rows\n")
            f.writelines(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
    return placed
