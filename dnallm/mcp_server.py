"""The MCP server behind `dnallm mcp`: dnallm's API as tools that LLM agents call through the Model Context
Protocol, on the official `mcp` SDK (`MCPServer`, FastMCP's name since mcp 2).

- Transports: stdio (the default: the MCP client starts `dnallm mcp` itself) or streamable HTTP (`--http`, at
  http://HOST:PORT/mcp; loopback unless `--allow-remote`).
- One model, loaded when the server is built. Tools call the library functions the CLI calls in worker threads,
  at most `concurrency` at once; the rest wait in arrival order (`serving.FifoSlots`). A VCF job holds a slot per
  model batch, not for the whole file, so quick calls are not stuck behind it.
- A caller never names a path: genomes by file name from the operator's allow-list (`--fasta`, `--genome-dir`),
  VCF files by name from `--vcf-dir`, job results only into `--jobs-dir` (dnallm.serving).
- Errors a caller can act on (bad bases, REF mismatch, unknown genome, too many inline records) come back as MCP
  tool errors (isError) with the library's message; in a batch, a bad record only gets its own `error`.
"""

import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import anyio.from_thread
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

import dnallm
from dnallm import inference
from dnallm.labels import KEGG_LABELS
from dnallm.mcp_schemas import (MAX_VCF_TEXT, Alt, Attribution, AttributionMethod, Chrom, ContrastEvidence, Gene,
                                Genome, IsmMap, LabelList, LabelProbability, LabelScores, LabelShift, MaxNewTokens, ModelInfo,
                                Pos, Question, Ref, ReferenceSequence, ServerInputs, VariantExplanation,
                                VariantSequence, VcfRecordResult, VcfResult)
from dnallm.model_card import checkpoint_card
from dnallm.questions import build_question
from dnallm.serving import (VCF_SUFFIXES, FifoSlots, StartError, allowed_folder, allowed_genomes, file_in_folder,
                            files_in_folder, genome_path)
from dnallm.variants import explain_file, read_results, read_vcf

INSTRUCTIONS = """\
dnallm answers questions about human genetic variants: a DNA encoder reads the reference and variant 1024 bp
windows, a language model reasons and answers with one of 37 KEGG disease labels. Start with model_info (what the
model is, what it was trained on, how accurate it was measured to be) and list_inputs (the genome and VCF file
names this server may read). A variant is given either as two sequences or as chrom/pos/ref/alt in one of the
server's genomes. score_labels is fast (probabilities only); explain_variant adds the model's reasoning (slower);
attribute_variant says whether the variant itself moved the answer; explain_vcf answers many variants at once."""

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


@dataclass
class ServerSettings:
    """What the operator set at start (`make_settings`)."""

    model: str
    genomes: dict[str, Path] = field(default_factory=dict)
    vcf_dir: Path | None = None
    jobs_dir: Path | None = None
    max_inline: int = 20
    concurrency: int = 1
    max_new_tokens: int = 1024
    batch_size: int = 8
    dtype: str = "auto"


def _variant_input(settings: ServerSettings, question, reference_sequence, variant_sequence, chrom, pos, ref, alt,
                   genome, gene) -> tuple[str, dict]:
    """(question, the variant's keyword arguments for inference.explain_variant): sequences, or coordinates with the
    allow-listed FASTA the caller named. Checked here, before the request queues, with the tool's own names."""
    seqs = {"reference_sequence": reference_sequence, "variant_sequence": variant_sequence}
    coords = {"chrom": chrom, "pos": pos, "ref": ref, "alt": alt}
    by_coords = genome is not None or any(v is not None for v in coords.values())
    if by_coords and any(v is not None for v in seqs.values()):
        raise ValueError("give reference_sequence and variant_sequence, or chrom, pos, ref and alt (with genome), "
                         "not both")
    given = coords if by_coords else seqs
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}: give reference_sequence and variant_sequence, or chrom, "
                         "pos, ref and alt (with genome)")
    kwargs = dict(coords, fasta=genome_path(genome, settings.genomes)) if by_coords else seqs
    # the library's own default (inference.explain_variant builds the same); built here to report it back
    return question or build_question(gene=gene, chrom=chrom), kwargs


