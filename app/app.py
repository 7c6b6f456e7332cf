"""Gradio chat UI for dnallm: ask about one variant, watch the reasoning stream in, get the label and the
label probabilities.

A thin entry point, like train/sft.py and eval/evaluate.py: it lives in the source checkout, not in the
installed package. `dnallm app --model CKPT` loads this file by path; `python app/app.py --model CKPT` runs it
directly. Every model step is a library call: `prepare_windows` / `dnallm.genome` (input checks, REF check
against a FASTA, the window rule),
`stream_answer` (the same prompt, processor and thinking budget as `explain_variant`), `parse_answer` /
`split_reasoning` (strict answer parsing) and `dnallm.scoring` (label probabilities). Nothing here touches
the model itself.

Safe to expose: the server binds loopback unless the operator passes `--allow-remote`, and coordinate input
reads only the genome FASTA files the operator named at start (`--fasta`, `--genome-dir`). Callers pick a
genome by name from that list; nothing they send is ever used as a path.
"""

from __future__ import annotations

import argparse
import io
import re
import time
from pathlib import Path

import gradio as gr
from PIL import Image

from dnallm.data import load_kegg
from dnallm.genome import open_genome
from dnallm.inference import (DTYPES, ForcedAnswer, check_prompt, load_model, parse_answer, prepare_windows,
                              split_reasoning, stream_answer)
from dnallm.labels import KEGG_LABELS
from dnallm.evidence import no_variant_windows, ref_vs_alt
from dnallm.ism import DEFAULT_FLANK, check_flank, ism_map, ism_png, variant_kind
from dnallm.scoring import label_probabilities, top_k
# the operator's settings, shared with the MCP server (re-exported: `dnallm app` catches app.StartError)
from dnallm.serving import COORDINATES_OFF, StartError, allowed_genomes, check_host  # noqa: F401

DEFAULT_MODEL = "runs/quickstart/model"
NO_ANSWER = "no valid answer"  # the answer field when the final line is not `Answer: <one of the 37 labels>`
N_EXAMPLES = 8
SEQUENCES, COORDINATES = "sequences", "coordinates"
UPDATE_EVERY_S = 0.05  # streamed text is pushed to the page at most this often

TITLE = """\
# dnallm — ask about a variant
The DNA encoder reads the reference and variant windows; the language model reasons and answers with one of the
37 KEGG disease labels.
"""

ABOUT = """\
**Input.** Two 1024 bp windows centred on the variant (the variant at index 512), two KEGG-layout sequences
(2000 bp flank + allele + 2000 bp flank), or coordinates (CHROM, 1-based POS, REF, ALT) in one of the genomes
the server was started with (`--fasta`, `--genome-dir`): REF is checked against the FASTA and the windows are cut
by the same rule. Or load an example from the KEGG test split.

**Follow-ups** stay on the same variant: each message is asked as a new question with the same DNA. The model is
trained single-turn, so earlier messages are not part of its prompt. Changing the variant starts a new
conversation.

**Answer and probabilities.** The answer is the label on the model's final `Answer:` line (strict: anything else
is "no valid answer"). The chart comes from label scoring: the likelihood of each of the 37 labels after
`Answer:` for the same question and DNA, normalised over the 37; its top label can differ from the written one.

**Evidence.** "Variant effect" compares that scoring with the reference window in the variant's place. The ISM map
(on request, in Settings) mutates every base within ±flank bp of the variant, one at a time, in the variant window
and shows how the answer's log-probability moves (blue: the label gets less likely); offset 0 is the variant (the
allele start for an indel). It costs one scoring per mutated window: 195 for ±32 bp.
"""

CSS = "#error-box { color: #b91c1c; font-weight: 600; }"

# System fonts only: the app works without internet access (no Google Fonts request).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def _clean(seq: str | None) -> str:
    return re.sub(r"\s+", "", seq or "").upper()


def _examples(n: int) -> tuple[list[list[str]], list[str]]:
    """The first test row of each of the first `n` gold labels: question and the two 1024 bp windows."""
    rows, labels, seen = [], [], set()
    for record in load_kegg("test"):
        if record["label"] in seen:
            continue
        seen.add(record["label"])
        rows.append([record["question"], SEQUENCES, record["ref_window"], record["variant_window"]])
        change = f"{record['ref_allele'] or '-'}>{record['alt_allele'] or '-'}"
        if len(change) > 15:
            change = f"{len(record['ref_allele'])} bp>{len(record['alt_allele'])} bp"
        labels.append(f"test row {record['row']} · {change} · gold: {record['label']}")
        if len(rows) == n:
            break
    return rows, labels


