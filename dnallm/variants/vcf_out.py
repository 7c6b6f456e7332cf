"""`--vcf-out`: the input VCF with the explanations added as INFO fields, written with pysam.

pysam (htslib) stops at the first line it cannot parse ("unable to parse next record"), while the input may hold
lines that `read_vcf` reports as malformed (they got an error row in the results TSV). So the well-formed lines
are first copied into a clean temporary VCF, and pysam reads that one.

What htslib does on the way (not done by the text writer this replaced): an undeclared contig, FILTER, INFO or
FORMAT gets a `Description="Dummy"` header line, the header gets htslib's `##FILTER=<ID=PASS,...>` line, numbers
are written in htslib's format (QUAL 50.123456789 -> 50.1235), and a record with a symbolic `<...>` ALT gets
INFO/END (pysam's `VariantFile.write` always syncs END for those: END = POS + len(REF) - 1 when the record has
none, the VCF 4.3 default), declared in the header when the input does not declare it.
"""

from __future__ import annotations

import os
from pathlib import Path

from dnallm.variants.reading import _numbered_lines, parse_vcf_line, read_results

INFO_HEADER = (
    '##INFO=<ID=DNALLM_LABEL,Number=A,Type=String,Description="dnallm predicted KEGG disease label for each ALT '
    '(spaces written as underscores)">',
    '##INFO=<ID=DNALLM_PROB,Number=A,Type=Float,Description="dnallm label-scoring probability of DNALLM_LABEL">',
    '##INFO=<ID=DNALLM_TOP3,Number=A,Type=String,Description="dnallm top-3 labels for each ALT as '
    'label:probability joined by | (spaces written as underscores)">',
)
# declared only when the results carry the contrast (`explain --contrast`)
DELTA_P_HEADER = ('##INFO=<ID=DNALLM_DELTA_P,Number=A,Type=Float,Description="dnallm --contrast: probability of '
                  'DNALLM_LABEL with the ALT minus with the reference in its place">')
# declared only when the results carry the encoder's zero-shot score (`explain --encoder-dll`)
DLL_HEADER = ('##INFO=<ID=DNALLM_DLL,Number=A,Type=Float,Description="dnallm --encoder-dll: zero-shot score of the '
              'frozen DNA encoder for each ALT, log-likelihood of the variant window minus the reference window '
              '(masked-slot log-odds for a masked encoder)">')
# the line pysam itself adds (to the record's header, too late for the output's) when it writes END
_END_HEADER = '##INFO=<ID=END,Number=1,Type=Integer,Description="Stop position of the interval">'


def _info_text(label: str) -> str:
    return label.replace(" ", "_")


# (INFO key, results column, conversion, missing value) of the fields written per ALT
_INFO_FIELDS = (("DNALLM_LABEL", "label", _info_text, "."), ("DNALLM_PROB", "probability", float, None),
                ("DNALLM_TOP3", "top3", _info_text, "."), ("DNALLM_DELTA_P", "delta_p", float, None),
                ("DNALLM_DLL", "encoder_dll", float, None))


def _clean_copy(vcf_in: Path, clean: Path) -> tuple[list[int], int]:
    """Copy the lines pysam can read from `vcf_in` to the plain-text VCF `clean`: the ## lines before #CHROM
    (without DNALLM_* INFO declarations; `##fileformat=VCFv4.2` first when missing, htslib needs it to detect a
    VCF), the #CHROM line, and the data lines `parse_vcf_line` accepts, without DNALLM_* INFO entries.
    Returns the input line numbers of the copied data lines (in order) and how many lines were left out:
    malformed data lines, and ## / #CHROM lines after the #CHROM line (`read_vcf` gives both an error record)."""
    numbers: list[int] = []
    dropped, header, first = 0, False, True
    with open(clean, "w", encoding="utf-8") as out:
        for number, line in _numbered_lines(vcf_in):
            if first and not line.startswith("##fileformat="):
                out.write("##fileformat=VCFv4.2\n")
            first = False
            if line.startswith("#"):
                if header:
                    dropped += 1
                elif not line.startswith("##INFO=<ID=DNALLM_"):
                    out.write(line + "\n")
                header = header or not line.startswith("##")
                continue
            if parse_vcf_line(line, number, vcf_in.name)[0].error:
                dropped += 1
                continue
            cols = line.split("\t")
            cols[:5] = [c.strip() for c in cols[:5]]  # the reader accepts padded columns; pysam does not
            info = [item for item in ("" if cols[7] == "." else cols[7]).split(";")
                    if item and not item.startswith("DNALLM_")]
            cols[7] = ";".join(info) or "."
            out.write("\t".join(cols) + "\n")
            numbers.append(number)
    return numbers, dropped


def write_vcf_out(vcf_in: str | Path, results_tsv: str | Path, vcf_out: str | Path) -> int:
    """The input VCF with DNALLM_LABEL / DNALLM_PROB / DNALLM_TOP3 (+ DNALLM_DELTA_P with --contrast, DNALLM_DLL
    with --encoder-dll; Number=A) added to INFO, from the results TSV; written with pysam to a temporary file and
    renamed (bgzip when the name ends in .gz). Malformed input lines are left out (their error is in the TSV);
    returns how many."""
    try:
        import pysam
    except ImportError:
        raise ImportError("--vcf-out writes the VCF with pysam: pip install 'dnallm-variants[genome]'") from None

    vcf_in, vcf_out = Path(vcf_in), Path(vcf_out)
    results: dict[str, dict] = {row["record"]: row for row in read_results(results_tsv)}
    tmp = vcf_out.with_name(vcf_out.name + ".tmp")
    clean = vcf_out.with_name(vcf_out.name + ".clean.tmp")
    verbosity = pysam.set_verbosity(1)  # errors only: no warnings about undeclared contigs/tags (module docstring)
    try:
        numbers, dropped = _clean_copy(vcf_in, clean)
        with pysam.VariantFile(str(clean)) as f:
            # a first pass completes the header: htslib declares what the records use undeclared as it reads them
            symbolic = False
            for rec in f:
                symbolic = symbolic or any(a.startswith("<") and a.endswith(">") for a in rec.alts or ())
            contrast = any(row.get("delta_p") for row in results.values())
            dll = any(row.get("encoder_dll") for row in results.values())
            for line in INFO_HEADER + ((DELTA_P_HEADER,) if contrast else ()) + ((DLL_HEADER,) if dll else ()):
                f.header.add_line(line)
            if symbolic and "END" not in f.header.info:
                f.header.add_line(_END_HEADER)
            f.reset()
            with pysam.VariantFile(str(tmp), "wz" if vcf_out.name.endswith(".gz") else "w", header=f.header) as out:
                for rec, number in zip(f, numbers, strict=True):
                    rec.translate(out.header)
                    rows = [results.get(f"{number}:{i}", {}) for i in range(1, len(rec.alts or ()) + 1)]
                    for key, column, convert, missing in _INFO_FIELDS:  # DELTA_P / DLL: declared when any row has one
                        values = [convert(r[column]) if r.get(column) else missing for r in rows]
                        if any(v != missing for v in values):
                            rec.info[key] = values
                    out.write(rec)
        os.replace(tmp, vcf_out)
    finally:
        pysam.set_verbosity(verbosity)
        clean.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return dropped
