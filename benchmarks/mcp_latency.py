"""Latency of each MCP tool (issue 18): every tool called through an MCP client session, median of a few calls.

    python benchmarks/mcp_latency.py --model runs/quickstart/model [--calls 5] [--stdio] [--out latency.json]

The server is `dnallm.mcp_server` with its defaults (thinking budget 1024, batch 8, one request at a time), a
synthetic genome of KEGG test rows (`write_kegg_contigs`) as its one allow-listed FASTA, and a VCF folder with a
32-record file. Each call asks about another test row (call i: row i), so a median is over different variants.
In process (the SDK's in-memory client) by default; `--stdio` also runs every call through a `dnallm mcp`
subprocess over stdio (the transport an agent uses), started once (its start-up, model load included, is timed).
Server start in process = building the server (model load included).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from dnallm.data import load_kegg
from dnallm.genome import write_kegg_contigs
from dnallm.mcp_server import build_server, make_settings

ROOT = Path(__file__).resolve().parents[1]
INLINE, JOB = 8, 32  # explain_vcf: records inline, records in the job's file


def vcf(placed) -> str:
    return "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" + "".join(
        f"{r['chrom']}\t{r['pos']}\tr{r['row']}\t{r['ref'] or '-'}\t{r['alt'] or '-'}\t.\t.\t.\n" for r in placed)


def calls(rows, placed, i: int) -> list[tuple[str, str, dict]]:
    """(what, tool, arguments) of the i-th round: the variant of test row i, as sequences or coordinates."""
    row, where = rows[i], placed[i]
    seqs = {"question": row["question"], "reference_sequence": row["ref_window"],
            "variant_sequence": row["variant_window"]}
    coords = {"chrom": where["chrom"], "pos": where["pos"], "ref": where["ref"] or "-", "alt": where["alt"] or "-"}
    inline = placed[i * INLINE % len(placed):][:INLINE]
    return [("list_labels", "list_labels", {}), ("list_inputs", "list_inputs", {}), ("model_info", "model_info", {}),
            ("score_labels (sequences)", "score_labels", seqs), ("score_labels (coordinates)", "score_labels", coords),
            ("attribute_variant (contrast)", "attribute_variant", seqs),
            ("explain_variant (reasoning, budget 1024)", "explain_variant", seqs),
            (f"explain_vcf inline, {INLINE} records (score)", "explain_vcf", {"vcf_text": vcf(inline)}),
            (f"explain_vcf job, {JOB} records (score)", "explain_vcf", {"vcf_file": "job.vcf"})]


async def measure(target, rows, placed, n_calls: int) -> tuple[float, dict[str, list[float]]]:
    """(seconds to connect and list the tools, {what: seconds per call}) through one client session."""
    times: dict[str, list[float]] = {}
    t = time.perf_counter()
    async with Client(target, read_timeout_seconds=3600) as client:
        await client.list_tools()
        connected = time.perf_counter() - t
        for i in range(n_calls):
            for what, tool, arguments in calls(rows, placed, i):
                t = time.perf_counter()
                result = await client.call_tool(tool, arguments)
                times.setdefault(what, []).append(time.perf_counter() - t)
                if result.is_error:
                    raise RuntimeError(f"{what}: {result.content[0].text}")
    return connected, times


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--stdio", action="store_true", help="also through a `dnallm mcp` subprocess over stdio")
    p.add_argument("--out", help="write the timings as JSON")
    args = p.parse_args()
    rows = load_kegg("test")
    work = Path(tempfile.mkdtemp(prefix="mcp-latency-"))
    placed = write_kegg_contigs(rows.select(range(JOB)), work / "genome.fa")
    (work / "vcfs").mkdir()
    (work / "vcfs" / "job.vcf").write_text(vcf(placed))
    options = dict(fasta=[work / "genome.fa"], vcf_dir=work / "vcfs", jobs_dir=work / "jobs")

    t = time.perf_counter()
    server = build_server(make_settings(args.model, **options))
    results = {"server start (model load)": {"in_process": [time.perf_counter() - t]}}
    for what, ts in anyio.run(measure, server, rows, placed, args.calls)[1].items():
        results.setdefault(what, {})["in_process"] = ts
    if args.stdio:
        command = [sys.executable, "-m", "dnallm.cli", "mcp", "--model", str(Path(args.model).resolve()),
                   "--fasta", str(work / "genome.fa"), "--vcf-dir", str(work / "vcfs"),
                   "--jobs-dir", str(work / "jobs")]
        params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(ROOT),
                                       env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout's dnallm
        started, timings = anyio.run(measure, params, rows, placed, args.calls)
        results["server start (model load)"]["stdio"] = [started]  # process start, imports, model, handshake
        for what, ts in timings.items():
            results[what]["stdio"] = ts

    columns = ["in_process"] + (["stdio"] if args.stdio else [])
    print(f"| tool | calls | median {' | median '.join(c.replace('_', '-') for c in columns)} |")
    print("|---|---|" + "---|" * len(columns))
    for what, by_transport in results.items():
        n = len(by_transport["in_process"])
        print(f"| {what} | {n} | " + " | ".join(fmt(statistics.median(by_transport[c])) if c in by_transport else "–"
                                             for c in columns) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
