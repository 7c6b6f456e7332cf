"""Inference shared by the API, the CLI, the evaluation and the app: one way to ask the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import DynamicCache, LogitsProcessorList, StaticCache

from dnallm.data import WINDOW_SIZE, centred_windows, check_bases, split_kegg_sequences
from dnallm.labels import KEGG_LABELS
from dnallm.modeling import CACHE_KWARG, DNALLMForConditionalGeneration, ThinkOpensOnce  # noqa: F401 (re-export)
from dnallm.parsing import parse_answer, split_reasoning
from dnallm.questions import build_question


def prepare_windows(reference_sequence: str, variant_sequence: str, window: int = WINDOW_SIZE,
                    where: str = "input") -> tuple[str, str]:
    """Accept pre-cut windows (exactly `window` bp each) or KEGG-layout sequences (2000 bp flanks)."""
    ref, var = reference_sequence.strip().upper(), variant_sequence.strip().upper()
    try:
        check_bases(ref, "reference sequence")
        check_bases(var, "variant sequence")
        if len(ref) == window and len(var) == window:
            return ref, var
        if min(len(ref), len(var)) >= 4000:
            p = split_kegg_sequences(ref, var)
            # Longer sequences with other flanks also split: a substitution centred in 2500 bp flanks becomes a
            # 1001 bp "allele" whose windows differ at index 1012, not 512. A KEGG substitution differs at its
            # first and last base (every one of the shipped 1,142), so one that does not is another layout.
            same_length = len(p.ref_allele) == len(p.alt_allele)
            if same_length and (p.ref_allele[:1] == p.alt_allele[:1] or p.ref_allele[-1:] == p.alt_allele[-1:]):
                raise ValueError(f"the sequences ({len(ref)} / {len(var)} bp) are not in the KEGG layout: with 2000 bp "
                                 f"flanks they hold a {len(p.ref_allele)} bp substitution that does not differ at its "
                                 "first and last base; give two windows centred on the variant")
            windows = centred_windows(p.upstream, p.ref_allele, p.alt_allele, p.downstream, window)
            if windows[0] == windows[1]:
                raise ValueError(f"the sequences differ only beyond the {window} bp windows cut from them (KEGG "
                                 "layout, 2000 bp flanks): the model would not see the variant")
            return windows
        raise ValueError(f"wrong window length: reference {len(ref)} bp, variant {len(var)} bp; give two "
                         f"{window} bp windows centred on the variant, or KEGG-layout sequences (2000 bp flanks)")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """Inference dtype by name: "auto" (or None) = bfloat16 on CUDA, float32 on the CPU (where bf16 matmuls
    are no faster on most CPUs and cost precision)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return getattr(torch, dtype)