def _budget(settings: ServerSettings, max_new_tokens: int | None) -> int:
    if max_new_tokens is not None and max_new_tokens > settings.max_new_tokens:
        raise ValueError(f"max_new_tokens {max_new_tokens} is above this server's limit of {settings.max_new_tokens}")
    return settings.max_new_tokens if max_new_tokens is None else max_new_tokens


def _probabilities(pairs) -> list[LabelProbability]:
    return [LabelProbability(label=label, probability=p) for label, p in pairs]


def _record(row: dict) -> VcfRecordResult:
    """One row of the explain output TSV (all strings, "" for empty) as the tool's record; pydantic converts the
    numbers and padded (true/false)."""
    top3 = [label_p.rpartition(":") for label_p in row["top3"].split("|")] if row["top3"] else []
    return VcfRecordResult(**{**{name: row[name] or None for name in VcfRecordResult.model_fields},
                              "top3": _probabilities((label, float(p)) for label, _, p in top3),
                              "warnings": row["warnings"].split(" | ") if row["warnings"] else []})


VCF_HEADER = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"


def _with_header(vcf_text: str) -> tuple[str, bool]:
    """Inline VCF with its #CHROM line: agents often send the data lines alone. Added after any ## meta lines (a
    meta line after #CHROM is malformed); line numbers in record keys and errors count it."""
    lines = vcf_text.splitlines()
    if any(line.startswith("#CHROM") for line in lines):
        return vcf_text, False
    meta = 0  # after the last ## line before the first data line (blank and # comment lines may come between)
    for i, line in enumerate(lines):
        if line.startswith("##"):
            meta = i + 1
        elif line.strip() and not line.startswith("#"):
            break
    return "\n".join(lines[:meta] + [VCF_HEADER] + lines[meta:]) + "\n", True


async def _count_records(path: Path) -> int:
    """Records (one per ALT) in a VCF, read in a worker thread (a job's file can be large); a file that is not a
    VCF is the caller's error."""
    return await _tool_errors(anyio.to_thread.run_sync(lambda: sum(1 for _ in read_vcf(path))))


