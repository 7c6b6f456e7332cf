"""`dnallm explain --vcf/--tsv --devices N`: one file explained by N worker processes, merged into one output.

Records are cut into the same fixed chunks of `batch_size` as in a 1-device run and chunk k goes to worker k % N
(`explain_file(..., shard=(k, N))`): every model batch holds the records it holds in a 1-device run, so the merged
TSV is byte-identical to `--devices 1` (on the same kind of device). Each worker is a spawned process that loads the
model once on its device (`cuda:K`; without CUDA, a CPU process with cores // N threads) and appends + fsyncs its part
file `OUT.part-K-of-N.tsv` (with its own `.meta.json`), so `--resume` continues every part as it continues a 1-device
output. When all parts are done the parent interleaves them by chunk into OUT (atomically: OUT exists only when
complete), writes OUT.meta.json as a 1-device run would and `--vcf-out` from OUT, and removes the parts. Resuming
with another N than the parts were written with is refused, naming the N to use.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import time
from pathlib import Path

from dnallm.variants.batch import _has_records, check_settings, meta_file, open_input, write_meta
from dnallm.variants.reading import OUT_COLUMNS
from dnallm.variants.vcf_out import write_vcf_out


def part_path(out: Path, rank: int, n: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}-of-{n}.tsv")


def worker_devices(n: int) -> tuple[list[str], int]:
    """(device of each worker, torch threads per worker): one GPU each, or N CPU processes sharing the cores."""
    import torch

    if n < 1:
        raise ValueError(f"--devices must be >= 1, got {n}")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if n > count:
            raise ValueError(f"--devices {n}, but CUDA shows only {count} GPU(s); use --devices {count} or fewer")
        return [f"cuda:{i}" for i in range(n)], torch.get_num_threads()
    # no CUDA: N CPU workers, each with its share of the cores (more threads than cores only slows them all)
    return ["cpu"] * n, max(1, (os.cpu_count() or 1) // n)


def _worker(rank: int, n: int, device: str, threads: int, kwargs: dict, messages) -> None:
    """One shard in its own process: its chunks into its part file; progress and the outcome go to `messages`."""
    import torch

    from dnallm.variants.batch import explain_file

    _exit_with_parent()
    torch.set_num_threads(threads)
    try:
        stats = explain_file(shard=(rank, n), device=device, progress=False,
                             on_progress=lambda done, total: messages.put(("progress", rank, done)), **kwargs)
    except Exception as e:  # the parent stops the other workers and reports this one's message
        messages.put(("error", rank, f"device {rank} ({device}): {type(e).__name__}: {e}"))
        sys.exit(1)
    messages.put(("done", rank, stats))


def _exit_with_parent() -> None:
    """Exit when the parent process does. A parent stopped by SIGTERM or SIGKILL runs no `finally`, and its workers
    would write on into the part files while a --resume starts new ones on the same files."""
    import multiprocessing
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=lambda: (wait([parent.sentinel]), os._exit(1)), daemon=True).start()


def _existing_parts(out: Path) -> dict[int, list[Path]]:
    """Part files next to OUT (and their metas), by the number of devices they were written for."""
    pattern = re.compile(re.escape(out.name) + r"\.part-(\d+)-of-(\d+)\.tsv(\.meta\.json)?$")
    found: dict[int, list[Path]] = {}
    for path in out.parent.glob(out.name + ".part-*"):
        m = pattern.match(path.name)
        if m:
            found.setdefault(int(m.group(2)), []).append(path)
    return found


def _merge(parts: list[Path], out: Path, batch_size: int, total: int) -> None:
    """Interleave the parts chunk by chunk (chunk k from part k % N) into OUT, atomically."""
    rows = []
    for path in parts:
        lines = path.read_bytes().split(b"\n")
        if lines[0].decode() != "\t".join(OUT_COLUMNS) or lines[-1] != b"":
            raise ValueError(f"cannot merge {path}: not a complete explain part file")
        rows.append(lines[1:-1])
    n, merged = len(parts), [("\t".join(OUT_COLUMNS)).encode()]
    taken = [0] * n
    for k in range((total + batch_size - 1) // batch_size):
        merged += rows[k % n][taken[k % n]:taken[k % n] + batch_size]
        taken[k % n] += batch_size
    if len(merged) - 1 != total or any(t < len(r) for t, r in zip(taken, rows)):
        raise ValueError(f"cannot merge the parts of {out}: they hold {sum(map(len, rows))} records, the input {total}")
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"\n".join(merged) + b"\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)


def explain_file_sharded(variants: str | Path, fasta: str | Path, model: str | Path, out: str | Path, devices: int,
                         fmt: str | None = None, vcf_out: str | Path | None = None, resume: bool = False,
                         batch_size: int = 8, mode: str = "score", max_new_tokens: int = 1024, progress: bool = True,
                         dtype: str = "auto", contrast: bool = False, encoder_dll: bool = False) -> dict:
    """`explain_file` spread over `devices` worker processes; the same output, summary and resume (see module doc)."""
    import torch.multiprocessing as mp
    from tqdm import tqdm

    variants, out = Path(variants), Path(out)
    fmt = check_settings(variants, fmt, mode, batch_size, vcf_out, max_new_tokens)
    _, total = open_input(variants, fmt, fasta)  # file-level and genome-build errors before any process starts
    device_list, threads = worker_devices(devices)
    if out.exists() and _has_records(out):  # a header alone is no output yet: start again (as with --devices 1)
        if not resume:
            raise FileExistsError(f"{out} exists: pass --resume to continue it, or remove it")
        # OUT appears only when a sharded run is complete, so this is a finished run or a 1-device run's output
        raise ValueError(f"cannot resume {out} with --devices {devices}: it is a finished output or a 1-device "
                         "run's; resume it with --devices 1")
    found = _existing_parts(out)
    other = sorted(set(found) - {devices})
    if other:
        raise ValueError(f"cannot {'resume' if resume else 'start'} {out} with --devices {devices}: it has part files "
                         f"of a --devices {other[0]} run; {'resume it with' if resume else 'pass --resume and'} "
                         f"--devices {other[0]}, or remove them")
    if not resume and any(_has_records(p) for p in found.get(devices, []) if p.suffix == ".tsv"):
        raise FileExistsError(f"{out} has part files of an unfinished run: pass --resume to continue it, or remove "
                              "them")
    parts = [part_path(out, rank, devices) for rank in range(devices)]
    kwargs = dict(variants=variants, fasta=fasta, model=model, fmt=fmt, resume=resume, batch_size=batch_size,
                  mode=mode, max_new_tokens=max_new_tokens, dtype=dtype, contrast=contrast, encoder_dll=encoder_dll)

    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child; spawn also gives each a clean torch
    messages = ctx.Queue()
    t0 = time.perf_counter()
    workers = [ctx.Process(target=_worker, args=(rank, devices, device_list[rank], threads,
                                                 dict(kwargs, out=parts[rank]), messages), daemon=True)
               for rank in range(devices)]
    for w in workers:
        w.start()
    done, stats, error = [0] * devices, {}, None
    bar = tqdm(total=total, unit="variant", desc=f"explain ({mode}, {devices} devices)", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        while len(stats) < devices and error is None:
            try:
                kind, rank, value = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [(r, w.exitcode) for r, w in enumerate(workers) if w.exitcode is not None and r not in stats]
                if dead:  # killed, or crashed before it could say why (a message may still be on its way)
                    time.sleep(0.5)
                    if messages.empty():
                        error = (f"device {dead[0][0]} ({device_list[dead[0][0]]}) stopped with exit code "
                                 f"{dead[0][1]}; its part file keeps what it finished: rerun with --resume")
                continue
            if kind == "progress":
                done[rank] = value
                bar.n = sum(done)
                bar.refresh()
            elif kind == "done":
                stats[rank] = value
            else:
                error = value
    finally:
        bar.close()
        if error is not None or len(stats) < devices:  # one failed (or we were interrupted): stop the others
            for w in workers:
                if w.is_alive():
                    w.terminate()
        for w in workers:
            w.join()
    if error is not None:
        raise ValueError(error)

    _merge(parts, out, batch_size, total)
    # OUT.meta.json as a 1-device run writes it (the parts' settings without the shard), then the parts go
    meta = json.loads(meta_file(parts[0]).read_text())
    meta.pop("shard")
    write_meta(out, meta)
    for path in parts:
        path.unlink()
        meta_file(path).unlink()
    seconds = time.perf_counter() - t0
    summary = {key: sum(s[key] for s in stats.values()) for key in ("written", "skipped", "errors", "padded")}
    summary.update(records=total, devices=devices, seconds=round(seconds, 3),
                   model_load_seconds=max(s["model_load_seconds"] for s in stats.values()),
                   variants_per_second=round(summary["written"] / seconds, 3) if seconds > 0 else None)
    if vcf_out is not None:
        summary["vcf_lines_dropped"] = write_vcf_out(variants, out, vcf_out)
    return summary