@lru_cache(maxsize=2)
def load_model(path: str, device: str | None = None, dtype: str | torch.dtype | None = "auto",
               liger: bool = False) -> DNALLMForConditionalGeneration:
    """Load a checkpoint once per process (the API, CLI and app share it), in `dtype` (see resolve_dtype).

    liger=True (CUDA, the `liger` extra): liger-kernel's RMSNorm/SwiGLU/RoPE kernels in the merged LM (label
    scoring on an H200: 138,001 -> 160,485 variants/h, docs/benchmarks.md)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if liger and not str(device).startswith("cuda"):  # apply_liger_kernels checks too; this fails before the load
        raise ValueError(f"liger kernels are Triton kernels and need a CUDA device, not {device}")
    model = DNALLMForConditionalGeneration.from_pretrained(path, dtype=resolve_dtype(dtype, device))
    model.merge_lora()  # inference only: LoRA folded into the weights, no adapter kernels in every layer
    model.to(device).eval()
    if liger:
        from dnallm.losses import apply_liger_kernels

        apply_liger_kernels(model.language_model)
    return model


FORCED_ANSWER = "\n</think>\n\nAnswer:"    # appended when the thinking budget runs out
AFTER_REASONING = "\n\nAnswer:"            # appended after a reasoning the model closed itself (constrained mode)


def _cut_after_first(row: list[int], stops: set[int]) -> list[int]:
    """`row` up to and including its first stop token (all of it if none): what follows is padding."""
    return row[: next((k for k, t in enumerate(row) if t in stops), len(row) - 1) + 1]


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


def _think_once(tok, prompt_length: int) -> LogitsProcessorList:
    return LogitsProcessorList([ThinkOpensOnce(tok.convert_tokens_to_ids("<think>"), prompt_length)])


@torch.no_grad()
def generate_answers(model: DNALLMForConditionalGeneration, questions: list[str], windows: list[tuple[str, str]],
                     batch_size: int = 16, max_new_tokens: int = 1024, max_answer_tokens: int = 24,
                     progress=None, static_cache: bool | None = None, constrained: bool = True) -> list[str]:
    """Greedy, deterministic answers (reasoning + answer line) for many questions, batched.

    constrained=True (default): the reasoning is decoded until the model closes it (`</think>`) or the budget ends;
    then `Answer:` follows and the answer is the most likely of the 37 labels as a continuation
    (`dnallm.scoring.continuation_label_logprobs`: exact, one packed pass over the label-token trie).
    constrained=False: free greedy decoding of the answer line, read by the strict parser (it can be invalid).

    Thinking budget (Qwen3-style budget forcing): `max_new_tokens` bounds the reasoning; one not ended by then
    gets `</think>` and `Answer:` appended and the model writes the label (constrained, or in at most
    `max_answer_tokens` free greedy tokens). The returned text contains the appended suffix, so a reader (and
    `parse_answer`) sees exactly what the model was given and wrote. The answer continues the reasoning's KV cache
    (`_continuation`): prompt and reasoning are not run a second time.

    Batches are formed longest-question-first (`length_order`); answers come back in input order.
    static_cache=True decodes with a preallocated KV cache and, on CUDA, a compiled step (prompts then padded to a
    multiple of 128 tokens, so a job compiles for a few shapes). The first compilation takes about a minute, so the
    default (None) turns it on where it was measured to pay: always on the CPU (nothing compiles; 88 vs 123 s on the
    test split), on CUDA for batches of >= 64 in jobs of three or more batches (docs/benchmarks.md: 5,407 vs 4,366
    variants/h, H100). All static caches of a job have one length (`_JobCache`), so the step compiles once per job;
    the answer runs on copies of the cache (`_answer_tails`), so no decoding step attends over room for the answer.
    """
    from dnallm.scoring import LabelTree

    proc = model.processor
    tok = proc.tokenizer
    tree = LabelTree(tok, model.device) if constrained else None
    if static_cache is None:
        static_cache = model.device.type == "cpu" or (
            model.device.type == "cuda" and batch_size >= 64 and len(questions) > 2 * batch_size)
    compiled = static_cache and model.device.type == "cuda"  # only CUDA compiles, and wants few shapes
    job_cache = _JobCache(model.config.text_config, one_length=compiled) if static_cache else None
    texts: list[str | None] = [None] * len(questions)
    order = proc.length_order(questions)
    for i in range(0, len(questions), batch_size):
        idx = order[i:i + batch_size]
        batch = proc([proc.prompt(questions[j]) for j in idx], [list(windows[j]) for j in idx], padding_side="left",
                     pad_to_multiple_of=128 if compiled else None)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask")
        # Our own cache object, so that the answer continues from it after the reasoning (no recomputation).
        cache = (job_cache.get(input_ids.shape[0], input_ids.shape[1] + max_new_tokens) if static_cache
                 else DynamicCache(config=model.config.text_config))
        rows = _decode_batch(model, input_ids, attention_mask, batch, cache, max_new_tokens, tree, max_answer_tokens,
                             segment=max_new_tokens if compiled or _JobCache.reuse else COMPACT_EVERY)
        for j, text in zip(idx, tok.batch_decode(rows, skip_special_tokens=True)):
            texts[j] = text
        if progress:
            progress(min(i + batch_size, len(questions)))
    return texts


# CPU decoding drops the rows that have finished every COMPACT_EVERY tokens (`_decode_batch`), instead of running a
# batch at full width until its longest row ends: the tiny default's hard-test generation 34.0 -> 18.5 s, identical
# texts (docs/benchmarks.md, "Generation that drops finished rows"). A compiled (CUDA) step keeps one shape, so it
# decodes in one segment.
COMPACT_EVERY = 32


def _stop_tokens(model, constrained: bool) -> tuple[set[int], set[int], int]:
    """(stops, ends, think_end). A row's reasoning is cut at its first stop: constrained decoding stops at `</think>`
    too (the label then comes from the trie); free decoding lets the model write its own answer line after it."""
    ends = set(model.processor.end_token_ids)
    think_end = model.processor.tokenizer.convert_tokens_to_ids("</think>")
    return (ends | {think_end} if constrained else ends), ends, think_end


def _finish_row(row: list[int], ends: set[int], think_end: int, constrained: bool) -> tuple[list[int], str | None]:
    """A stopped row (cut at its first stop): the tokens it keeps, and the text dnallm appends before the answer,
    AFTER_REASONING after a think block the model closed (constrained), else FORCED_ANSWER (the budget ran out or the
    block never closed); None when free decoding ended the turn itself (its own answer line stands). The one rule
    for `generate_answers` and `stream_answer`."""
    if not constrained:
        return row, None if row and row[-1] in ends else FORCED_ANSWER
    suffix = AFTER_REASONING if row and row[-1] == think_end else FORCED_ANSWER
    return (row[:-1] if row and row[-1] in ends else row), suffix


def _decode_batch(model, input_ids, attention_mask, dna: dict, cache, max_new_tokens: int, tree,
                  max_answer_tokens: int, segment: int) -> list[list[int]]:
    """Each row's generated tokens: reasoning (cut at its first stop), then, where it continues, the answer suffix
    and the answer (`_answer_tails`; constrained when `tree`, the label trie, is given). Decodes `segment` tokens at
    a time: after each segment the rows that stopped (or spent the budget) get their answer from the cache as it
    is, and the cache keeps only the other rows, so a finished row costs nothing more. Greedy decoding of a row does
    not depend on the other rows: the same tokens as one `generate` over the whole budget (tests/test_model.py)."""
    tok, constrained = model.processor.tokenizer, tree is not None
    stops, ends, think_end = _stop_tokens(model, constrained)
    eos_ids = [*model.processor.end_token_ids, *([think_end] if constrained else [])]
    suffix_ids = {text: tok(text, add_special_tokens=False)["input_ids"] for text in (AFTER_REASONING, FORCED_ANSWER)}
    out: list[list[int] | None] = [None] * input_ids.shape[0]
    active = list(range(input_ids.shape[0]))                # batch rows still decoding, in cache-row order
    generated = input_ids.new_zeros((input_ids.shape[0], 0))  # their tokens so far
    while active:
        ids = torch.cat([input_ids[active], generated], 1)
        mask = torch.cat([attention_mask[active], attention_mask.new_ones(generated.shape)], 1)
        steps = min(segment, max_new_tokens - generated.shape[1])
        # The DNA goes in with the prompt only; a later segment continues the cache (generate feeds the ids after
        # the cached positions: the last token of the previous segment).
        new = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, eos_token_id=eos_ids,
                             logits_processor=_think_once(tok, input_ids.shape[1]),
                             **{CACHE_KWARG: cache}, **(dna if generated.shape[1] == 0 else {}))[:, ids.shape[1]:]
        generated = torch.cat([generated, new], 1)
        # Cut each row at its first stop: what follows is padding (the pad token may itself be an end token).
        rows = [_cut_after_first(row, stops) for row in generated.tolist()]
        budget_spent = generated.shape[1] >= max_new_tokens
        done = [j for j, row in enumerate(rows) if budget_spent or (row and row[-1] in stops)]
        suffixes = {}
        for j in done:
            rows[j], suffix = _finish_row(rows[j], ends, think_end, constrained)
            if suffix is not None:
                suffixes[j] = suffix_ids[suffix]
        unfinished = list(suffixes)
        if unfinished and (constrained or max_answer_tokens > 0):
            batch_rows = [active[j] for j in unfinished]
            tails = _answer_tails(model, input_ids[batch_rows], attention_mask[batch_rows], generated[unfinished],
                                  [rows[j] for j in unfinished], [suffixes[j] for j in unfinished], cache, tree,
                                  max_answer_tokens, cache_rows=unfinished)
            for j, tail in zip(unfinished, tails):
                rows[j] = rows[j] + suffixes[j] + tail
        for j in done:
            out[active[j]] = rows[j]
        finished = set(done)
        keep = [j for j in range(len(active)) if j not in finished]
        if keep and done:
            _keep_cache_rows(cache, torch.tensor(keep, device=input_ids.device))
        active, generated = [active[j] for j in keep], generated[keep]
    return out


def _keep_cache_rows(cache, rows: torch.Tensor) -> None:
    """Keep only `rows` of the cache, in place. Ours because transformers' `batch_select_indices` has no static
    layer version (5.24): a static layer's tensors are replaced by their selected rows (copies), the length kept."""
    for layer in cache.layers:
        if layer.is_initialized:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]