def build_server(settings: ServerSettings, model=None) -> MCPServer:
    """The MCP server for one checkpoint, its model loaded now (or `model`, a checkpoint already loaded)."""
    model = model or inference.load_model(str(Path(settings.model).resolve()), dtype=settings.dtype)
    card = checkpoint_card(Path(settings.model).resolve(), model.config)
    slots = FifoSlots(settings.concurrency)
    server = MCPServer("dnallm", version=dnallm.__version__, instructions=INSTRUCTIONS)

    async def in_slot(work):
        """Run `work` in a worker thread once a slot is free; its ValueError / OSError become the tool error the
        caller sees (anything else is a server fault: the SDK reports it without its text)."""
        def run():
            with slots.slot():
                return work()
        return await _tool_errors(anyio.to_thread.run_sync(run))

    def explain(question, kwargs, **options) -> inference.Explanation:
        return inference.explain_variant(question, model=model, **kwargs, **options)

    def variant_input(*args) -> tuple[str, dict]:
        return _checked(_variant_input, settings, *args)

    async def run_vcf(ctx: Context, source: Path, fasta: Path, out: Path, vcf_out: Path | None, options: dict,
                      total: int, keep: int | None = None) -> VcfResult:
        """explain_file on `source` into `out`, reporting progress to the caller; the records come back inline
        when there are at most `keep` (all when None)."""
        await ctx.report_progress(0, total, f"0/{total} records")

        def progress(done: int, total: int) -> None:  # called in the worker thread, after each record
            try:
                anyio.from_thread.run(ctx.report_progress, done, total, f"{done}/{total} records")
            except Exception:  # best effort: a client that went away must not cost the job its output file
                pass

        def work():
            return explain_file(source, fasta, model, out, fmt="vcf", vcf_out=vcf_out, on_progress=progress,
                                **options)
        # no slot for the whole job: explain_file takes one per model batch (batch_lock)
        summary = await _tool_errors(anyio.to_thread.run_sync(work))
        rows = [_record(row) for row in read_results(out)]
        inline = keep is None or len(rows) <= keep
        return VcfResult(records=rows if inline else None, n_records=len(rows), n_errors=summary["errors"],
                         n_padded=summary["padded"], output_path=None if keep is None else str(out),
                         vcf_output_path=None if vcf_out is None else str(vcf_out), seconds=summary["seconds"])

    @server.tool(annotations=READ_ONLY)
    async def explain_variant(question: Question = None, reference_sequence: ReferenceSequence = None,
                              variant_sequence: VariantSequence = None, chrom: Chrom = None, pos: Pos = None,
                              ref: Ref = None, alt: Alt = None, genome: Genome = None, gene: Gene = None,
                              max_new_tokens: MaxNewTokens = None,
                              top_k: Annotated[int, Field(ge=1, le=len(KEGG_LABELS),
                                                          description="How many top labels to return")] = 5,
                              ) -> VariantExplanation:
        """Ask the model about one variant and get its reasoning and answer: the disease label it writes (one of
        37), the reasoning before it, and the top-k label probabilities. Slow (the model writes its reasoning);
        use score_labels when only the label probabilities are needed. The variant is either two sequences
        (reference_sequence + variant_sequence) or coordinates (chrom, pos, ref, alt) in one of the server's
        genomes (list_inputs), where REF is checked against the genome."""
        q, kwargs = variant_input(question, reference_sequence, variant_sequence, chrom, pos, ref, alt, genome, gene)
        budget = _checked(_budget, settings, max_new_tokens)

        def work():
            r = explain(q, kwargs, mode="generate", max_new_tokens=budget, k=top_k)
            return VariantExplanation(label=r.label, reasoning=r.reasoning, top_k=_probabilities(r.top_k),
                                      question=q, padded=r.padded, warnings=r.warnings or [])
        return await in_slot(work)

    @server.tool(annotations=READ_ONLY)
    async def score_labels(question: Question = None, reference_sequence: ReferenceSequence = None,
                           variant_sequence: VariantSequence = None, chrom: Chrom = None, pos: Pos = None,
                           ref: Ref = None, alt: Alt = None, genome: Genome = None, gene: Gene = None) -> LabelScores:
        """The probability of each of the 37 disease labels for one variant, without reasoning (fast: one
        scoring pass). Use it to rank or compare labels, or to screen variants before asking explain_variant
        for the reasoning. Same variant input as explain_variant."""
        q, kwargs = variant_input(question, reference_sequence, variant_sequence, chrom, pos, ref, alt, genome, gene)

        def work():
            r = explain(q, kwargs, mode="score", k=len(KEGG_LABELS))
            return LabelScores(label=r.label, probabilities=_probabilities(r.top_k), question=q, padded=r.padded,
                               warnings=r.warnings or [])
        return await in_slot(work)

    @server.tool(annotations=READ_ONLY)
    async def attribute_variant(question: Question = None, reference_sequence: ReferenceSequence = None,
                                variant_sequence: VariantSequence = None, chrom: Chrom = None, pos: Pos = None,
                                ref: Ref = None, alt: Alt = None, genome: Genome = None, gene: Gene = None,
                                method: Annotated[AttributionMethod, Field(
                                    description="'contrast': score the labels again with the reference window in "
                                                "the variant's place; 'ism': mutate every base within 32 bp of "
                                                "the variant (195 scorings, seconds on CPU)")] = "contrast") -> Attribution:
        """Evidence for an answer: did the variant itself move the model? 'contrast' scores the 37 labels with
        the variant and again with the reference in its place, and reports the top label's probability both
        ways (delta_p), the label the reference alone would get, and the labels that moved most. A delta_p near
        0 means the answer comes from the locus (the region), not from the allele. 'ism' maps which bases
        around the variant drive the top label: for each position within 32 bp and each other base, the change of
        its log-probability. Same variant input as explain_variant; contrast costs two scoring passes, ism ~200."""
        q, kwargs = variant_input(question, reference_sequence, variant_sequence, chrom, pos, ref, alt, genome, gene)

        def work():  # the ref-vs-alt contrast (dnallm.evidence) or the in-silico mutagenesis map (dnallm.ism)
            r = explain(q, kwargs, mode="score", contrast=method == "contrast", attribution=method == "ism")
            c, m = r.contrast, r.attribution
            evidence = None if method != "contrast" else ContrastEvidence(
                label=c["label"], p_variant=c["p_variant"], p_reference=c["p_reference"], delta_p=c["delta_p"],
                reference_label=c["reference_label"],
                movers=[LabelShift(label=label, delta_p=d) for label, d in c["movers"]])
            ism = IsmMap(**{k: m[k] for k in IsmMap.model_fields}) if method == "ism" else None
            return Attribution(method=method, question=q, contrast=evidence, ism=ism, padded=r.padded,
                               warnings=r.warnings or [])
        return await in_slot(work)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False))
    async def explain_vcf(ctx: Context,
                          vcf_text: Annotated[str | None, Field(
                              description="VCF content inline (tab-separated columns; a missing #CHROM header line "
                                          "is added after any ## lines, and record line numbers count it), at "
                                          "most max_inline_records records (list_inputs).",
                              max_length=MAX_VCF_TEXT)] = None,
                          vcf_file: Annotated[str | None, Field(
                              description="Or: the name of a VCF file in the server's VCF folder (list_inputs), "
                                          "run as a job of any size.", max_length=500)] = None,
                          genome: Genome = None,
                          mode: Annotated[Literal["score", "generate"], Field(
                              description="score: labels only (fast); generate: reasoning too (slow)")] = "score",
                          max_new_tokens: MaxNewTokens = None,
                          contrast: Annotated[bool, Field(description="Add the ref-vs-alt delta_p per record")] = False,
                          vcf_out: Annotated[bool, Field(description="vcf_file jobs: also write the input VCF with "
                                                                     "DNALLM_* INFO fields")] = False,
                          ) -> VcfResult:
        """Explain every variant of a VCF (one result per ALT), REF checked against the genome. Small batches
        inline (vcf_text, at most max_inline_records records): the results come back in the reply. Larger
        files: put them in the server's VCF folder and pass vcf_file; the job reports progress notifications
        (records done / total) and returns the path of its results TSV on the server. A bad record (REF
        mismatch, unknown contig, malformed line) gets its own `error` and the others are still answered."""
        if (vcf_text is None) == (vcf_file is None):
            raise ToolError("give vcf_text (inline records) or vcf_file (a file name from list_inputs), not both")
        fasta = _checked(genome_path, genome, settings.genomes)
        budget = _checked(_budget, settings, max_new_tokens)
        options = dict(mode=mode, max_new_tokens=budget, contrast=contrast, batch_size=settings.batch_size,
                       progress=False, batch_lock=slots.slot)
        if vcf_text is not None:
            if vcf_out:
                raise ToolError("vcf_out is for vcf_file jobs (the annotated VCF is written on the server)")
            with tempfile.TemporaryDirectory(prefix="dnallm-mcp-") as tmp:
                text, header_added = _with_header(vcf_text)
                source = Path(tmp) / "inline.vcf"
                source.write_text(text)
                n = await _count_records(source)
                if n > settings.max_inline:
                    raise ToolError(f"the inline VCF has {n} records (one per ALT); this server answers at most "
                                    f"{settings.max_inline} inline: put the file in the server's VCF folder and "
                                    "pass vcf_file (a job with progress)")
                result = await run_vcf(ctx, source, fasta, Path(tmp) / "out.tsv", None, options, n)
                result.header_added = header_added
                return result
        if settings.vcf_dir is None or settings.jobs_dir is None:
            raise ToolError("this server takes no VCF files (started without --vcf-dir); give vcf_text instead")
        source = _checked(file_in_folder, vcf_file, settings.vcf_dir, VCF_SUFFIXES, "VCF file")
        n = await _count_records(source)
        job = f"{source.name.removesuffix('.gz').removesuffix('.vcf')}.{time.strftime('%Y%m%d-%H%M%S')}-" \
              f"{uuid.uuid4().hex[:6]}"
        out = settings.jobs_dir / f"{job}.tsv"
        vcf_out_path = settings.jobs_dir / f"{job}.vcf.gz" if vcf_out else None
        return await run_vcf(ctx, source, fasta, out, vcf_out_path, options, n, keep=settings.max_inline)

    @server.tool(annotations=READ_ONLY)
    def model_info() -> ModelInfo:
        """What answers: the DNA encoder and the language model, the training data and run, and the accuracy
        measured on each evaluation split (with n and a 95 % interval; test shares variants with training, the
        hard- and grouped- splits are the harder checks). Call it first to know how far to trust the answers."""
        return ModelInfo(**card)

    @server.tool(annotations=READ_ONLY)
    def list_labels() -> LabelList:
        """The 37 KEGG disease labels the model can answer with (every answer is one of them)."""
        return LabelList(labels=list(KEGG_LABELS))

    @server.tool(annotations=READ_ONLY)
    def list_inputs() -> ServerInputs:
        """What this server may read and its limits: the genome names for chrom/pos/ref/alt input, the VCF file
        names explain_vcf accepts, the inline record limit and the thinking budget."""
        return ServerInputs(genomes=list(settings.genomes), vcf_files=files_in_folder(settings.vcf_dir, VCF_SUFFIXES),
                            max_inline_records=settings.max_inline, max_new_tokens=settings.max_new_tokens,
                            concurrency=settings.concurrency)

    return server


