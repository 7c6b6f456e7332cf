"""Questions for variants that come without one: KEGG-style from what is known (gene, chromosome, pathway)."""

from __future__ import annotations

import re

from dnallm.data import HARD_QUESTION


def chromosome_number(chrom: str) -> str:
    """The KEGG questions' chromosome number: `chr1` -> 1, X -> 23, Y -> 24, chrM/MT -> MT."""
    c = re.sub(r"^chr", "", str(chrom).strip(), flags=re.I).upper()
    return {"X": "23", "Y": "24", "M": "MT"}.get(c, c)


def build_question(gene: str | None = None, chrom: str | None = None, network: str | None = None,
                   pathway_genes: str | None = None) -> str:
    """A KEGG-style question from what is known about a variant.

    With a gene (and/or pathway text) it mirrors the KEGG questions: `Chromosome Number: N`, the optional
    `Network Definition of the pathway:` / `Genes in the pathway:` lines, then "Given this context, what is
    the biological effect of this GENE allele, specifically what disease does this contribute to?". With
    neither it is the kegg_hard question "What disease does this contribute to?" (the chromosome alone is
    then left out, as in kegg_hard).
    """
    gene, network, pathway_genes = (v.strip() if isinstance(v, str) and v.strip() else None
                                    for v in (gene, network, pathway_genes))
    if not (gene or network or pathway_genes):
        return HARD_QUESTION
    context = []
    if chrom is not None and str(chrom).strip():
        context.append(f"Chromosome Number: {chromosome_number(chrom)}")
    if network:
        context.append(f"Network Definition of the pathway: {network}")
    if pathway_genes:
        context.append(f"Genes in the pathway: {pathway_genes}")
    subject = f"this {gene} allele" if gene else "this allele"
    ask = f"Given this context, what is the biological effect of {subject}, specifically what disease does this " \
          "contribute to?"
    return "\n".join(context) + "\n\n" + ask if context else ask
