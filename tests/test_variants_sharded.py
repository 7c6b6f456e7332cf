"""`dnallm explain --vcf/--tsv --devices N` (dnallm.variants.sharded): the merged output is byte-identical to a
1-device run, bad records stay in their shard's output, --resume after a worker's real SIGKILL finishes the run
byte-identically, resuming with another N is refused, and N beyond the GPUs is refused before any work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dnallm.cli import app
from dnallm.variants import OUT_COLUMNS, explain_file, read_results
from dnallm.variants.batch import write_meta
from dnallm.variants.sharded import part_path, worker_devices
from test_variants_cli import files, flat  # noqa: F401 (the module's VCF + genome fixture)

ROOT = Path(__file__).resolve().parents[1]

# Imported by every Python process started with this folder on PYTHONPATH, the spawned workers included: the
# worker whose part file name ends in KILL_PART SIGKILLs itself right after writing its KILL_AFTER-th row (header
# excluded) - a real, unclean death at a known point, with no test hook in the library.
SITECUSTOMIZE = """
import os, signal
if os.environ.get("KILL_PART"):
    import dnallm.variants.batch as batch
    real_append, rows = batch._append, []
    def append(f, text):
        real_append(f, text)
        if f.name.endswith(os.environ["KILL_PART"]) and not text.startswith("record\\t"):
            rows.append(text)
            if len(rows) == int(os.environ["KILL_AFTER"]):
                os.kill(os.getpid(), signal.SIGKILL)
    batch._append = append
"""


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT, *(env or {}).pop("extra_path", []))),
           **(env or {})}
    return subprocess.run([sys.executable, "-m", "dnallm.cli", "explain", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_two_devices_merge_byte_identical_to_one_device_with_bad_records_in_both_shards(quickstart_dir, files,
                                                                                        tmp_path):
    pytest.importorskip("pysam")
    out, _ = quickstart_dir
    d, _ = files
    model = out / "model"
    explain_file(d / "in.vcf", d / "genome.fa", model, tmp_path / "one.tsv", vcf_out=tmp_path / "one.vcf",
                 batch_size=3, progress=False)
    res = CliRunner().invoke(app, ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model",
                                   str(model), "--out", str(tmp_path / "two.tsv"), "--vcf-out",
                                   str(tmp_path / "two.vcf"), "--batch-size", "3", "--devices", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "14 records written" in flat(res.output) and "8 with an error, 1 padded" in flat(res.output)
    assert (tmp_path / "two.tsv").read_bytes() == (tmp_path / "one.tsv").read_bytes()
    assert (tmp_path / "two.vcf").read_bytes() == (tmp_path / "one.vcf").read_bytes()
    assert (tmp_path / "two.tsv.meta.json").read_text() == (tmp_path / "one.tsv.meta.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if ".part-" in p.name) == []  # parts removed after the merge
    # chunks of 3: device 0 had records 0-2, 6-8, 12-13, device 1 records 3-5, 9-11; both had bad records and
    # good ones, and every good record got its label
    rows = read_results(tmp_path / "two.tsv")
    keys = [r["record"] for r in rows]
    bad = {r["record"] for r in rows if r["error"]}
    shard0 = set(keys[0:3] + keys[6:9] + keys[12:14])
    assert bad & shard0 and bad - shard0 and (set(keys) - bad) & shard0 and (set(keys) - bad) - shard0
    assert all(r["label"] for r in rows if not r["error"]) and len(set(keys) - bad) == 6


def test_outputs_holding_only_their_header_start_again_without_resume(quickstart_dir, files, tmp_path):
    """As with --devices 1 (`_has_records`): a part file or an OUT holding only its header (a run stopped before its
    first batch) is no output yet, so a run without --resume starts it again, whatever settings it was written with;
    one with records is never overwritten."""
    out, _ = quickstart_dir
    d, _ = files
    explain_file(d / "in.vcf", d / "genome.fa", out / "model", tmp_path / "one.tsv", batch_size=3, progress=False)
    target = tmp_path / "two.tsv"
    for path in (target, part_path(target, 0, 2), part_path(target, 1, 2)):
        path.write_text("\t".join(OUT_COLUMNS) + "\n")
        write_meta(path, {"mode": "generate", "max_new_tokens": 0})
    args = ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model", str(out / "model"),
            "--out", str(target), "--batch-size", "3", "--devices", "2", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert target.read_bytes() == (tmp_path / "one.tsv").read_bytes()
    part_path(target, 1, 2).write_text("\t".join(OUT_COLUMNS) + "\nrecord\n")  # records: never overwritten
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "exists: pass --resume to continue it" in flat(res.output), res.output
    target.unlink()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "part files of an unfinished run: pass --resume" in flat(res.output), res.output


@pytest.mark.slow  # 58 s on 2 cores
def test_resume_after_a_worker_is_killed_equals_an_uninterrupted_run_and_needs_the_same_devices(
        quickstart_dir, files, tmp_path):
    out, _ = quickstart_dir
    d, _ = files
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    args = ["--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model", str(out / "model"),
            "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "out.tsv")]
    explain_file(d / "in.vcf", d / "genome.fa", out / "model", tmp_path / "one.tsv", batch_size=2, progress=False)
    # device 0 (chunks 0, 2, 4, 6 = records 0-1, 4-5, 8-9, 12-13) dies after its 3rd row, inside its 2nd chunk
    killed = run_cli(args + ["--devices", "2"], env={"extra_path": [tmp_path / "hook"], "KILL_PART": ".part-0-of-2.tsv",
                                                       "KILL_AFTER": "3"})
    assert killed.returncode == 2, killed.stdout + killed.stderr
    assert "device 0 (cpu) stopped with exit code -9" in flat(killed.stdout) and "--resume" in flat(killed.stdout)
    assert not (tmp_path / "out.tsv").exists()
    part0 = part_path(tmp_path / "out.tsv", 0, 2).read_text().splitlines()
    one = (tmp_path / "one.tsv").read_text().splitlines()
    assert part0 == one[0:3] + one[5:6]  # header, records 0-1, record 4
    # device 1 (records 2-3, 6-7, 10-11) got as far as it got before the parent stopped it: whole chunks, in order
    part1 = part_path(tmp_path / "out.tsv", 1, 2).read_text()
    part1 = part1[:part1.rfind("\n") + 1].splitlines()  # a line torn by the stop is cut and redone by the resume
    assert part1 == (one[0:1] + one[3:5] + one[7:9] + one[11:13])[:len(part1)]
    skipped = 3 + len(part1) - 1
    # resuming with another number of devices is refused, naming the one to use; so is starting over without --resume
    res = run_cli(args + ["--devices", "3", "--resume"])
    assert res.returncode == 2 and "part files of a --devices 2 run; resume it with --devices 2" in flat(res.stdout)
    res = run_cli(args + ["--devices", "2"])
    assert res.returncode == 2 and "pass --resume to continue it" in flat(res.stdout)
    resumed = run_cli(args + ["--devices", "2", "--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{14 - skipped} records written" in flat(resumed.stdout), resumed.stdout
    assert f"({skipped} already there" in flat(resumed.stdout)
    assert (tmp_path / "out.tsv").read_bytes() == (tmp_path / "one.tsv").read_bytes()
    # the merged output is a finished 1-device output: --devices 1 --resume accepts it and has nothing to do
    res = CliRunner().invoke(app, ["explain", *args, "--resume"])
    assert res.exit_code == 0 and "0 records written" in flat(res.output) and "14 already there" in flat(res.output)
    res = CliRunner().invoke(app, ["explain", *args, "--devices", "2", "--resume"])
    assert res.exit_code == 2 and "resume it with --devices 1" in flat(res.output)


# Every worker notes its pid and then takes 5 s a row, so that the run is still going when it is stopped (and
# workers that outlive their parent are still writing when the test looks).
SLOW_WORKERS = """
import os, time
if os.environ.get("SLOW_ROWS_PIDS"):
    import dnallm.variants.batch as batch
    real_append = batch._append
    def append(f, text):
        with open(os.environ["SLOW_ROWS_PIDS"], "a") as pids:
            pids.write(f"{os.getpid()}\\n")
        real_append(f, text)
        time.sleep(5.0)
    batch._append = append