def _variant_key(source, reference, variant, chrom, pos, ref, alt, genome, genomes: dict[str, Path]) -> list:
    """What identifies the variant in the input fields (a follow-up has the same key); ValueError if incomplete.

    `genome` is a name from `genomes` (the operator's allow-list), never a path: an unknown name is refused
    without repeating it, since a caller can send any text there."""
    if source == COORDINATES:
        if not genomes:
            raise ValueError(COORDINATES_OFF)
        if not isinstance(genome, str) or genome not in genomes:
            raise ValueError(f"unknown genome: pick one of {', '.join(genomes)}")
        chrom, ref, alt = (str(v or "").strip() for v in (chrom, ref, alt))
        if not (chrom and pos not in (None, "")):
            raise ValueError("coordinates need CHROM, POS, REF and ALT (use '-' for an empty allele)")
        if isinstance(pos, float) and pos.is_integer():
            pos = int(pos)
        return [COORDINATES, chrom, pos, ref.upper(), alt.upper(), genome]
    key = [SEQUENCES, _clean(reference), _clean(variant)]
    if not key[1] or not key[2]:
        raise ValueError("enter the reference and the variant sequence (or load an example)")
    return key


def _variant_windows(key: list, window: int, genomes: dict[str, Path]) -> tuple[tuple[str, str], list[str]]:
    """The two windows of a variant key and any notes (padding, ...); errors are readable ValueError/OSError."""
    if key[0] == COORDINATES:
        _, chrom, pos, ref, alt, name = key
        w = open_genome(genomes[name]).windows(chrom, pos, ref, alt, window=window)
        return (w.reference, w.variant), list(w.warnings)
    return prepare_windows(key[1], key[2], window, where="sequences"), []


