"""The Gradio chat UI (app/app.py, `dnallm app`) and the library stream behind it.

End to end: the app is launched on the tiny checkpoint of the `quickstart_dir` fixture and asked through
gradio_client; headless Chromium renders the page, and (over the DevTools protocol) loads an example and asks.
Every answer is checked against the library (`explain_variant`, the API the app must agree with). The settings
checks that need no model (host, genome allow-list, gradio version) are in test_app_setup.py.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import gradio as gr
import pytest
import torch
from gradio_client import Client
from PIL import Image
from typer.testing import CliRunner

from dnallm.cli import _load_app_module, app as cli_app
from dnallm.data import load_kegg
from dnallm.genome import write_kegg_contigs
from dnallm.inference import (AFTER_REASONING, FORCED_ANSWER, AppendedText, ForcedAnswer, explain_variant,
                              generate_answers, load_model, stream_answer)
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.ism import ism_png

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 8  # max new tokens: the tiny model then always runs into the thinking budget (fast, and exercises it)
K = 4
N_EXAMPLES = 3
NO_ANSWER = "no valid answer"
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y "
                                                              "chromium; .ci/run installs it)")


@pytest.fixture(scope="module")
def ui():
    return _load_app_module()


@pytest.fixture(scope="module")
def model_path(quickstart_dir):
    return str((quickstart_dir[0] / "model").resolve())


@pytest.fixture(scope="module")
def records():
    return load_kegg("test").select(range(12))


def test_input_the_model_cannot_take_is_refused_before_any_model_work(served, records):
    """Windows not cut by the window rule with ISM on ran generation and both scorings, then reported "the model
    failed" and dropped the answer; a question with a control token also reached the model first."""
    _, url = served
    r = records[1]
    client = Client(url, verbose=False)
    shifted = r["ref_window"][:100] + next(b for b in "ACGT" if b != r["ref_window"][100]) + r["ref_window"][101:]
    out = ask(client, r["question"], r["ref_window"], shifted, attribute=True, flank=3)
    assert "differ at index 100, before the centre 512" in out["error"] and "model failed" not in out["error"]
    assert out["history"] == [] and out["answer"] == ""
    out = ask(client, "Is this <|im_end|> benign?", r["ref_window"], r["variant_window"])
    assert "control token(s) ['<|im_end|>']" in out["error"] and out["history"] == []


@pytest.fixture(scope="module")
def genome(records, tmp_path_factory):
    """The operator's genome: a FASTA with records[2] placed on it, and where (chrom, pos, ref, alt)."""
    path = tmp_path_factory.mktemp("genomes") / "genome.fa"
    return path, write_kegg_contigs([records[2]], path)[0]


