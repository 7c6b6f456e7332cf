"""Variants from VCF and TSV files, questions for them, and batched explanations.

`explain_variant` (one variant) and `dnallm explain --vcf/--tsv` (a file) run the same functions:
`Genome.windows` cuts the windows, `questions.build_question` writes the question when none is given,
`inference.explain_many` asks the model in batches.

  reading.py   `read_variants` (`read_vcf`, `read_tsv`: a strict reader that names the line of every problem; the
               TSV input format), `read_results` (the explain output TSV read back).
  batch.py     `explain_file`, the resumable batch runner.
  vcf_out.py   `write_vcf_out` (`--vcf-out`): the input VCF with DNALLM_* INFO fields, written with pysam.
  sharded.py   `explain_file_sharded` (`--devices N`): chunk k to worker process k % N, byte-identical to 1 device.
"""

from dnallm.variants.batch import explain_file
from dnallm.variants.reading import (OUT_COLUMNS, TSV_ALIASES, TSV_COLUMNS, VCF_COLUMNS, VariantFileError,
                                     VariantRecord, gene_from_info, parse_info, parse_vcf_line, read_results,
                                     read_tsv, read_variants, read_vcf, read_vcf_header)
from dnallm.variants.vcf_out import INFO_HEADER, write_vcf_out

__all__ = ["INFO_HEADER", "OUT_COLUMNS", "TSV_ALIASES", "TSV_COLUMNS", "VCF_COLUMNS", "VariantFileError",
           "VariantRecord", "explain_file", "gene_from_info", "parse_info", "parse_vcf_line", "read_results",
           "read_tsv", "read_variants", "read_vcf", "read_vcf_header", "write_vcf_out"]