def build_app(model_path: str = DEFAULT_MODEL, max_new_tokens: int = 1024, k: int = 5, concurrency_limit: int = 1,
              n_examples: int = N_EXAMPLES, genomes: dict[str, Path] | None = None, dtype: str = "auto") -> gr.Blocks:
    """The Blocks app for one checkpoint. The model is loaded here, once (load_model is cached per process).

    `genomes` (from `allowed_genomes`) are the FASTA files coordinate input may read, by name; without any,
    coordinate input is off.
    """
    genomes = dict(genomes or {})
    model = load_model(str(Path(model_path).resolve()), dtype=dtype)
    window = model.config.dna_config.window_size

    def outputs(history, state, answer="", chart=None, probabilities=None, error="", question="", ism_image=None,
                ism_values=None):
        return history, question, answer, chart or {}, probabilities or {}, ism_image, ism_values or {}, error, state

    def fail(message, history, state, question):
        gr.Warning(message)
        return outputs(history, state, error=f"⚠ {message}", question=question)

    def ask(question, source, reference, variant, chrom, pos, ref, alt, genome, history, budget, top, attribute,
            flank, state):
        history = list(history or [])
        question = (question or "").strip()
        if not question:
            yield fail("Type a question about the variant.", history, state, question)
            return
        notes = []
        try:
            key = _variant_key(source, reference, variant, chrom, pos, ref, alt, genome, genomes)
            if not (state and state.get("key") == key):  # a new variant starts a new conversation
                windows, notes = _variant_windows(key, window, genomes)
                history, state = [], {"key": key, "windows": list(windows)}
                for note in notes:
                    gr.Warning(note)
        except (ValueError, OSError, ImportError) as e:  # bad bases, wrong length, REF mismatch, unknown genome
            yield fail(str(e), history, state, question)
            return
        windows = tuple(state["windows"])  # a follow-up asks with the same DNA
        try:  # input problems before any model work, and named as such
            check_prompt(model, question, windows, int(budget))
            if attribute:
                check_flank(int(flank), window)
                variant_kind(*windows)
        except ValueError as e:  # a control token, too long, windows not cut by the window rule for ISM
            yield fail(str(e), history, state, question)
            return
        history += [{"role": "user", "content": question},
                    {"role": "assistant", "content": "", "metadata": {"title": "Reasoning", "status": "pending"}}]
        yield outputs(history, state)
        text, started, shown, forced = "", time.perf_counter(), 0.0, False
        try:
            for chunk in stream_answer(model, question, windows, max_new_tokens=int(budget)):
                text += chunk
                forced = forced or isinstance(chunk, ForcedAnswer)
                if time.perf_counter() - shown >= UPDATE_EVERY_S:  # at most ~20 UI updates a second
                    history[-1]["content"] = split_reasoning(text)
                    shown = time.perf_counter()
                    yield outputs(history, state)
            history[-1]["content"] = split_reasoning(text)
            probs = label_probabilities(model, [question], [windows])
            # evidence: the same scoring with the reference in the variant's place (dnallm.evidence)
            reference_probs = label_probabilities(model, [question], no_variant_windows([windows]))
            label = parse_answer(text)
            # on request: the ISM map of the answer's label (the top scored label when the answer did not parse),
            # as explain_variant(..., attribution=True) computes it
            attribution = (ism_map(model, question, windows, label=label, flank=int(flank))
                           if attribute else None)
        except Exception as e:  # shown in the UI, never as a stack trace
            history[-1]["metadata"]["status"] = "done"
            yield fail(f"the model failed: {type(e).__name__}: {e}", history, state, "")
            return
        # Done: no status keeps the reasoning open (status "done" would fold it away).
        history[-1]["metadata"] = {"title": "Reasoning", "duration": round(time.perf_counter() - started, 1)}
        best = top_k(probs, int(top))[0]
        reply = f"**Answer: {label}**" if label else (
            f"**{NO_ANSWER}**: the final line is not `Answer: <one of the 37 labels>`.")
        if forced:
            reply += (f"\n\n_The thinking budget ({int(budget)} tokens) ran out: `</think>` and `Answer:` were "
                      f"appended and the model wrote the label._")
        reply += f"\n\nLabel scoring: {best[0][0]} ({best[0][1]:.1%})."
        contrast = ref_vs_alt(probs[0], reference_probs[0], label)
        reply += (f"\n\nVariant effect: p({contrast['label']}) is {contrast['p_variant']:.1%} with the variant and "
                  f"{contrast['p_reference']:.1%} with the reference in its place (Δp {contrast['delta_p']:+.1%}); "
                  f"the reference alone scores highest for {contrast['reference_label']}.")
        ism_image = None
        if attribution is not None:
            ism_image = Image.open(io.BytesIO(ism_png(attribution)))
            reply += (f"\n\nISM map: {attribution['n_windows']} single-base mutations within "
                      f"±{attribution['flank']} bp, log p({attribution['label']}) = {attribution['log_p']:.4f} "
                      "unmutated (the plot below).")
        if notes:
            reply += "\n\n" + "\n".join(f"- {note}" for note in notes)
        history.append({"role": "assistant", "content": reply})
        chart = dict(best)
        probabilities = {name: float(p) for name, p in sorted(zip(KEGG_LABELS, probs[0].tolist()),
                                                              key=lambda item: -item[1])}
        yield outputs(history, state, answer=label or NO_ANSWER, chart=chart, probabilities=probabilities,
                      ism_image=ism_image, ism_values=attribution)

    def new_conversation():
        return [], "", "", {}, {}, None, {}, "", None

    def show_source(source):
        return gr.update(visible=source == SEQUENCES), gr.update(visible=source == COORDINATES)

    examples, example_labels = _examples(n_examples)
    with gr.Blocks(title="dnallm", analytics_enabled=False) as demo:
        gr.Markdown(TITLE)
        state = gr.State(None)
        question = gr.Textbox(label="Question", placeholder="Ask about the variant", lines=2, scale=5, render=False)
        with gr.Row():
            with gr.Column(scale=2):
                source = gr.Radio([SEQUENCES, COORDINATES], value=SEQUENCES, label="Variant given as")
                with gr.Group(visible=True) as sequence_fields:
                    reference = gr.Textbox(label="Reference sequence", lines=2, max_lines=2,
                                           placeholder=f"{window} bp window (variant at index {window // 2}) "
                                                       "or KEGG layout")
                    variant = gr.Textbox(label="Variant sequence", lines=2, max_lines=2,
                                         placeholder="the same window with the alternative allele")
                with gr.Group(visible=False) as coordinate_fields:
                    if not genomes:
                        gr.Markdown("**Coordinate input is off**: the server was started without a genome "
                                    "(`--fasta` or `--genome-dir`). Give the sequences instead.")
                    with gr.Row(visible=bool(genomes)):
                        chrom = gr.Textbox(label="CHROM", placeholder="chr1")
                        pos = gr.Number(label="POS (1-based)", precision=0)
                        ref = gr.Textbox(label="REF", placeholder="G")
                        alt = gr.Textbox(label="ALT", placeholder="T")
                    # Names only, never a path. allow_custom_value lets `ask` refuse an unknown name itself:
                    # Gradio's own refusal repeats the sent value in its error message.
                    genome = gr.Dropdown(list(genomes), value=next(iter(genomes), None), allow_custom_value=True,
                                         label="Genome (FASTA files the server was started with)",
                                         visible=bool(genomes))
                gr.Examples(examples, inputs=[question, source, reference, variant], example_labels=example_labels,
                            label="Examples (KEGG test split)")
                with gr.Accordion("Settings", open=False):
                    budget = gr.Slider(1, 4096, value=max_new_tokens, step=1,
                                       label="Max new tokens (thinking budget)")
                    top = gr.Slider(1, len(KEGG_LABELS), value=k, step=1, label="Labels in the chart (top-k)")
                    attribute = gr.Checkbox(False, label="ISM map of the answer's label (one extra scoring per "
                                                         "mutated base: 195 for ±32 bp)")
                    flank = gr.Slider(0, window - 1 - window // 2, value=DEFAULT_FLANK, step=1,
                                      label="ISM flank (bp on each side of the variant)")
                with gr.Accordion("About", open=False):
                    gr.Markdown(ABOUT)
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", height=330)
                error = gr.Markdown(elem_id="error-box", label="Error")
                with gr.Row():
                    question.render()
                    send = gr.Button("Send", variant="primary", scale=1)
                with gr.Row():
                    answer = gr.Textbox(label="Answer (the label the model wrote)", interactive=False,
                                        elem_id="answer", scale=2)
                    clear = gr.Button("New conversation", size="sm", scale=1)
                chart = gr.Label(show_heading=False, label="Top-k label probabilities (label scoring)")
                with gr.Accordion("All 37 label probabilities", open=False):
                    probabilities = gr.JSON(label="Label probabilities")
                # PNG, not Gradio's default WebP: the map's colours arrive as drawn
                ism_image = gr.Image(label="ISM map (Settings: on request)", type="pil", format="png",
                                     interactive=False)
                with gr.Accordion("ISM map values", open=False):
                    ism_values = gr.JSON(label="ISM map (dnallm.ism.ism_map)")
        source.change(show_source, source, [sequence_fields, coordinate_fields], api_name=False)
        gr.on([question.submit, send.click], ask,
              [question, source, reference, variant, chrom, pos, ref, alt, genome, chatbot, budget, top, attribute,
               flank, state],
              [chatbot, question, answer, chart, probabilities, ism_image, ism_values, error, state], api_name="ask",
              concurrency_limit=concurrency_limit, concurrency_id="model")
        clear.click(new_conversation, None, [chatbot, question, answer, chart, probabilities, ism_image, ism_values,
                                             error, state], api_name=False)
    demo.queue(default_concurrency_limit=concurrency_limit)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, allow_remote: bool = False,
           **kwargs):
    """Serve the app on loopback (another host only with `allow_remote`); kwargs go to `gr.Blocks.launch`."""
    check_host(host, allow_remote)
    return demo.launch(server_name=host, server_port=port, theme=THEME, css=CSS, **kwargs)


