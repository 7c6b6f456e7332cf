"""The MCP server (`dnallm mcp`, dnallm/mcp_server.py), through the SDK's own client: in process (one server for
the module, on the cut-down quickstart checkpoint), and as a real `dnallm mcp` subprocess over stdio and HTTP.

Every answer is checked against the library call the server must agree with (`explain_variant`, `explain_file`);
errors must come back as MCP tool errors (isError) naming the problem; no tool call may make the server open a
file the operator did not name at start.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from typer.testing import CliRunner

from dnallm.cli import app
from dnallm.data import load_kegg
from dnallm.genome import write_kegg_contigs
from dnallm.inference import explain_variant, load_model
from dnallm.labels import KEGG_LABELS
from dnallm.mcp_server import build_server, make_settings
from dnallm.serving import FifoSlots
from dnallm.variants import explain_file, read_results

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"explain_variant", "score_labels", "attribute_variant", "explain_vcf", "model_info", "list_labels",
         "list_inputs"}
BUDGET = 8        # the server's --max-new-tokens: the tiny model runs into the thinking budget (fast)
MAX_INLINE = 3


def vcf_line(*cols) -> str:
    return "\t".join(str(c) for c in cols) + "\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The operator's files (a genome, a VCF folder, a jobs folder) and files outside them."""
    d = tmp_path_factory.mktemp("mcp")
    (d / "genomes").mkdir()
    placed = write_kegg_contigs(kegg_rows(), d / "genomes" / "genome.fa", rows_per_contig=6)
    outside = d / "outside"
    outside.mkdir()
    (outside / "other.fa").write_bytes((d / "genomes" / "genome.fa").read_bytes())
    p = placed
    wrong = next(b for b in "ACGT" if b not in (p[1]["ref"], p[1]["alt"]))
    small = [vcf_line("chr1", p[0]["pos"], "good", p[0]["ref"], p[0]["alt"], ".", ".", "GENE=TARDBP"),
             vcf_line("chr1", p[1]["pos"], "mismatch", wrong, p[1]["alt"], ".", ".", "."),
             "chr1\t5\tshort\tA\n"]
    big = [vcf_line("chr1", r["pos"], f"v{i}", r["ref"], r["alt"], ".", ".", ".")
           for i, r in enumerate(p[:MAX_INLINE + 1])]
    header = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    (d / "vcfs").mkdir()
    (d / "vcfs" / "big.vcf").write_text(header + "".join(big))
    (outside / "secret.vcf").write_text(header + "".join(big))
    (d / "vcfs" / "escape.vcf").symlink_to(outside / "secret.vcf")  # a link out of the folder must not work
    return {"dir": d, "placed": placed, "small": small, "big": big, "genome": d / "genomes" / "genome.fa",
            "outside_fasta": outside / "other.fa", "outside_vcf": outside / "secret.vcf"}


@pytest.fixture(scope="module")
def model_dir(quickstart_dir):
    return quickstart_dir[0] / "model"


@pytest.fixture(scope="module")
def settings(model_dir, inputs):
    d = inputs["dir"]
    return make_settings(model_dir, fasta=[inputs["genome"]], vcf_dir=d / "vcfs", jobs_dir=d / "jobs",
                         max_inline=MAX_INLINE, max_new_tokens=BUDGET, batch_size=2)


@pytest.fixture(scope="module")
def server(settings):
    return build_server(settings)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(str(model_dir.resolve()))


def call(server, name: str, arguments: dict | None = None, progress: list | None = None):
    """One tool call through an in-process client session."""
    async def main():
        async def on_progress(done, total, message):
            progress.append((done, total, message))

        async with Client(server) as client:
            return await client.call_tool(name, arguments or {},
                                          progress_callback=on_progress if progress is not None else None)
    return anyio.run(main)


