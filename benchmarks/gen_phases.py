"""`speed.py --only-generate ...` of any code version, with where its generation job's time goes (issue 15).

Run from the root of the code version to measure (this tree, or a `git archive` of an older commit with its own
benchmarks/speed.py), with speed.py's own arguments:

    python benchmarks/gen_phases.py --only-generate 128 --gen-tokens 192 --score-n 32
    cd old_ref && PYTHONPATH=. python ../benchmarks/gen_phases.py --only-generate 128 --gen-tokens 192 --score-n 32

It runs that version's `speed.main()` unchanged, and around each `answer_rate` (warm-up + timed job) it times
every `model.generate` call (the reasoning) and every `dnallm.scoring.continuation_label_logprobs` call (the label
pass of the constrained answer), with a device sync on both sides; it records every StaticCache built (batch rows
are known only later, so the max_cache_len asked for) and, after the job, torch.compile's counters (graphs compiled,
recompilations, CUDA-graph recordings) and compile times, and the live / running-peak GPU memory around each call.
Prints `RESULT phases {...}` lines; speed.py's own `RESULT generate_fast` line is unchanged. The syncs add nothing
measurable: they sit at call boundaries only. JOB_CACHE_REUSE=1 (this tree only) sets `_JobCache.reuse`.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd() / "benchmarks"))
import speed  # noqa: E402  (the measured version's own speed.py)

import dnallm.scoring as scoring  # noqa: E402
import transformers.cache_utils as cache_utils  # noqa: E402

TIMES: dict[str, list[float]] = defaultdict(list)
MEMORY: dict[str, list[tuple[float, float]]] = defaultdict(list)
CACHES: list[int] = []
ACTIVE = [False]


def timed(name, fn):
    def wrapper(*args, **kwargs):
        if not ACTIVE[0]:
            return fn(*args, **kwargs)
        torch.cuda.synchronize()
        live = torch.cuda.memory_allocated()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        TIMES[name].append(round(time.perf_counter() - t, 3))
        # live GiB before the call, and the running peak after it (where the job's peak was reached)
        MEMORY[name].append((round(live / 2**30, 1), round(torch.cuda.max_memory_allocated() / 2**30, 1)))
        return out
    return wrapper


scoring.continuation_label_logprobs = timed("label_pass", scoring.continuation_label_logprobs)
_static_init = cache_utils.StaticCache.__init__


def _record_static(self, *args, **kwargs):
    if ACTIVE[0]:
        CACHES.append(kwargs.get("max_cache_len", args[1] if len(args) > 1 else None))
    _static_init(self, *args, **kwargs)


cache_utils.StaticCache.__init__ = _record_static


def dynamo_summary() -> dict:
    from torch._dynamo.utils import counters

    out = {"stats": dict(counters.get("stats", {})), "frames": dict(counters.get("frames", {})),
           "recompiles": dict(counters.get("recompiles", {})),
           "inductor_cudagraph": {k: v for k, v in counters.get("inductor", {}).items() if "cudagraph" in k.lower()},
           "graph_break": sum(counters.get("graph_break", {}).values())}
    try:
        from torch._dynamo.utils import compile_times

        out["compile_times"] = compile_times(repr="str", aggregate=True)[-1500:]
    except Exception as e:  # noqa: BLE001  (a diagnostic only)
        out["compile_times"] = repr(e)
    return out


_answer_rate = speed.answer_rate


def answer_rate(model, *args, **kwargs):
    TIMES.clear()
    MEMORY.clear()
    CACHES.clear()
    model.generate = timed("generate", model.generate)  # instance attribute: what generate_answers calls
    ACTIVE[0] = True
    t = time.perf_counter()
    try:
        row = _answer_rate(model, *args, **kwargs)
    finally:
        ACTIVE[0] = False
        del model.generate
    gc = getattr(model, "generation_config", None) or getattr(getattr(model, "text_model", None), "generation_config", None)
    print("RESULT phases " + json.dumps({
        "cwd": str(Path.cwd()), "wall_s": round(time.perf_counter() - t, 2),
        "generate_s (warm-up first)": TIMES["generate"], "label_pass_s": TIMES["label_pass"],
        "generate_gib (live before, running peak after)": MEMORY["generate"],
        "label_pass_gib (live before, running peak after)": MEMORY["label_pass"],
        "static_cache_lengths_built": CACHES,
        "compile_config": repr(getattr(gc, "compile_config", None)),
        "dynamo": dynamo_summary()}), flush=True)
    return row


speed.answer_rate = answer_rate


def dump_sources(path: str) -> None:
    """The installed transformers' generate pieces that decide compilation and the static cache."""
    from transformers import GenerationMixin
    from transformers.generation import configuration_utils

    parts = []
    for name in ("_valid_auto_compile_criteria", "_prepare_cache_for_generation", "_prepare_static_cache",
                 "_get_cache", "_supports_default_dynamic_cache"):
        fn = getattr(GenerationMixin, name, None)
        parts.append(f"#### GenerationMixin.{name}\n" + (inspect.getsource(fn) if fn else "(absent)\n"))
    parts.append("#### CompileConfig\n" + inspect.getsource(configuration_utils.CompileConfig))
    parts.append("#### StaticCache\n" + inspect.getsource(cache_utils.StaticCache))
    parts.append("#### StaticLayer\n" + inspect.getsource(cache_utils.StaticLayer))
    Path(path).write_text("\n".join(parts))


if __name__ == "__main__":
    import transformers

    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    if os.environ.get("JOB_CACHE_REUSE"):  # this tree only: one static cache object reset between batches
        import dnallm.inference

        dnallm.inference._JobCache.reuse = True
    if os.environ.get("DUMP_HF_SOURCES"):
        dump_sources(os.environ["DUMP_HF_SOURCES"])
    sys.argv = ["speed.py", *sys.argv[1:]]
    speed.main()