class _JobCache:
    """The static KV caches of one `generate_answers` job. one_length (compiled CUDA jobs): every batch's cache has
    the SAME length, the widest prompt seen (the first batch's: longest first) + the reasoning budget, so the
    compiled step keeps one shape and compiles once, as transformers' `cache_implementation="static"` does. A cache
    sized per batch recompiled the step at the second batch (docs/benchmarks.md, "GPU generation regression found
    and fixed"). one_length=False (the CPU, nothing compiles): each batch its own length, so short prompts do not
    attend over the longest batch's positions. `reuse = True` resets one cache object in place instead: the same
    speed at 18 GiB more peak memory on an H200, so it is off. No room is kept for the answer (`_answer_tails`)."""

    reuse = False

    def __init__(self, config, one_length: bool = True):
        self.config, self.one_length, self.cache, self.rows, self.length = config, one_length, None, 0, 0

    def get(self, rows: int, length: int) -> StaticCache:
        if self.one_length or self.reuse:  # one cache object for the job needs one length
            length = max(length, self.length)
        if self.reuse and self.cache is not None and (rows, length) == (self.rows, self.length):
            self.cache.reset()  # in place: the same tensors, so the compiled step replays its CUDA graphs
        else:
            # allocated at its first write (the prefill), when the caller holds the old one no more
            self.cache = StaticCache(config=self.config, max_cache_len=length)
        self.rows, self.length = rows, length
        return self.cache