def ok(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def tool_error(result) -> str:
    assert result.is_error, result.structured_content
    return result.content[0].text


@functools.lru_cache(maxsize=1)
def kegg_rows():
    return load_kegg("test").select(range(6))


def windows(i: int) -> dict:
    row = kegg_rows()[i]
    return {"reference_sequence": row["ref_window"], "variant_sequence": row["variant_window"],
            "question": row["question"]}


def coords(inputs, i: int) -> dict:
    r = inputs["placed"][i]
    return {"chrom": r["chrom"], "pos": r["pos"], "ref": r["ref"] or "-", "alt": r["alt"] or "-"}


# ---- listing ------------------------------------------------------------------------------------------------------

def test_tools_are_listed_with_descriptions_and_typed_input_and_output_schemas(server):
    async def main():
        async with Client(server) as client:
            return (await client.list_tools()).tools, client.instructions
    tools, instructions = anyio.run(main)
    by_name = {t.name: t for t in tools}
    assert set(by_name) == TOOLS
    for tool in tools:
        assert len(tool.description) > 60, tool.name            # tells an agent when to use it
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name
    variant_fields = {"question", "reference_sequence", "variant_sequence", "chrom", "pos", "ref", "alt", "genome",
                      "gene"}
    for name in ("explain_variant", "score_labels", "attribute_variant"):
        assert variant_fields <= set(by_name[name].input_schema["properties"]), name
    method = by_name["attribute_variant"].input_schema["properties"]["method"]
    assert method.get("enum") == ["contrast", "ism"]
    assert set(by_name["explain_vcf"].input_schema["properties"]) >= {"vcf_text", "vcf_file", "genome", "mode"}
    assert by_name["score_labels"].annotations.read_only_hint and not by_name["explain_vcf"].annotations.read_only_hint
    assert "model_info" in instructions and "list_inputs" in instructions


# ---- one call per tool, each equal to the library -----------------------------------------------------------------

def test_explain_variant_equals_the_library_by_sequences_and_by_coordinates(server, model, inputs):
    got = ok(call(server, "explain_variant", {**windows(0), "top_k": 4}))
    want = explain_variant(model=model, mode="generate", max_new_tokens=BUDGET, k=4,
                           **{k: v for k, v in windows(0).items()})
    assert got["label"] == want.label in KEGG_LABELS and got["reasoning"] == want.reasoning
    assert [(p["label"], p["probability"]) for p in got["top_k"]] == want.top_k
    assert got["question"] == windows(0)["question"] and got["padded"] is None
    by_coords = ok(call(server, "explain_variant", {**coords(inputs, 0), "genome": "genome.fa",
                                                    "question": windows(0)["question"], "top_k": 4}))
    assert (by_coords["label"], by_coords["reasoning"]) == (got["label"], got["reasoning"])  # the same windows
    assert by_coords["padded"] is False


def test_score_labels_gives_the_37_probabilities_of_the_library(server, model, inputs):
    got = ok(call(server, "score_labels", {**coords(inputs, 2), "gene": "TARDBP"}))  # genome left out: the only one
    want = explain_variant(model=model, mode="score", fasta=inputs["genome"], gene="TARDBP",
                           **{k: v for k, v in coords(inputs, 2).items()})
    probs = {p["label"]: p["probability"] for p in got["probabilities"]}
    assert probs == want.label_probabilities and len(probs) == 37
    assert [p["probability"] for p in got["probabilities"]] == sorted(probs.values(), reverse=True)
    assert got["label"] == want.label and "TARDBP" in got["question"]


def test_attribute_variant_gives_the_ref_vs_alt_contrast_of_the_library(server, model):
    got = ok(call(server, "attribute_variant", windows(3)))
    want = explain_variant(model=model, mode="score", contrast=True, **windows(3)).contrast
    assert got["method"] == "contrast"
    c = got["contrast"]
    assert (c["label"], c["p_variant"], c["p_reference"], c["delta_p"], c["reference_label"]) == \
        (want["label"], want["p_variant"], want["p_reference"], want["delta_p"], want["reference_label"])
    assert [(m["label"], m["delta_p"]) for m in c["movers"]] == want["movers"]


def test_attribute_variant_ism_is_the_librarys_map(server, model):
    got = ok(call(server, "attribute_variant", {**windows(3), "method": "ism"}))
    want = explain_variant(model=model, mode="score", attribution=True, **windows(3)).attribution
    assert got["method"] == "ism" and got["contrast"] is None
    m = got["ism"]
    assert (m["label"], m["log_p"], m["offsets"], m["variant_bases"], m["delta"]) == \
        (want["label"], want["log_p"], want["offsets"], want["variant_bases"], want["delta"])
    assert len(m["offsets"]) == 65 and sum(v is None for row in m["delta"] for v in row) == 65


def test_explain_vcf_inline_answers_the_good_record_and_names_the_bad_ones(server, model, inputs):
    got = ok(call(server, "explain_vcf", {"vcf_text": "".join(inputs["small"])}))  # no header: one is added
    assert got["header_added"] and got["output_path"] is None
    records = {r["id"] or r["record"]: r for r in got["records"]}
    assert got["n_records"] == 3 and got["n_errors"] == 2
    want = explain_variant(model=model, mode="score", fasta=inputs["genome"], chrom="chr1", gene="TARDBP",
                           pos=inputs["placed"][0]["pos"], ref=inputs["placed"][0]["ref"],
                           alt=inputs["placed"][0]["alt"])
    good = records["good"]
    assert good["error"] is None and good["label"] == want.label and good["gene"] == "TARDBP"
    assert [(p["label"], round(p["probability"], 6)) for p in good["top3"]] == \
        [(label, round(p, 6)) for label, p in want.top_k]
    mismatch = records["mismatch"]["error"]
    assert "line 3" in mismatch and "does not match the genome FASTA" in mismatch
    assert records["mismatch"]["label"] is None
    assert "line 4: malformed VCF line" in records["4:1"]["error"]


def test_explain_vcf_file_job_reports_progress_and_writes_what_the_cli_writes(server, model, inputs, settings,
                                                                             tmp_path):
    progress = []
    got = ok(call(server, "explain_vcf", {"vcf_file": "big.vcf", "vcf_out": True}, progress=progress))
    n = MAX_INLINE + 1
    assert got["n_records"] == n and got["n_errors"] == 0
    assert got["records"] is None  # more than max_inline: read the output file
    out = Path(got["output_path"])
    assert out.parent == settings.jobs_dir and Path(got["vcf_output_path"]).is_file()
    assert [p[0] for p in progress] == list(range(n + 1)) and {p[1] for p in progress} == {n}
    assert progress[-1][2] == f"{n}/{n} records"
    # the same function as `dnallm explain --vcf`, with the server's settings: the same file, byte for byte
    explain_file(inputs["dir"] / "vcfs" / "big.vcf", inputs["genome"], model, tmp_path / "cli.tsv",
                 batch_size=settings.batch_size, progress=False)
    assert out.read_bytes() == (tmp_path / "cli.tsv").read_bytes()
    assert all(row["label"] in KEGG_LABELS for row in read_results(out))


def test_model_info_list_labels_and_list_inputs(server, quickstart_dir, inputs):
    info = ok(call(server, "model_info"))
    metrics = json.loads((quickstart_dir[0] / "eval" / "test" / "metrics.json").read_text())
    test = next(e for e in info["evaluations"] if e["split"] == "test")
    assert test["n"] == metrics["n"]
    assert {m["mode"]: m["accuracy"] for m in test["modes"]} == \
        {mode: r["accuracy"] for mode, r in metrics["modes"].items() if isinstance(r, dict) and "accuracy" in r}
    assert info["encoder"]["type"] == "genos" and info["encoder"]["window_bp"] == 1024
    assert info["text_model"]["model_type"] == "qwen3" and info["training"]["examples"] > 0
    assert ok(call(server, "list_labels"))["labels"] == list(KEGG_LABELS)
    listed = ok(call(server, "list_inputs"))
    assert listed["genomes"] == ["genome.fa"] and listed["vcf_files"] == ["big.vcf"]  # not the link that leaves
    assert (listed["max_inline_records"], listed["max_new_tokens"]) == (MAX_INLINE, BUDGET)


# ---- errors -------------------------------------------------------------------------------------------------------

def test_caller_errors_come_back_as_tool_errors_naming_the_problem(server, inputs):
    bad = windows(0) | {"reference_sequence": "ACGTX" + windows(0)["reference_sequence"][5:]}
    assert "invalid base 'X' at position 4" in tool_error(call(server, "score_labels", bad))
    wrong = next(b for b in "ACGT" if b not in (inputs["placed"][1]["ref"], inputs["placed"][1]["alt"]))
    mismatch = coords(inputs, 1) | {"ref": wrong}
    assert "does not match the genome FASTA" in tool_error(call(server, "explain_variant", mismatch))
    big = "".join(inputs["big"])
    assert f"has {MAX_INLINE + 1} records (one per ALT); this server answers at most {MAX_INLINE} inline" in \
        tool_error(call(server, "explain_vcf", {"vcf_text": big}))
    assert "missing variant_sequence" in tool_error(call(server, "score_labels", {"reference_sequence": "ACGT"}))
    assert "not both" in tool_error(call(server, "score_labels", windows(0) | {"chrom": "chr1"}))
    assert "missing pos, ref, alt" in tool_error(call(server, "score_labels", {"chrom": "chr1"}))
    assert f"above this server's limit of {BUDGET}" in \
        tool_error(call(server, "explain_variant", windows(0) | {"max_new_tokens": BUDGET + 1}))
    assert "top_k" in tool_error(call(server, "explain_variant", windows(0) | {"top_k": 38}))  # schema check


def test_paths_outside_the_operators_allow_list_are_refused_unopened(server, inputs):
    fasta = inputs["outside_fasta"]
    for genome in (str(fasta), "../outside/other.fa", str(inputs["genome"]), "other.fa"):
        message = tool_error(call(server, "score_labels", coords(inputs, 0) | {"genome": genome}))
        assert "unknown genome: pick one of genome.fa" in message and genome not in message
    assert not fasta.with_name(fasta.name + ".fai").exists()  # pyfaidx never opened it
    for name in (str(inputs["outside_vcf"]), "../outside/secret.vcf", "escape.vcf", "missing.vcf"):
        message = tool_error(call(server, "explain_vcf", {"vcf_file": name}))
        assert "VCF file" in message and str(inputs["outside_vcf"]) not in message
    assert "ends in .vcf or .vcf.gz" in tool_error(call(server, "explain_vcf", {"vcf_file": "genome.fa"}))


def test_a_symlink_loop_in_the_vcf_folder_is_skipped_not_an_error_for_every_caller(tmp_path):
    """Path.resolve() raises on a link loop: list_inputs and every explain_vcf(vcf_file=...) failed without text."""
    from dnallm.serving import file_in_folder, files_in_folder

    folder = tmp_path.resolve()
    (folder / "good.vcf").write_text("##fileformat=VCFv4.2\n")
    (folder / "loop.vcf").symlink_to(folder / "loop.vcf")
    assert files_in_folder(folder, (".vcf",)) == ["good.vcf"]
    assert file_in_folder("good.vcf", folder, (".vcf",), "VCF file") == folder / "good.vcf"
    with pytest.raises(ValueError, match="no VCF file of that name in the server's folder"):
        file_in_folder("loop.vcf", folder, (".vcf",), "VCF file")


@pytest.mark.parametrize("before", ["", "\n", "\n\n", "##fileformat=VCFv4.2\n\n"])
def test_the_added_header_goes_after_the_meta_lines_whatever_precedes_them(before, tmp_path):
    """A leading blank line put #CHROM first, and the ## lines after it became a phantom malformed record."""
    from dnallm.mcp_server import _with_header
    from dnallm.variants.reading import read_vcf

    text, added = _with_header(before + "##fileformat=VCFv4.2\n##contig=<ID=chr1>\nchr1\t5\t.\tA\tG\t.\t.\t.\n")
    lines = text.splitlines()
    assert added and lines.index("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO") == lines.index("chr1\t5\t.\tA\tG\t.\t.\t.") - 1
    (tmp_path / "in.vcf").write_text(text)
    records = list(read_vcf(tmp_path / "in.vcf"))
    assert [(r.chrom, r.pos, r.error) for r in records] == [("chr1", 5, None)]


# ---- the queue and the batch hooks the server relies on -----------------------------------------------------------

def test_queue_hands_slots_out_in_arrival_order_also_between_a_jobs_batches():
    slots, order, held, go = FifoSlots(1), [], threading.Event(), threading.Event()

    def job():  # three model batches; releases its slot between them
        for batch in range(3):
            with slots.slot():
                order.append(f"job{batch}")
                held.set()
                go.wait()  # the first batch lasts until both quick requests are queued

    def quick(name):
        with slots.slot():
            order.append(name)

    threads = [threading.Thread(target=job)]
    threads[0].start()
    held.wait()
    for name in ("a", "b"):  # queued while the job's first batch runs
        threads.append(threading.Thread(target=quick, args=(name,)))
        threads[-1].start()
        while slots.waiting < len(threads) - 1:
            time.sleep(0.001)
    go.set()
    for t in threads:
        t.join()
    assert order == ["job0", "a", "b", "job1", "job2"]


def test_explain_file_takes_the_lock_per_batch_and_reports_each_record(model, inputs, tmp_path):
    entered, seen = [], []

    class Lock:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    explain_file(inputs["dir"] / "vcfs" / "big.vcf", inputs["genome"], model, tmp_path / "o.tsv", batch_size=2,
                 progress=False, batch_lock=Lock, on_progress=lambda done, total: seen.append((done, total)))
    assert len(entered) == 2 and seen == [(i, MAX_INLINE + 1) for i in range(1, MAX_INLINE + 2)]


# ---- the real command: stdio and HTTP subprocesses ----------------------------------------------------------------

def server_command(model_dir, inputs, *extra) -> list[str]:
    return [sys.executable, "-m", "dnallm.cli", "mcp", "--model", str(model_dir), "--fasta", str(inputs["genome"]),
            "--max-new-tokens", str(BUDGET), *extra]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's dnallm, not another installed one


def test_stdio_subprocess_lists_tools_answers_and_refuses_outside_paths(model_dir, inputs, server):
    command = server_command(model_dir, inputs)
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(ROOT), env=env())

    async def main():
        async with Client(params, read_timeout_seconds=300) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            scored = await client.call_tool("score_labels", coords(inputs, 2))
            refused = await client.call_tool("score_labels", coords(inputs, 2) | {"genome": str(inputs["genome"])})
            return tools, scored, refused
    tools, scored, refused = anyio.run(main)
    assert tools == TOOLS
    assert ok(scored) == ok(call(server, "score_labels", coords(inputs, 2)))  # the same answer as in process
    assert "unknown genome" in tool_error(refused)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_subprocess_serves_streamable_http_on_loopback(model_dir, inputs):
    port = free_port()
    proc = subprocess.Popen(server_command(model_dir, inputs, "--http", "--port", str(port)), cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while True:  # the model loads before the port opens
            assert proc.poll() is None, proc.stderr.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "the HTTP server did not start"
                time.sleep(0.5)

        async def main():
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                return await client.call_tool("list_labels", {})
        assert ok(anyio.run(main))["labels"] == list(KEGG_LABELS)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cli_refuses_a_remote_host_bad_settings_and_a_folder_without_a_checkpoint(tmp_path, model_dir):
    runner = CliRunner()
    res = runner.invoke(app, ["mcp", "--model", str(model_dir), "--http", "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "--host 0.0.0.0 is not a loopback address" in " ".join(res.output.split())
    res = runner.invoke(app, ["mcp", "--model", str(model_dir), "--vcf-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--vcf-dir needs --jobs-dir" in " ".join(res.output.split())
    res = runner.invoke(app, ["mcp", "--model", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "is not a checkpoint folder" in " ".join(res.output.split())
    res = runner.invoke(app, ["mcp", "--model", str(tmp_path)])  # a folder, but no checkpoint in it
    assert res.exit_code == 2 and "cannot load" in res.output and "no config.json" in " ".join(res.output.split())


def test_the_card_reads_any_answer_setting_and_only_this_training_runs_evaluations(tmp_path):
    """A GPU preset's `direct_answers: true` crashed the card (so `dnallm mcp` did not start); evaluations from a
    sibling checkpoint (`dnallm eval` wrote MODEL/../eval for every checkpoint under runs/) or from an earlier run in
    a reused quickstart folder were shown as this checkpoint's."""
    from dataclasses import asdict

    from dnallm.configuration import DNALLMConfig
    from dnallm.model_card import checkpoint_card, checkpoint_identity
    from dnallm.quickstart import load_preset
    from dnallm.training import SFTConfig

    ckpt = tmp_path / "run" / "model"
    ckpt.mkdir(parents=True)
    sft = SFTConfig.from_dict(load_preset(str(ROOT / "train" / "configs" / "genos-1.2b_qwen3-4b.yaml"))["sft"])
    (ckpt / "train_summary.json").write_text(json.dumps({"config": asdict(sft), "steps": 10}))
    mine = {"checkpoint": {"path": str(ckpt), "identity": checkpoint_identity(ckpt)}}
    for folder, split, record in ((ckpt / "eval", "test", mine), (tmp_path / "run" / "eval", "hard-test", mine),
                                  (tmp_path / "run" / "eval", "grouped-test", {"checkpoint": {"identity": "other"}}),
                                  (tmp_path / "run" / "eval", "val", {})):
        (folder / split).mkdir(parents=True)
        (folder / split / "metrics.json").write_text(json.dumps({"split": split, "n": 3, "mode": "score",
                                                                 "accuracy": 1.0, **record}))
    card = checkpoint_card(ckpt, DNALLMConfig())
    assert card["training"]["answers_per_record"] == {"every view": {"thinking": float(sft.thinking_answers),
                                                                     "direct": float(sft.direct_answers)}}
    assert sorted(e["split"] for e in card["evaluations"]) == ["hard-test", "test"]