def serve(model: str = DEFAULT_MODEL, host: str = "127.0.0.1", port: int | None = 7860, max_new_tokens: int = 1024,
          concurrency_limit: int = 1, fasta=(), genome_dir: str | Path | None = None, allow_remote: bool = False,
          dtype: str = "auto"):
    """What `python app/app.py` and `dnallm app` run: check the settings, build the app, serve it.

    StartError for a refused host or a bad genome file (checked before the model loads), FileNotFoundError for
    a missing checkpoint.
    """
    check_host(host, allow_remote)
    genomes = allowed_genomes(fasta, genome_dir)
    demo = build_app(model, max_new_tokens=max_new_tokens, concurrency_limit=concurrency_limit, genomes=genomes,
                     dtype=dtype)
    return launch(demo, host=host, port=port, allow_remote=allow_remote)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="dnallm chat UI")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--concurrency-limit", type=int, default=1)
    parser.add_argument("--fasta", action="append", default=[],
                        help="a genome FASTA coordinate input may read (repeatable); offered by file name")
    parser.add_argument("--genome-dir", default=None,
                        help="a folder whose FASTA files (.fa/.fasta/.fna[.gz]) coordinate input may read")
    parser.add_argument("--allow-remote", action="store_true", help="allow a --host other than loopback")
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto: bfloat16 on CUDA, float32 on CPU")
    args = parser.parse_args(argv)
    try:
        serve(args.model, host=args.host, port=args.port, max_new_tokens=args.max_new_tokens,
              concurrency_limit=args.concurrency_limit, fasta=args.fasta, genome_dir=args.genome_dir,
              allow_remote=args.allow_remote, dtype=args.dtype)
    except (StartError, FileNotFoundError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