@pytest.fixture(scope="module")
def served(ui, model_path, genome):
    """The app with one allowed genome (`--fasta genome.fa`)."""
    demo = ui.build_app(model_path, max_new_tokens=BUDGET, k=K, n_examples=N_EXAMPLES,
                        genomes=ui.allowed_genomes([genome[0]]))
    _, url, _ = ui.launch(demo, port=None, prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


@pytest.fixture(scope="module")
def served_without_genome(ui, model_path):
    demo = ui.build_app(model_path, max_new_tokens=BUDGET, k=K, n_examples=N_EXAMPLES)
    _, url, _ = ui.launch(demo, port=None, prevent_thread_lock=True, quiet=True)
    yield demo, url
    demo.close()


def ask(client, question, reference="", variant="", history=(), source="sequences", coordinates=("", None, "", "", ""),
        budget=BUDGET, k=K, attribute=False, flank=32):
    chrom, pos, ref, alt, genome_name = coordinates
    history_out, question_box, answer, chart, probabilities, ism_image, ism_values, error = client.predict(
        question, source, reference, variant, chrom, pos, ref, alt, genome_name, list(history), budget, k, attribute,
        flank, api_name="/ask")
    return {"history": history_out, "question": question_box, "answer": answer, "chart": chart,
            "probabilities": probabilities, "ism_image": ism_image, "ism_values": ism_values, "error": error}


def text_of(message) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


# ---- the library stream ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [4, 40])
def test_stream_answer_is_generate_answers_in_pieces(model_path, records, budget):
    model = load_model(model_path)
    r = records[0]
    windows = (r["ref_window"], r["variant_window"])
    chunks = list(stream_answer(model, r["question"], windows, max_new_tokens=budget))
    assert len(chunks) > 1  # streamed, not one final block
    assert "".join(chunks) == generate_answers(model, [r["question"]], [windows], max_new_tokens=budget)[0]
    if budget == 4:  # the thinking budget path is streamed as well, its appended prefix marked as such
        assert [c for c in chunks if isinstance(c, ForcedAnswer)] == [FORCED_ANSWER]



def scripted_model(path: str, script_text: str):
    """The checkpoint with its text model wired to write `script_text` greedily after any prompt, through the real
    model code: every layer's attention and MLP outputs are zeroed, so each position's state is its own token's
    embedding; the chain's tokens get orthogonal embeddings, and the (untied) LM head maps each to the next one."""
    model = DNALLMForConditionalGeneration.from_pretrained(path)
    model.merge_lora()
    model.eval()
    lm, tok = model.language_model, model.processor.tokenizer
    prompt_end = model.processor.tokenizer(model.processor.prompt("Q"), add_special_tokens=False)["input_ids"][-1]
    chain = [prompt_end, *tok(script_text, add_special_tokens=False)["input_ids"]]
    assert len(set(chain)) == len(chain), "the script must not repeat a token (each token names its successor)"
    hidden = lm.config.hidden_size
    with torch.no_grad():
        for name, module in lm.named_modules():
            if name.endswith(("o_proj", "down_proj")):
                module.weight.zero_()
        lm.model.norm.weight.fill_(1.0)
        embeddings = lm.get_input_embeddings().weight
        head = torch.nn.Linear(hidden, embeddings.shape[0], bias=False)
        head.weight.zero_()
        for k, (token, successor) in enumerate(zip(chain, chain[1:])):
            embeddings[token] = 0.0
            embeddings[token, k] = 10.0
            head.weight[successor, k] = 1.0
    lm.set_output_embeddings(head)  # the head was tied to the embeddings
    return model


def test_free_decoding_keeps_the_models_own_answer_line_in_the_stream_too(model_path, records):
    """Free decoding (constrained=False) after a think block the model closed itself: its own `Answer:` line ends
    the turn. The stream cut the row at `</think>` as constrained decoding does, then appended another `Answer:`
    and generated again after the text it had already streamed."""
    script = "<think>Because</think>\n\nAnswer: Parkinson disease<|im_end|>"
    model = scripted_model(model_path, script)
    r = records[0]
    windows = (r["ref_window"], r["variant_window"])
    answer = generate_answers(model, [r["question"]], [windows], max_new_tokens=40, constrained=False)[0]
    assert answer == "<think>Because</think>\n\nAnswer: Parkinson disease"  # the model's own line, as written
    chunks = list(stream_answer(model, r["question"], windows, max_new_tokens=40, constrained=False))
    assert "".join(chunks) == answer and not any(isinstance(c, AppendedText) for c in chunks)
    # constrained decoding on the same model: `Answer:` is appended after `</think>` and the label comes from the trie
    chunks = list(stream_answer(model, r["question"], windows, max_new_tokens=40))
    assert [c for c in chunks if isinstance(c, AppendedText)] == [AFTER_REASONING]
    assert "".join(chunks) == generate_answers(model, [r["question"]], [windows], max_new_tokens=40)[0]

def test_closing_the_stream_stops_generation(model_path, records, monkeypatch):
    from transformers import TextIteratorStreamer

    model = load_model(model_path)
    r = records[0]
    windows = (r["ref_window"], r["variant_window"])
    puts = []
    original = TextIteratorStreamer.put

    def slow_put(self, value):
        # Count the tokens, 20 ms each so that the tiny model cannot finish before close(), and hand the consumer
        # a chunk per token: the tiny test model writes no whitespace, so the streamer alone would hold all text
        # back until the end.
        puts.append(1)
        time.sleep(0.02)
        original(self, value)
        self.text_queue.put(" ")

    monkeypatch.setattr(TextIteratorStreamer, "put", slow_put)
    list(stream_answer(model, r["question"], windows, max_new_tokens=64, max_answer_tokens=0))
    n_full = len(puts)
    puts.clear()
    stream = stream_answer(model, r["question"], windows, max_new_tokens=64, max_answer_tokens=0)
    next(stream)
    stream.close()  # stops the generation and joins its thread
    n_closed = len(puts)
    time.sleep(0.2)
    assert len(puts) == n_closed  # nothing generated after close returned
    assert n_full >= 40 and n_closed < 10, (n_full, n_closed)
    assert not any(t.name == "dnallm-stream" for t in threading.enumerate())


# ---- the app through gradio_client ----------------------------------------------------------------------------

def test_app_answers_with_label_and_probabilities(served, model_path, records):
    _, url = served
    r = records[0]
    client = Client(url, verbose=False)
    out = ask(client, r["question"], r["ref_window"], r["variant_window"])
    assert out["error"] == ""
    assert out["question"] == ""  # the chat box is cleared for the next question
    # What the library says for the same question and DNA (KEGG layout here, windows in the app): the app must
    # show its label, its 37 probabilities, its top k and its reasoning.
    ex = explain_variant(r["question"], r["reference_sequence"], r["variant_sequence"], model=model_path,
                         max_new_tokens=BUDGET)
    assert out["answer"] == (ex.label or NO_ANSWER)
    probs = out["probabilities"]
    assert probs == pytest.approx(ex.label_probabilities, abs=1e-5)
    ranked = sorted(ex.label_probabilities.items(), key=lambda item: -item[1])
    assert list(probs) == [name for name, _ in ranked]  # listed most likely first
    chart = [(c["label"], c["confidence"]) for c in out["chart"]["confidences"]]
    assert [name for name, _ in chart] == [name for name, _ in ranked[:K]]
    assert [p for _, p in chart] == pytest.approx([p for _, p in ranked[:K]], abs=1e-5)
    # The chat: the question, the streamed reasoning, the answer message.
    user, reasoning, reply = out["history"]
    assert user["role"] == "user" and text_of(user) == r["question"]
    assert reasoning["metadata"]["title"] == "Reasoning" and text_of(reasoning) == ex.reasoning
    assert (f"**Answer: {ex.label}**" if ex.label else f"**{NO_ANSWER}**") in text_of(reply)
    assert "thinking budget" in text_of(reply)  # BUDGET is too small for the tiny model to finish
    best, p = max(ex.label_probabilities.items(), key=lambda item: item[1])
    assert f"Label scoring: {best} ({p:.1%})." in text_of(reply)
    # the evidence line: the library's ref-vs-alt contrast for the same answer
    c = explain_variant(r["question"], r["reference_sequence"], r["variant_sequence"], model=model_path,
                        max_new_tokens=BUDGET, contrast=True).contrast
    assert (f"Variant effect: p({c['label']}) is {c['p_variant']:.1%} with the variant and {c['p_reference']:.1%} "
            f"with the reference in its place (Δp {c['delta_p']:+.1%})") in text_of(reply)


def test_app_ism_map_on_request_equals_the_api(served, model_path, records):
    _, url = served
    r = records[1]
    client = Client(url, verbose=False)
    plain = ask(client, r["question"], r["ref_window"], r["variant_window"])
    assert plain["error"] == "" and plain["ism_image"] is None and plain["ism_values"] == {}  # not asked: no map
    out = ask(client, r["question"], r["ref_window"], r["variant_window"], attribute=True, flank=3)
    assert out["error"] == ""
    # the library's map for the same question, DNA and answer (generate mode, the app's thinking budget)
    api = explain_variant(r["question"], r["ref_window"], r["variant_window"], model=model_path,
                          max_new_tokens=BUDGET, attribution=True, attribution_flank=3)
    assert out["answer"] == (api.label or NO_ANSWER)
    assert out["ism_values"] == api.attribution  # every value identical
    # the plot is the library's drawing of that map, pixel for pixel (PNG: lossless)
    shown = Image.open(out["ism_image"])
    drawn = Image.open(io.BytesIO(ism_png(api.attribution)))
    assert shown.size == drawn.size and shown.convert("RGB").tobytes() == drawn.convert("RGB").tobytes()
    assert (f"ISM map: 21 single-base mutations within ±3 bp, log p({api.attribution['label']}) = "
            f"{api.attribution['log_p']:.4f}") in text_of(out["history"][-1])


def test_follow_up_keeps_the_variant_and_a_new_variant_starts_over(served, model_path, records):
    _, url = served
    a, b = records[0], records[1]
    client = Client(url, verbose=False)
    first = ask(client, a["question"], a["ref_window"], a["variant_window"])
    follow_up = "Which gene does this variant affect?"
    follow = ask(client, follow_up, a["ref_window"], a["variant_window"], history=first["history"])
    assert follow["error"] == ""
    assert [text_of(m) for m in follow["history"][:3]] == [text_of(m) for m in first["history"]]
    assert len(follow["history"]) == 6 and text_of(follow["history"][3]) == follow_up
    # A follow-up is the new question alone on the same DNA (the model is single-turn): what the library says.
    ex = explain_variant(follow_up, a["reference_sequence"], a["variant_sequence"], model=model_path,
                         max_new_tokens=BUDGET)
    assert follow["answer"] == (ex.label or NO_ANSWER)
    assert follow["probabilities"] == pytest.approx(ex.label_probabilities, abs=1e-5)
    assert text_of(follow["history"][4]) == ex.reasoning
    other = ask(client, b["question"], b["ref_window"], b["variant_window"], history=follow["history"])
    assert len(other["history"]) == 3 and text_of(other["history"][0]) == b["question"]


@pytest.mark.parametrize("reference, variant, message", [
    ("ACGX" + "A" * 1020, "A" * 1024, "invalid base 'X' at position 3"),
    ("ACGT" * 25, "ACGT" * 25, "wrong window length: reference 100 bp, variant 100 bp"),
    ("", "", "enter the reference and the variant sequence"),
])
def test_bad_input_is_a_readable_error(served, reference, variant, message):
    _, url = served
    out = ask(Client(url, verbose=False), "What disease does this contribute to?", reference, variant)
    assert message in out["error"]
    assert "Traceback" not in out["error"]
    assert out["history"] == [] and out["answer"] == "" and out["probabilities"] == {}
    assert out["question"] == "What disease does this contribute to?"  # kept, so that it can be fixed and resent


def test_an_allowed_genome_gives_the_same_dna_and_ref_mismatch_is_an_error(served, records, genome):
    _, url = served
    path, placed = genome
    assert path.with_name("genome.fa.fai").exists()  # indexed at start, not by a request
    r = records[2]
    client = Client(url, verbose=False)
    by_sequence = ask(client, r["question"], r["ref_window"], r["variant_window"])
    by_coordinates = ask(client, r["question"], source="coordinates",
                         coordinates=(placed["chrom"], placed["pos"], placed["ref"], placed["alt"], "genome.fa"))
    assert by_coordinates["error"] == ""
    assert by_coordinates["answer"] == by_sequence["answer"]
    assert by_coordinates["probabilities"] == pytest.approx(by_sequence["probabilities"], abs=1e-5)
    wrong_ref = "A" if placed["ref"] != "A" else "C"
    bad = ask(client, r["question"], source="coordinates",
              coordinates=(placed["chrom"], placed["pos"], wrong_ref, placed["alt"], "genome.fa"))
    assert "does not match the genome FASTA" in bad["error"] and bad["answer"] == ""


@pytest.fixture
def opened_fasta(monkeypatch):
    """Every path pyfaidx is asked to open while the test runs (the app runs in this process)."""
    import pyfaidx

    opened, original = [], pyfaidx.Fasta

    def recording(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(pyfaidx, "Fasta", recording)
    return opened


def test_a_typed_path_is_refused_and_no_file_is_opened_or_written(served, records, genome, tmp_path, opened_fasta):
    _, url = served
    path, placed = genome
    # A valid FASTA the operator did not name: the old app opened it and wrote its .fai next to it.
    other = tmp_path / "other.fa"
    other.write_text(path.read_text())
    before = {p.name for p in (*tmp_path.iterdir(), *path.parent.iterdir())}
    client = Client(url, verbose=False)
    for typed in (str(other), "../" + other.name, "/etc/passwd", "genome.fa/../../etc/passwd"):
        out = ask(client, records[2]["question"], source="coordinates",
                  coordinates=(placed["chrom"], placed["pos"], placed["ref"], placed["alt"], typed))
        assert "unknown genome: pick one of genome.fa" in out["error"], typed
        assert "passwd" not in out["error"] and "other" not in out["error"] and "tmp" not in out["error"]
        assert out["answer"] == "" and out["probabilities"] == {}
    assert opened_fasta == []
    assert {p.name for p in (*tmp_path.iterdir(), *path.parent.iterdir())} == before
    assert not Path("/etc/passwd.fai").exists()


def test_coordinate_input_is_off_without_a_genome(served_without_genome, records, tmp_path, opened_fasta):
    demo, url = served_without_genome
    placed = write_kegg_contigs([records[2]], tmp_path / "genome.fa")[0]
    out = ask(Client(url, verbose=False), records[2]["question"], source="coordinates",
              coordinates=(placed["chrom"], placed["pos"], placed["ref"], placed["alt"], str(tmp_path / "genome.fa")))
    assert out["error"].startswith("⚠ coordinate input is off: the server was started without a genome")
    assert str(tmp_path) not in out["error"] and out["answer"] == ""
    assert opened_fasta == [] and sorted(p.name for p in tmp_path.iterdir()) == ["genome.fa"]  # no .fai
    # The page says so where the coordinate fields would be.
    notes = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and isinstance(b.value, str)]
    assert any(note.startswith("**Coordinate input is off**") for note in notes)


def test_app_binds_loopback_and_queues_one_request_at_a_time(served):
    demo, url = served
    assert url.startswith("http://127.0.0.1:")
    ask_fn = next(fn for fn in demo.fns.values() if fn.api_name == "ask")
    assert ask_fn.concurrency_limit == 1 and ask_fn.queue


# ---- the CLI -------------------------------------------------------------------------------------------------

def test_cli_app_command_builds_and_launches(ui, model_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(ui, "launch", lambda demo, **kw: calls.update(demo=demo, **kw))
    result = CliRunner().invoke(cli_app, ["app", "--model", model_path, "--port", "7999", "--concurrency-limit", "2"])
    assert result.exit_code == 0, result.output
    assert calls["host"] == "127.0.0.1" and calls["port"] == 7999 and calls["allow_remote"] is False
    ask_fn = next(fn for fn in calls["demo"].fns.values() if fn.api_name == "ask")
    assert ask_fn.concurrency_limit == 2
    missing = CliRunner().invoke(cli_app, ["app", "--model", "/nonexistent/model"])
    assert missing.exit_code == 2 and "dnallm quickstart" in missing.output


def _genome_choices(demo) -> list[str]:
    (dropdown,) = [b for b in demo.blocks.values() if isinstance(b, gr.Dropdown)]
    return [value for _, value in dropdown.choices]


def test_both_entry_points_take_the_same_genome_and_host_flags(ui, model_path, genome, tmp_path, monkeypatch):
    """`dnallm app` and `python app/app.py` run ui.serve with the same flags."""
    folder = tmp_path / "genomes"
    folder.mkdir()
    for name in ("hg_a.fa", "hg_b.fasta"):
        (folder / name).write_text(genome[0].read_text())
    argv = ["--model", model_path, "--fasta", str(genome[0]), "--genome-dir", str(folder),
            "--host", "0.0.0.0", "--allow-remote"]
    launched = []
    monkeypatch.setattr(ui, "launch", lambda demo, **kw: launched.append((_genome_choices(demo), kw)))
    result = CliRunner().invoke(cli_app, ["app", *argv])
    assert result.exit_code == 0, result.output
    ui.main(argv)
    expected = (["genome.fa", "hg_a.fa", "hg_b.fasta"],
                {"host": "0.0.0.0", "port": 7860, "allow_remote": True})
    assert launched == [expected, expected]


def test_a_non_loopback_host_is_refused_without_allow_remote(ui, model_path, served, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(ui, "build_app", lambda *a, **kw: launched.append("built"))
    for host in ("0.0.0.0", "192.168.1.20", "example.org"):
        result = CliRunner().invoke(cli_app, ["app", "--model", model_path, "--host", host])
        assert result.exit_code == 2 and "--allow-remote" in result.output, result.output
        assert f"--host {host} is not a loopback address" in result.output
        with pytest.raises(SystemExit) as exit_:
            ui.main(["--model", model_path, "--host", host])
        assert exit_.value.code == 2 and "--allow-remote" in capsys.readouterr().err
    assert launched == []  # refused before the model loads
    # launch() itself refuses too, before binding, for code that builds the app without the CLI.
    with pytest.raises(ui.StartError, match="not a loopback address"):
        ui.launch(served[0], host="0.0.0.0", port=None, prevent_thread_lock=True)


def test_library_does_not_import_the_app():
    code = ("import sys, dnallm, dnallm.cli, dnallm.inference; "
            "assert 'gradio' not in sys.modules and 'dnallm_app' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=300)


# ---- the page in a real browser ---------------------------------------------------------------------------------

@needs_chromium
def test_browser_renders_the_app(served, tmp_path):
    _, url = served
    profile = tmp_path / "profile"
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    # Rendered elements, not just the config embedded in a <script>: the page's text, text areas, example buttons.
    text = re.sub(r"<[^>]+>", " ", re.sub(r"<script\b.*?</script>", " ", dom, flags=re.S))
    for label in ("dnallm — ask about a variant", "Variant given as", "Reference sequence", "Variant sequence",
                  "Question", "Send", "Answer (the label the model wrote)", "Top-k label probabilities (label scoring)",
                  "Examples (KEGG test split)", "Chat"):
        assert label in text, label
    assert 'placeholder="Ask about the variant"' in dom
    assert dom.count('class="gallery-item') == N_EXAMPLES and "test row 0" in dom
    png = tmp_path / "app.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                    "--window-size=1000,700", f"--screenshot={png}", url], capture_output=True, timeout=180)
    assert png.exists() and png.stat().st_size > 20_000
    image = Image.open(png)
    assert image.size == (1000, 700)
    assert len(image.convert("RGB").getcolors(1 << 20) or []) > 50  # a rendered page, not a blank one


@needs_chromium
def test_browser_loads_an_example_and_streams_an_answer(served, ui, model_path):
    spec = importlib.util.spec_from_file_location("dnallm_app_screenshot", ROOT / "app" / "screenshot.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    _, url = served
    question, _, reference, variant = ui._examples(1)[0][0]
    expected = explain_variant(question, reference, variant, model=model_path, max_new_tokens=BUDGET).label
    with shot.Browser(1000, 700) as browser:
        answer = shot.ask_example(browser, url, 0, timeout=120)
        assert answer == (expected or NO_ANSWER)  # example 0 asked in the page: the library's answer
        assert browser.evaluate("document.querySelector('#answer textarea').value") == answer
        assert "Reasoning" in browser.evaluate("document.body.innerText")