def _checked(fn, *args):
    """fn(*args), with its ValueError (a caller's mistake) raised as the tool error the caller sees."""
    try:
        return fn(*args)
    except ValueError as e:
        raise ToolError(str(e)) from None


async def _tool_errors(awaitable):
    try:
        return await awaitable
    except (ValueError, OSError, ImportError) as e:  # bad bases, REF mismatch, a VCF from another build, ...
        raise ToolError(str(e)) from None


def make_settings(model: str | Path, fasta=(), genome_dir: str | Path | None = None,
                  vcf_dir: str | Path | None = None, jobs_dir: str | Path | None = None, max_inline: int = 20,
                  concurrency: int = 1, max_new_tokens: int = 1024, batch_size: int = 8,
                  dtype: str = "auto") -> ServerSettings:
    """The operator's options, checked before any model loads (StartError says what to change). Genome files are
    indexed now (serving.allowed_genomes); `jobs_dir` is created."""
    for option, value in (("--max-inline", max_inline), ("--max-new-tokens", max_new_tokens),
                          ("--batch-size", batch_size), ("--concurrency", concurrency)):
        if value < 1:
            raise StartError(f"{option} must be >= 1, got {value}")
    if not Path(model).is_dir():
        raise StartError(f"--model {model} is not a checkpoint folder (train one with `dnallm quickstart`)")
    if vcf_dir is not None and jobs_dir is None:
        raise StartError("--vcf-dir needs --jobs-dir: the folder where explain_vcf jobs write their results")
    return ServerSettings(
        model=str(Path(model).resolve()), genomes=allowed_genomes(fasta, genome_dir),
        vcf_dir=None if vcf_dir is None else allowed_folder(vcf_dir, "--vcf-dir"),
        jobs_dir=None if jobs_dir is None else allowed_folder(jobs_dir, "--jobs-dir", create=True),
        max_inline=max_inline, concurrency=concurrency, max_new_tokens=max_new_tokens, batch_size=batch_size,
        dtype=dtype)


def serve(server: MCPServer, http: bool = False, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve: stdio, or streamable HTTP at http://HOST:PORT/mcp. The caller checked the host (serving.check_host)."""
    if http:
        server.run("streamable-http", host=host, port=port)
    else:
        server.run()