# Rows per answer pass: its cache copy (~3.5 GiB for 16 rows of 1,472 positions in the Qwen3-4B layout) and the
# tree's logits stay small next to the reasoning's cache, which is still held during the answer.
TAIL_ROWS = 16


def _cache_rows(cache, rows: slice | torch.Tensor, length: int, config) -> DynamicCache:
    """A dynamic cache holding `rows` of `cache`'s first `length` positions. The answer's tokens then go into it
    (a copy on their first write) and never into `cache`, which keeps only prompt + reasoning."""
    part = DynamicCache(config=config)
    for k, layer in enumerate(cache.layers):
        part.update(layer.keys[rows, :, :length], layer.values[rows, :, :length], k)
    return part


def _check_cache_length(cache, length: int) -> int:
    """`length` (prompt + every generated token but the last), after checking that the cache holds that many."""
    if int(cache.get_seq_length()) != length:
        raise RuntimeError(f"the KV cache holds {int(cache.get_seq_length())} positions after generation, expected "
                           f"prompt + generated - 1 = {length} (transformers changed?)")
    return length


def _answer_tails(model, input_ids, attention_mask, generated, rows, suffixes, cache, tree, max_answer_tokens,
                  cache_rows: list[int] | None = None):
    """The answer after each row's reasoning, continuing the KV cache its generation left: [label tokens] per row.
    tree: the label trie (constrained answers); None: free greedy tokens. The rows run TAIL_ROWS at a time, each
    chunk on its own copy of its rows of the cache (`_cache_rows`), so `cache` needs no room for the answer.
    cache_rows: the cache row of each row (default: row j is cache row j)."""
    from dnallm.scoring import continuation_label_logprobs

    tok = model.processor.tokenizer
    length = _check_cache_length(cache, input_ids.shape[1] + generated.shape[1] - 1)
    tails: list[list[int]] = []
    for c in range(0, len(rows), TAIL_ROWS):
        s = slice(c, c + TAIL_ROWS)
        part = _cache_rows(cache, s if cache_rows is None else torch.tensor(cache_rows[s], device=input_ids.device),
                           length, model.config.text_config)
        ids, new_ids, mask = _continuation(model, input_ids[s], attention_mask[s], generated[s], rows[s],
                                           suffixes[s], part)
        if tree is not None:
            best = continuation_label_logprobs(model, new_ids, mask, tree, cache=part).argmax(-1).tolist()
            tails += [tok(f" {KEGG_LABELS[b]}", add_special_tokens=False)["input_ids"] for b in best]
        else:
            tails += model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_answer_tokens,
                                    logits_processor=_think_once(tok, input_ids.shape[1]),
                                    **{CACHE_KWARG: part})[:, ids.shape[1]:].tolist()
        del part  # before the next chunk's copy: one copy at a time
    return tails