"""


@pytest.mark.slow  # a 2-worker run, stopped, then resumed
def test_workers_exit_with_a_terminated_parent_and_the_resume_finishes_the_run(quickstart_dir, files, tmp_path):
    """SIGTERM to the parent runs no `finally`: the workers must notice and exit, or they write on into the part
    files that the --resume also writes (records twice, a run that can no longer be merged)."""
    import signal
    import time

    out, _ = quickstart_dir
    d, _ = files
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SLOW_WORKERS)
    args = ["--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model", str(out / "model"),
            "--batch-size", "2", "--no-progress", "--out", str(tmp_path / "out.tsv"), "--devices", "2"]
    explain_file(d / "in.vcf", d / "genome.fa", out / "model", tmp_path / "one.tsv", batch_size=2, progress=False)
    pids = tmp_path / "pids.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (ROOT, tmp_path / "hook"))), "SLOW_ROWS_PIDS": str(pids)}
    parent = subprocess.Popen([sys.executable, "-m", "dnallm.cli", "explain", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (pids.exists() and len(set(pids.read_text().split())) == 2):
        time.sleep(0.2)
    workers = set(pids.read_text().split())
    assert len(workers) == 2 and parent.poll() is None
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)

    def alive(pid: str) -> bool:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited

    deadline = time.time() + 15
    while time.time() < deadline and any(alive(p) for p in workers):
        time.sleep(0.2)
    assert not any(alive(p) for p in workers), "workers outlived their terminated parent"
    resumed = run_cli(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert (tmp_path / "out.tsv").read_bytes() == (tmp_path / "one.tsv").read_bytes()


def test_devices_beyond_the_gpus_are_refused_and_cpu_workers_share_the_cores(files, tmp_path, monkeypatch):
    d, _ = files
    assert worker_devices(2) == (["cpu", "cpu"], max(1, (os.cpu_count() or 1) // 2))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_devices(4)[0] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model",
            str(tmp_path / "no-model"), "--out", str(tmp_path / "out.tsv")]
    res = CliRunner().invoke(app, args + ["--devices", "2"])  # refused before any worker starts or file is written
    assert res.exit_code == 2 and "--devices 2, but CUDA shows only 1 GPU(s)" in flat(res.output), res.output
    assert list(tmp_path.iterdir()) == []
    res = CliRunner().invoke(app, args + ["--devices", "0"])
    assert res.exit_code == 2 and "--devices must be >= 1, got 0" in flat(res.output)


def test_a_failing_worker_stops_the_run_with_its_message(files, tmp_path):
    d, _ = files
    res = CliRunner().invoke(app, ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model",
                                   str(tmp_path / "no-model"), "--out", str(tmp_path / "out.tsv"), "--devices", "2",
                                   "--no-progress"])
    assert res.exit_code == 2 and "(cpu): " in flat(res.output) and "is not a dnallm checkpoint" in flat(res.output)
    assert not (tmp_path / "out.tsv").exists()
