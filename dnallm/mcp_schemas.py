"""The typed inputs and outputs of the MCP tools (dnallm.mcp_server): what an agent sees as each tool's input and
output JSON schema. Field descriptions are written for the agent: they say what to send and what comes back.

No `from __future__ import annotations` here or in mcp_server: the SDK reads these annotations at run time to
build the schemas.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, Field

MAX_SEQUENCE = 20_000      # bp per sequence argument: a KEGG-layout sequence is ~4,001 bp, a window 1,024
MAX_ALLELE = 10_000
MAX_VCF_TEXT = 1_000_000   # characters of inline VCF (the record count is bounded separately, by --max-inline)

# ---- inputs shared by the single-variant tools -------------------------------------------------------------------

Question = Annotated[str | None, Field(
    description="The question to ask about the variant. Default: built from `gene` and `chrom` the way the KEGG "
                "questions are written, or 'What disease does this contribute to?' without a gene.",
    max_length=10_000)]
ReferenceSequence = Annotated[str | None, Field(
    description="Reference DNA (A/C/G/T/N): a 1024 bp window with the variant at index 512, or a KEGG-layout "
                "sequence (2000 bp flank + REF + 2000 bp flank). Give it with variant_sequence, or give "
                "chrom/pos/ref/alt instead.", max_length=MAX_SEQUENCE)]
VariantSequence = Annotated[str | None, Field(
    description="The same window (or KEGG-layout sequence) with the alternative allele.", max_length=MAX_SEQUENCE)]
Chrom = Annotated[str | None, Field(
    description="Chromosome of a variant given by coordinates (chr1 or 1, X, Y, MT; KEGG's 23/24 mean X/Y).",
    max_length=200)]
Pos = Annotated[int | None, Field(description="1-based position of REF's first base (VCF POS).", ge=1)]
Ref = Annotated[str | None, Field(
    description="REF allele as in the genome (checked against it); '-' or '' for an insertion.",
    max_length=MAX_ALLELE)]
Alt = Annotated[str | None, Field(description="ALT allele (one); '-' or '' for a deletion.", max_length=MAX_ALLELE)]
Genome = Annotated[str | None, Field(
    description="The genome FASTA for chrom/pos/ref/alt, by file name as list_inputs shows it (never a path); may "
                "be left out when the server has exactly one genome.", max_length=500)]
Gene = Annotated[str | None, Field(description="Gene symbol (e.g. TARDBP), used to build the question when none is "
                                               "given.", max_length=200)]
MaxNewTokens = Annotated[int | None, Field(
    description="Thinking budget: at most this many reasoning tokens before the answer is forced (default and "
                "upper bound: the server's --max-new-tokens, see list_inputs).", ge=1)]
AttributionMethod = Literal["contrast", "ism"]

# ---- outputs ----------------------------------------------------------------------------------------------------


class LabelProbability(BaseModel):
    label: str = Field(description="One of the 37 KEGG disease labels")
    probability: float = Field(description="Label-scoring probability (the 37 sum to 1)")


class VariantExplanation(BaseModel):
    label: str | None = Field(description="The label on the model's final `Answer:` line (one of the 37)")
    reasoning: str = Field(description="The model's reasoning (its think block)")
    top_k: list[LabelProbability] = Field(description="The most probable labels under label scoring, best first; "
                                                      "its first label can differ from the written one")
    question: str = Field(description="The question the model was asked")
    padded: bool | None = Field(None, description="Coordinates only: a window ran off a contig end (N added)")
    warnings: list[str] = Field(default_factory=list, description="Notes on the input (padding, IUPAC codes, ...)")


class LabelScores(BaseModel):
    label: str = Field(description="The most probable label")
    probabilities: list[LabelProbability] = Field(description="All 37 labels, most probable first")
    question: str = Field(description="The question the labels were scored for")
    padded: bool | None = None
    warnings: list[str] = Field(default_factory=list)


class LabelShift(BaseModel):
    label: str
    delta_p: float = Field(description="p with the variant minus p with the reference in its place")


class ContrastEvidence(BaseModel):
    label: str = Field(description="The label the contrast is read for (label scoring's most probable)")
    p_variant: float = Field(description="Its probability with the variant")
    p_reference: float = Field(description="Its probability with the reference window in the variant's place")
    delta_p: float = Field(description="p_variant - p_reference: how much the variant itself moves the answer")
    reference_label: str = Field(description="The label the reference alone scores highest")
    movers: list[LabelShift] = Field(description="The labels whose probability changed most, largest |change| first")


class IsmMap(BaseModel):
    label: str = Field(description="The label whose log-probability is tracked (label scoring's most probable)")
    log_p: float = Field(description="Its log-probability with the unmutated variant window")
    offsets: list[int] = Field(description="Positions relative to the variant (0: the variant base of an SNV, the "
                                           "allele start of an indel)")
    variant_bases: str = Field(description="The variant window's base at each offset")
    bases: str = Field(description="The column order of `delta`: ACGT")
    delta: list[list[float | None]] = Field(description="Per offset, per base: change of log p(label) when the "
                                                        "variant window carries that base there (null: the base "
                                                        "already there)")
    variant_kind: str


class Attribution(BaseModel):
    method: AttributionMethod = Field(description="How the evidence was computed")
    question: str
    contrast: ContrastEvidence | None = Field(None, description="method 'contrast': ref-vs-alt label scoring")
    ism: IsmMap | None = Field(None, description="method 'ism': in-silico mutagenesis map around the variant")
    padded: bool | None = None
    warnings: list[str] = Field(default_factory=list)


class VcfRecordResult(BaseModel):
    record: str = Field(description="LINE:ALT_NUMBER in the VCF as run (multi-allelic lines give one per ALT)")
    line: int
    id: str | None = None
    chrom: str | None = None
    pos: int | None = None
    ref: str | None = None
    alt: str | None = None
    gene: str | None = None
    label: str | None = Field(None, description="The answer (None when the record has an error)")
    probability: float | None = None
    top3: list[LabelProbability] = Field(default_factory=list)
    delta_p: float | None = Field(None, description="With contrast=true: the ref-vs-alt change of the label")
    reference_label: str | None = None
    padded: bool | None = None
    warnings: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="Why this record has no answer (names line, ALT and the problem)")
    question: str | None = None
    reasoning: str | None = Field(None, description="mode 'generate' only")


class VcfResult(BaseModel):
    records: list[VcfRecordResult] | None = Field(
        description="The results, one per record (always for vcf_text; for vcf_file when it has at most "
                    "max_inline_records records, else None: read output_path)")
    n_records: int
    n_errors: int = Field(description="Records with an error (each named in its `error`); the others are answered")
    n_padded: int
    header_added: bool = Field(False, description="vcf_text had no #CHROM line: one was added (after any ## "
                                                  "lines), and record line numbers count it")
    output_path: str | None = Field(None, description="vcf_file jobs: the results TSV on the server (one line per "
                                                      "record, the columns of `dnallm explain --vcf`)")
    vcf_output_path: str | None = Field(None, description="vcf_file jobs with vcf_out: the input VCF with DNALLM_* "
                                                          "INFO fields")
    seconds: float


class ModeAccuracy(BaseModel):
    mode: str = Field(description="score (label scoring) or generate (reasoning, then the answer)")
    accuracy: float
    ci_low: float | None = Field(None, description="95 % Wilson interval")
    ci_high: float | None = None
    macro_f1: float | None = None


class Evaluation(BaseModel):
    split: str = Field(description="test, hard-test (no pathway context in the question), grouped-test, ...")
    n: int | None
    modes: list[ModeAccuracy]
    rows_with_variant_in_train: int | None = None
    baselines_trained_on: str | None = None
    generate_decoding: str | None = None


class ModelInfo(BaseModel):
    checkpoint: str
    encoder: dict = Field(description="The frozen DNA encoder: type, name or path, layer, window")
    text_model: dict = Field(description="The language model the DNA is spliced into (LoRA merged)")
    projector: dict
    lora: dict
    answer_forms_trained: list[str]
    labels: int
    data: str = Field(description="What the model was trained on")
    training: dict | None = Field(description="The SFT run (train_summary.json), None when the checkpoint has none")
    evaluations: list[Evaluation] = Field(description="Measured accuracy per split, from the eval folder next to "
                                                      "the checkpoint; empty when it was never evaluated")
    note: str


class LabelList(BaseModel):
    labels: list[str] = Field(description="The 37 KEGG disease labels, in the model's fixed order")


class ServerInputs(BaseModel):
    genomes: list[str] = Field(description="Genome FASTA names for chrom/pos/ref/alt input (`genome`)")
    vcf_files: list[str] = Field(description="VCF file names explain_vcf accepts as `vcf_file`")
    max_inline_records: int = Field(description="The most records explain_vcf answers from vcf_text")
    max_new_tokens: int = Field(description="The server's thinking budget (the most a call may ask for)")
    concurrency: int = Field(description="Model calls served at once; the rest wait in arrival order")