def _continuation(model, input_ids, attention_mask, generated, rows, suffixes, cache):
    """Inputs that continue a generation's KV cache with each row's answer suffix: (all ids, new ids, mask).

    The cache holds the prompt and every generated token but the last. A row's reasoning (`rows[j]`, cut at its
    stop) stays visible; what it generated after that is masked out. The tokens not yet in the cache (the last
    generated one if the row kept it, then the `Answer:` suffix) are the new ids, so the answer's positions and
    context are those of recomputing prompt + reasoning + suffix from scratch, without the recomputation.
    `generate` reads the cached positions off the cache and feeds only the ids after them."""
    cached = generated.shape[1] - 1
    _check_cache_length(cache, input_ids.shape[1] + cached)
    kept = [min(len(row), cached) for row in rows]
    reasoning_mask = torch.tensor([[1] * k + [0] * (cached - k) for k in kept], device=model.device,
                                  dtype=attention_mask.dtype).view(len(rows), cached)
    new_ids, new_mask = _left_pad([row[k:] + suffix for row, k, suffix in zip(rows, kept, suffixes)],
                                  model.processor.tokenizer.pad_token_id, model.device)
    ids = torch.cat([input_ids, generated[:, :cached], new_ids], 1)
    return ids, new_ids, torch.cat([attention_mask, reasoning_mask, new_mask], 1)


@dataclass
class Explanation:
    label: str | None      # generate mode: the final Answer: line's label (None if missing/invalid);
                           # score mode: the most probable label
    reasoning: str         # the think-block text ("" in score mode)
    raw_text: str          # everything the model generated ("" in score mode)
    label_probabilities: dict[str, float]  # all 37 labels, from label scoring, summing to 1
    top_k: list[tuple[str, float]]
    # Coordinate input only (None for sequence input, and then left out of to_dict()):
    padded: bool | None = None             # True when a window ran off a contig end and was padded with N
    warnings: list[str] | None = None      # e.g. padding, IUPAC ambiguity codes in the genome window
    # With contrast=True: the answer's label with the reference fed in the variant's place (dnallm.evidence)
    contrast: dict | None = None
    # With attribution=True: the in-silico mutagenesis map of the answer's label (dnallm.ism.ism_map)
    attribution: dict | None = None
    # With encoder_dll=True: the frozen encoder's zero-shot score, variant minus reference (dnallm.evidence)
    encoder_dll: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("padded", "warnings", "contrast", "attribution", "encoder_dll"):
            if d[key] is None:
                del d[key]
        return d


def check_prompt(model, question: str, windows: tuple[str, ...], new_tokens: int = 0) -> None:
    """ValueError unless the question is plain text (`DNALLMProcessor.prompt`) and its prompt, DNA tokens included,
    plus `new_tokens` to generate fit the text model's context (`max_position_embeddings`). Run per record before
    any model work: a batch turns the error into that record's row, a server into the caller's error."""
    proc = model.processor
    prompt = proc.prompt(question)
    limit = getattr(model.config.text_config, "max_position_embeddings", None)
    if limit is None:
        return
    text = proc.expand_dna(prompt, list(windows)) if proc.include_dna and windows else prompt
    tokens = len(proc.tokenizer(text, add_special_tokens=False)["input_ids"])
    if tokens + new_tokens > limit:
        more = f" + {new_tokens} to generate" if new_tokens else ""
        raise ValueError(f"the prompt is {tokens:,} tokens{more}, beyond the text model's {limit:,}-token context")


