"""Variants from VCF and TSV files, questions for them, and batched explanations.

`explain_variant` (one variant) and `dnallm explain --vcf/--tsv` (a file) run the same functions:
`Genome.windows` cuts the windows, `questions.build_question` writes the question when none is given,
`inference.explain_many` asks the model in batches.

  reading.py   `read_variants` (`read_vcf`, `read_tsv`): a small strict reader, not pysam, so that every problem
               names its line number and a bad line does not stop the file (pysam reports a non-numeric POS or a
               short line only as "truncated file"). Multi-allelic records give one record per ALT (key
               `LINE:ALT_NUMBER`). Also `read_results`, the explain output TSV read back.
  batch.py     `explain_file`, the resumable batch runner. A VCF header whose `##contig` lengths or `##reference`
               contradict the FASTA (another genome build) stops it before any work (`Genome.check_build`); a
               bad record only gets its error.
  vcf_out.py   `write_vcf_out` (`--vcf-out`): the input VCF with DNALLM_* INFO fields, written with pysam.
  sharded.py   `explain_file_sharded` (`--devices N`): chunk k to worker process k % N (`explain_file(shard=)`),
               part files merged in record order, byte-identical to a 1-device run.

TSV input: a header row with columns chrom, pos, ref, alt (required; `-` or an empty cell is an empty allele)
and optionally id, gene, question, network, genes_in_pathway; one variant (or comma-separated ALTs) per row.
"""

from dnallm.variants.batch import explain_file
from dnallm.variants.reading import (OUT_COLUMNS, TSV_ALIASES, TSV_COLUMNS, VCF_COLUMNS, VariantFileError,
                                     VariantRecord, gene_from_info, parse_info, parse_vcf_line, read_results,
                                     read_tsv, read_variants, read_vcf, read_vcf_header)
from dnallm.variants.vcf_out import INFO_HEADER, write_vcf_out

__all__ = ["INFO_HEADER", "OUT_COLUMNS", "TSV_ALIASES", "TSV_COLUMNS", "VCF_COLUMNS", "VariantFileError",
           "VariantRecord", "explain_file", "gene_from_info", "parse_info", "parse_vcf_line", "read_results",
           "read_tsv", "read_variants", "read_vcf", "read_vcf_header", "write_vcf_out"]