def explain_many(model, questions: list[str], windows: list[tuple[str, str]], mode: str = "score",
                 max_new_tokens: int = 1024, k: int = 3, batch_size: int = 8, constrained: bool = True,
                 contrast: bool = False, attribution: bool = False, attribution_flank: int = 32,
                 attribution_batch_size: int = 16, encoder_dll: bool = False) -> list:
    """Explanations for many (question, windows) pairs: batched label scoring, plus batched generation in
    generate mode. `explain_variant` is this with one pair; see it for contrast, attribution (`attribution_batch_size`
    mutated windows per batch) and encoder_dll."""
    from dnallm.evidence import encoder_dll as encoder_scores
    from dnallm.evidence import no_variant_windows, ref_vs_alt
    from dnallm.ism import check_flank, ism_map, variant_kind
    from dnallm.scoring import label_probabilities, top_k

    if mode not in ("generate", "score"):
        raise ValueError(f"unknown mode {mode!r}; expected 'generate' or 'score'")
    if not 1 <= k <= len(KEGG_LABELS):
        raise ValueError(f"k must be between 1 and {len(KEGG_LABELS)} (the labels), got {k}")
    if mode == "generate" and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1 in generate mode, got {max_new_tokens}")
    if not questions:
        return []
    for i, (question, pair) in enumerate(zip(questions, windows)):  # bad input fails before any model work
        try:
            check_prompt(model, question, pair, max_new_tokens if mode == "generate" else 0)
        except ValueError as e:
            raise ValueError(f"variant {i}: {e}" if len(questions) > 1 else str(e)) from None
    if attribution:  # bad settings fail before any model work
        check_flank(attribution_flank, model.config.dna_config.window_size)
        for i, (reference, variant) in enumerate(windows):
            try:
                variant_kind(reference, variant)
            except ValueError as e:
                raise ValueError(f"variant {i}: {e}" if len(windows) > 1 else str(e)) from None
    # the zero-shot score first: an encoder loaded without its LM head stops the call before any scoring
    dlls = encoder_scores(model.dna_encoder, windows, batch_size=batch_size) if encoder_dll else None
    probs = label_probabilities(model, questions, windows, batch_size=batch_size)
    reference_probs = (label_probabilities(model, questions, no_variant_windows(windows), batch_size=batch_size)
                       if contrast else None)
    bests = top_k(probs, k)
    raws = (generate_answers(model, questions, windows, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             constrained=constrained)
            if mode == "generate" else [None] * len(questions))
    out = []
    for i, (p, best, raw) in enumerate(zip(probs.tolist(), bests, raws)):
        ex = Explanation(label=best[0][0] if raw is None else parse_answer(raw),
                         reasoning="" if raw is None else split_reasoning(raw), raw_text=raw or "",
                         label_probabilities={label: float(v) for label, v in zip(KEGG_LABELS, p)}, top_k=best)
        if contrast:
            ex.contrast = ref_vs_alt(probs[i], reference_probs[i], ex.label)
        if attribution:  # the map of the answer's label (the top scored label when the answer did not parse)
            ex.attribution = ism_map(model, questions[i], windows[i], label=ex.label, flank=attribution_flank,
                                     batch_size=attribution_batch_size)
        if encoder_dll:
            ex.encoder_dll = dlls[i]
        out.append(ex)
    return out


def explain_variant(question: str | None = None, reference_sequence: str | None = None,
                    variant_sequence: str | None = None,
                    model: str | Path | DNALLMForConditionalGeneration = "runs/quickstart/model", mode: str = "generate",
                    max_new_tokens: int = 1024, k: int = 3, *, chrom: str | None = None, pos: int | None = None,
                    ref: str | None = None, alt: str | None = None, fasta: str | Path | None = None,
                    gene: str | None = None, constrained: bool = True, dtype: str = "auto",
                    contrast: bool = False, attribution: bool = False, attribution_flank: int = 32,
                    attribution_batch_size: int = 16, encoder_dll: bool = False) -> Explanation:
    """Ask the model about one variant, given as sequences or as coordinates in a genome FASTA.

    Sequences: `reference_sequence` / `variant_sequence` are two 1024 bp windows or KEGG-layout sequences.
    Coordinates: `chrom`, `pos` (1-based, VCF POS), `ref`, `alt` and `fasta` (plain or bgzip): windows cut by the
    KEGG window rule (dnallm.genome), REF checked against the FASTA; `padded` / `warnings` report windows padded
    with N at a contig end and similar. `question=None` builds one from `gene` and `chrom` (build_question).

    mode="generate": greedy reasoning, then the final `Answer:` line: constrained to the 37 labels by default,
    else (constrained=False) decoded freely and parsed strictly (label None when it does not parse).
    mode="score": no reasoning; the label is the most likely of the 37 under label scoring (fast).
    Both return the 37 label probabilities and the top k. contrast=True also scores the question with the
    reference window in the variant's place and reports how the answer's label moved (`result.contrast`:
    p_variant, p_reference, delta_p, reference_label, movers; see dnallm.evidence).
    attribution=True adds the in-silico mutagenesis map of the answer's label (`result.attribution`, see
    dnallm.ism.ism_map): every position within ±`attribution_flank` bp of the variant (default 32, at most 511)
    mutated to each other base in the variant window, the change of log p(label) per mutation; offset 0 is the
    variant base of an SNV, the allele start of an indel (the window centre). `dnallm.ism.ism_png` draws it.
    encoder_dll=True adds the frozen encoder's zero-shot score (`result.encoder_dll`: log-likelihood of the variant
    window minus the reference window under the encoder's own LM head; masked-slot log-odds for NT).
    `dtype` ("auto" | "bfloat16" | "float16" | "float32") applies when `model` is a path: "auto" is bf16 on
    CUDA and fp32 on the CPU.
    """
    from dnallm.genome import open_genome

    if mode not in ("generate", "score"):
        raise ValueError(f"unknown mode {mode!r}; expected 'generate' or 'score'")
    coords = {"chrom": chrom, "pos": pos, "ref": ref, "alt": alt, "fasta": fasta}
    by_coords = any(v is not None for v in coords.values())
    if by_coords and (reference_sequence is not None or variant_sequence is not None):
        raise ValueError("give either reference/variant sequences or chrom/pos/ref/alt/fasta, not both")
    if by_coords and any(v is None for v in coords.values()):
        missing = ", ".join(name for name, v in coords.items() if v is None)
        raise ValueError(f"a variant by coordinates needs chrom, pos, ref, alt and fasta; missing: {missing}")
    if not by_coords and (reference_sequence is None or variant_sequence is None):
        raise ValueError("give reference_sequence and variant_sequence, or chrom/pos/ref/alt/fasta")
    if by_coords and "," in alt:
        raise ValueError(f"ALT {alt!r} lists several alleles; explain one ALT per call (a VCF file with "
                         "multi-allelic records is split by `dnallm explain --vcf`)")
    if not isinstance(model, DNALLMForConditionalGeneration):
        model = load_model(str(Path(model).resolve()), dtype=dtype)
    if question is None:
        question = build_question(gene=gene, chrom=chrom)
    if by_coords:
        w = open_genome(fasta).windows(chrom, pos, ref, alt, window=model.config.dna_config.window_size)
        windows, padded, warnings = (w.reference, w.variant), w.padded, list(w.warnings)
    else:
        windows = prepare_windows(reference_sequence, variant_sequence, model.config.dna_config.window_size)
        padded = warnings = None
    result = explain_many(model, [question], [windows], mode=mode, max_new_tokens=max_new_tokens, k=k,
                          constrained=constrained, contrast=contrast, attribution=attribution,
                          attribution_flank=attribution_flank, attribution_batch_size=attribution_batch_size,
                          encoder_dll=encoder_dll)[0]
    result.padded, result.warnings = padded, warnings
    return result


class AppendedText(str):
    """A chunk of `stream_answer` that dnallm appended, not the model (the `Answer:` prefix)."""


class ForcedAnswer(AppendedText):
    """The chunk of `stream_answer` that the thinking budget appended (`</think>` + `Answer:`), not the model."""


def stream_answer(model: DNALLMForConditionalGeneration, question: str, windows: tuple[str, str], max_new_tokens: int = 1024,
                  max_answer_tokens: int = 24, constrained: bool = True):
    """Yield the answer to one question as text chunks while the model writes it (greedy).

    The same decoding, thinking budget and (constrained) answer as `generate_answers`, so
    `"".join(stream_answer(model, q, w, n))` equals `generate_answers(model, [q], [w], max_new_tokens=n)[0]`. Text
    dnallm appended comes as its own chunk: `ForcedAnswer` when the budget ran out (`</think>` + `Answer:`),
    `AppendedText` for the `Answer:` after a reasoning the model closed itself (constrained); the label follows as
    one chunk. `windows`: the two prepared windows (`prepare_windows`, or `dnallm.genome`). Text arrives through
    transformers' TextIteratorStreamer from a generation thread; closing the generator early stops the generation.
    """
    from threading import Event, Thread

    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    from dnallm.scoring import LabelTree

    proc = model.processor
    tok = proc.tokenizer
    stops, ends, think_end = _stop_tokens(model, constrained)
    batch = proc([proc.prompt(question)], [list(windows)], padding_side="left")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask")
    cache = DynamicCache(config=model.config.text_config)  # the answer continues it after the reasoning
    stop = Event()

    class _StopWhenClosed(StoppingCriteria):
        def __call__(self, ids, scores, **kwargs):
            return torch.full((ids.shape[0],), stop.is_set(), dtype=torch.bool, device=ids.device)

    def run(ids: torch.Tensor, mask: torch.Tensor, limit: int, stop_ids: list[int], **dna):
        """Stream one greedy generation (as `generate_answers` runs it); return its new token ids [1, n]."""
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def work():
            try:
                with torch.no_grad():
                    result["ids"] = model.generate(
                        input_ids=ids, attention_mask=mask, max_new_tokens=limit,
                        eos_token_id=[*proc.end_token_ids, *stop_ids], streamer=streamer,
                        logits_processor=_think_once(tok, input_ids.shape[1]),
                        stopping_criteria=StoppingCriteriaList([_StopWhenClosed()]), **{CACHE_KWARG: cache},
                        **dna)[:, ids.shape[1]:]
            except BaseException as e:  # re-raised in the consumer; end the stream so that it does not block
                result["error"] = e
                streamer.end()

        thread = Thread(target=work, name="dnallm-stream", daemon=True)
        thread.start()
        finished = False
        try:
            for text in streamer:
                if text:
                    yield text
            finished = True
        finally:
            if not finished:  # the consumer closed the generator (or failed): stop generating
                stop.set()
            thread.join()
        if "error" in result:
            raise result["error"]
        return result["ids"]

    generated = yield from run(input_ids, attention_mask, max_new_tokens, [think_end] if constrained else [], **batch)
    row, suffix_text = _finish_row(_cut_after_first(generated[0].tolist(), stops), ends, think_end, constrained)
    if suffix_text is None or (not constrained and max_answer_tokens <= 0):
        return
    suffix = tok(suffix_text, add_special_tokens=False)["input_ids"]
    marker = AppendedText if suffix_text == AFTER_REASONING else ForcedAnswer  # the budget's: the forced prefix
    yield marker(tok.decode(suffix, skip_special_tokens=True))
    if constrained:
        tail = _answer_tails(model, input_ids, attention_mask, generated, [row], [suffix], cache,
                             LabelTree(tok, model.device), 0)[0]
        yield tok.decode(tail, skip_special_tokens=True)
    else:
        ids, _, mask = _continuation(model, input_ids, attention_mask, generated, [row], [suffix], cache)
        yield from run(ids, mask, max_answer_tokens, [])
