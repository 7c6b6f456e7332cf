"""Training settings for benchmarks/speed.py: each one timed as >= 3 repeats over the same examples in one process.

A setting names a layout, a batch size, how the step runs (DeepSpeed ZeRO-2 as the SFT trainer runs it, or a
plain PyTorch loop) and its levers (liger fused linear cross-entropy, liger's RMSNorm/SwiGLU/RoPE kernels,
gradient checkpointing, fused AdamW). Every setting builds its model anew (same seed, same weights) so that no
DeepSpeed hooks or patched modules carry over, and every setting times the same `train_samples` KEGG training
examples, batched at its own batch size (length-grouped, as the trainer batches): `warmup` steps on those batches,
then `repeats` timed passes over all of them (batches are prepared on the device before the clock starts, as the
trainer's loader does in its own worker).

Layouts:
  baseline : linear projector, one token per base (2 x 1024 DNA tokens), the frozen encoder re-run in every step
             (BioReason's recipe), batch 1.
  fast     : mlp projector pooling 16 bases per token (2 x 64 DNA tokens), encoder outputs cached, length-grouped
             batches (as the trainer batches them).
Both: LoRA r 32 (alpha 64, no dropout) on all linear layers of the LM, the DNA marker rows trainable, AdamW lr 1e-4,
gradient clipping at 1.0, bf16 weights.

Model FLOPs (for MFU), per sample of T real tokens (padding excluded) of which A are answer tokens:
  6 * N * T + 6 * L * H * T^2 + 6 * V * d * A
N = the LM's decoder matmul weights (embeddings and head excluded; 3.63 B for the Qwen3-4B layout), counted as
2N forward + 4N backward per token (the usual 6N convention); causal attention 2 * L * H * T^2 forward (H = heads x
head dim), x3 with backward; the LM head on answer tokens only (the loss never runs it elsewhere). With the base
frozen, the backward really does ~2N (input gradients; LoRA adds ~2 %), so the hardware's useful work is ~2/3 of
this count: `mfu_frozen` reports that reading. Recomputation (gradient checkpointing) is not counted. The DNA
encoder's FLOPs are not counted (LM MFU). Peak: 989 TFLOP/s (H100/H200 SXM dense bf16, datasheet) and the
measured bf16 matmul rate of the card (`matmul_tflops`).
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import time
import traceback

import torch

from sft_step import build, parser as sft_parser
from dnallm.encoders.cache import EmbeddingCache
from dnallm.training import _batches, checkpoint_layers, collate, compile_layers, encode_examples, pad_examples

SPEC_PEAK_TFLOPS = 989.0  # dense bf16, H100 / H200 SXM datasheet

SETTINGS = {
    # name: layout, batch, engine, levers
    "baseline_ds": dict(layout="baseline", batch=1, engine="deepspeed"),
    "baseline_plain": dict(layout="baseline", batch=1, engine="plain"),
    "fast": dict(layout="fast", batch=4, engine="deepspeed"),
    "fast_flce": dict(layout="fast", batch=4, engine="deepspeed", loss="liger"),
    "fast_plain": dict(layout="fast", batch=4, engine="plain", fused_adamw=True),
    "fast_b8": dict(layout="fast", batch=8, engine="deepspeed"),
    "fast_b8_ckpt": dict(layout="fast", batch=8, engine="deepspeed", grad_ckpt=True),
    "fast_b16_ckpt": dict(layout="fast", batch=16, engine="deepspeed", grad_ckpt=True),
    # liger's kernels patch transformers' Qwen3 module globally (RoPE): these run after all the others
    "fast_liger": dict(layout="fast", batch=4, engine="deepspeed", loss="liger", kernels=True),
    "fast_liger_plain": dict(layout="fast", batch=4, engine="plain", fused_adamw=True, loss="liger", kernels=True),
    "fast_liger_plain_b8": dict(layout="fast", batch=8, engine="plain", fused_adamw=True, loss="liger",
                                kernels=True),
    "fast_liger_b8": dict(layout="fast", batch=8, engine="deepspeed", loss="liger", kernels=True),
    "fast_liger_b8_ckpt": dict(layout="fast", batch=8, engine="deepspeed", loss="liger", kernels=True,
                               grad_ckpt=True),
    "fast_liger_b16_ckpt": dict(layout="fast", batch=16, engine="deepspeed", loss="liger", kernels=True,
                                grad_ckpt=True),
    # sdpa_gqa (dnallm.attention): the masked attention of a padded batch without repeat_kv's K/V copies
    "fast_liger_plain_b8_gqa": dict(layout="fast", batch=8, engine="plain", fused_adamw=True, loss="liger",
                                    kernels=True, attn="sdpa_gqa"),
    "fast_liger_b8_ckpt_gqa": dict(layout="fast", batch=8, engine="deepspeed", loss="liger", kernels=True,
                                   grad_ckpt=True, attn="sdpa_gqa"),
    "fast_liger_plain_b8_ckpt_gqa": dict(layout="fast", batch=8, engine="plain", fused_adamw=True, loss="liger",
                                         kernels=True, grad_ckpt=True, attn="sdpa_gqa"),
    "fast_liger_plain_b16_ckpt_gqa": dict(layout="fast", batch=16, engine="plain", fused_adamw=True, loss="liger",
                                          kernels=True, grad_ckpt=True, attn="sdpa_gqa"),
    # checkpointing on a share of the layers (sft.gradient_checkpointing: 0.5 / 0.7)
    "fast_liger_plain_b8_ckpt50_gqa": dict(layout="fast", batch=8, engine="plain", fused_adamw=True, loss="liger",
                                           kernels=True, grad_ckpt=0.5, attn="sdpa_gqa"),
    "fast_liger_plain_b8_ckpt70_gqa": dict(layout="fast", batch=8, engine="plain", fused_adamw=True, loss="liger",
                                           kernels=True, grad_ckpt=0.7, attn="sdpa_gqa"),
    # larger micro-batch without checkpointing; regional torch.compile of every decoder layer (dynamic shapes:
    # the length-grouped batches differ in length)
    "fast_liger_plain_b10_gqa": dict(layout="fast", batch=10, engine="plain", fused_adamw=True, loss="liger",
                                     kernels=True, attn="sdpa_gqa"),
    # compile in place of liger's RMSNorm/SwiGLU/RoPE kernels (dynamo cannot trace those autograd functions: an
    # AssertionError at input_layernorm, H200, torch 2.11); the loss stays liger's fused linear cross-entropy
    "fast_flce_plain_b8_gqa_compile": dict(layout="fast", batch=8, engine="plain", fused_adamw=True, loss="liger",
                                           attn="sdpa_gqa", compile=True),
    "fast_flce_plain_b8_ckpt70_gqa_compile": dict(layout="fast", batch=8, engine="plain", fused_adamw=True,
                                                  loss="liger", grad_ckpt=0.7, attn="sdpa_gqa", compile=True),
    # the library's own SFT (dnallm.training.train_sft: transformers' Trainer on one device, no DeepSpeed), its
    # options as a preset would set them; timed as described in run_trainer
    "trainer_b8_ckpt70_compile": dict(layout="fast", batch=8, engine="trainer", attn="sdpa_gqa",
                                      sft=dict(liger=True, compile=True, gradient_checkpointing=0.7)),
    "trainer_b8_compile": dict(layout="fast", batch=8, engine="trainer", attn="sdpa_gqa",
                               sft=dict(liger=True, compile=True)),
    "trainer_b8": dict(layout="fast", batch=8, engine="trainer", attn="sdpa_gqa", sft=dict(liger=True)),
    "trainer_b4_plain": dict(layout="fast", batch=4, engine="trainer", sft={}),  # runs on the CPU too (--cpu-smoke)
}
BASELINES = ("baseline_ds", "baseline_plain")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(n: int = 8192) -> float | None:
    """The card's bf16 matrix rate on random data (median of triton's do_bench), a measured MFU ceiling."""
    if not torch.cuda.is_available():
        return None
    from triton.testing import do_bench

    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=100, rep=500, return_mode="median")
    return round(2 * n**3 / (ms * 1e-3) / 1e12, 1)


def lm_dims(model) -> dict:
    c = model.language_model.config
    heads = c.num_attention_heads * c.head_dim
    per_layer = c.hidden_size * heads * 2 + c.hidden_size * c.num_key_value_heads * c.head_dim * 2 \
        + 3 * c.hidden_size * c.intermediate_size
    return {"N": per_layer * c.num_hidden_layers, "L": c.num_hidden_layers, "H": heads, "d": c.hidden_size,
            "V": c.vocab_size}


def model_flops(batch: dict, dims: dict) -> float:
    T = batch["attention_mask"].sum(1).double()
    A = (batch["labels"][:, 1:] != -100).sum(1).double()
    return float((6 * dims["N"] * T + 6 * dims["L"] * dims["H"] * T**2 + 6 * dims["V"] * dims["d"] * A).sum())


def text_batch(chunk: list[dict], pad: int) -> dict:
    """`collate` without the cached encoder outputs (the baseline encodes its windows inside the step)."""
    return pad_examples(chunk, pad)


def layout_args(layout: str, text: str, encoder: str, fast_stride: int, setting: dict):
    if layout == "baseline":
        argv = ["--projector", "linear", "--stride", "1", "--no-cache"]
    else:
        argv = ["--projector", "mlp", "--stride", str(fast_stride)]
    argv += ["--text", text, "--encoder", encoder, "--batch", str(setting["batch"]), "--attn", setting.get("attn", "sdpa")]
    if setting.get("grad_ckpt"):
        argv.append("--grad-ckpt")
    return sft_parser().parse_args(argv)


def prepare(model, records, setting: dict, device, dtype, no_cache: bool) -> list[dict]:
    """All of `records` as length-grouped batches on the device (every setting times the same examples)."""
    examples = encode_examples(model, records, max_length=8192)
    pad = model.processor.tokenizer.pad_token_id
    batches = _batches(examples, setting["batch"], random.Random(0))
    out = []
    if no_cache:
        for chunk in batches:
            b = text_batch(chunk, pad)
            b.update(model.processor.tokenize_dna([w for e in chunk for w in e["windows"]]))
            out.append({k: v.to(device) for k, v in b.items()})
    else:
        cache = EmbeddingCache(model.dna_encoder, dtype=dtype, device=device)
        cache.add([w for c in batches for e in c for w in e["windows"]])
        out = [{k: v.to(device) for k, v in collate(chunk, cache, pad).items()} for chunk in batches]
    return out


def run_trainer(name: str, setting: dict, model, records, args, device, dtype) -> dict:
    """`train_sft` itself, timed by difference: runs from step 0 on the same model, stopping after 1 pass
    (warm-up: compilation, allocator), then 1, 2, ..., 1 + repeats passes of `train_samples` examples; pass k's time
    is t(k + 1) - t(k), so loading, encoding, caching and the save at the stop cancel out. One epoch spans (repeats + 2) x train_samples distinct training records (no evaluation is reached),
    so the timed passes are other examples than the plain-loop settings time: FLOPs per sample are the mean over
    those records."""
    import tempfile
    from pathlib import Path

    from dnallm.training import SFTConfig, train_sft

    n, batch, repeats = args.train_samples, setting["batch"], args.train_repeats
    if n % batch:
        raise ValueError(f"--train-samples {n} is not a multiple of the batch size {batch}")
    epoch = records.select(range(n * (repeats + 2)))
    val = records.select(range(n * (repeats + 2), n * (repeats + 2) + 1))
    dims = lm_dims(model)
    examples = encode_examples(model, epoch, max_length=8192)
    flops_per_sample = statistics.mean(
        6 * dims["N"] * len(e["input_ids"]) + 6 * dims["L"] * dims["H"] * len(e["input_ids"]) ** 2
        + 6 * dims["V"] * dims["d"] * sum(1 for t in e["labels"][1:] if t != -100) for e in examples)
    tokens_per_sample = statistics.mean(len(e["input_ids"]) for e in examples)
    cfg = dict(epochs=1.0, batch_size=batch, bf16=dtype == torch.bfloat16, lr_projector=1e-4, lr_lora=1e-4,
               tensorboard=False, deepspeed=None, log_every=10**6, **setting["sft"])
    steps = n // batch
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, passes in enumerate([1] + list(range(1, repeats + 2))):
            sync()
            t = time.perf_counter()
            train_sft(model, epoch, val, SFTConfig(**cfg, stop_after_steps=steps * passes), Path(tmp) / str(i))
            sync()
            seconds.append(time.perf_counter() - t)
    rates = [n / (b - a) for a, b in zip(seconds[1:], seconds[2:])]
    rate = statistics.median(rates)
    row = {"setting": name, "batch": batch, "engine": "trainer", "sft": setting["sft"],
           "run_seconds": [round(x, 2) for x in seconds], "samples_per_s": round(rate, 3),
           "samples_per_s_all": [round(r, 3) for r in rates], "spread_pct": round(100 * (max(rates) - min(rates)) / rate, 1),
           "tokens_per_s": round(rate * tokens_per_sample, 1), "mean_tokens_per_sample": round(tokens_per_sample),
           "model_tflops_per_s": round(rate * flops_per_sample / 1e12, 1),
           "mfu_pct": round(100 * rate * flops_per_sample / 1e12 / SPEC_PEAK_TFLOPS, 1),
           "mfu_frozen_pct": round(100 * rate * flops_per_sample * 2 / 3 / 1e12 / SPEC_PEAK_TFLOPS, 1)}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def run_setting(name: str, setting: dict, records, args, device, dtype) -> dict:
    import deepspeed

    a = layout_args(setting["layout"], args.text, args.encoder, args.fast_stride, setting)
    gc.collect()  # DeepSpeed's engine and the model form reference cycles: collect the last setting's first
    resident = torch.cuda.memory_allocated() / 2**30 if device.type == "cuda" else None  # left by earlier settings
    model = build(a, device, dtype)
    if setting["engine"] == "trainer":
        try:
            return run_trainer(name, setting, model, records, args, device, dtype)
        finally:
            del model
    if setting.get("grad_ckpt"):  # the library's form (non-reentrant, per layer) over build()'s reentrant one
        checkpoint_layers(model.language_model, setting["grad_ckpt"])
    if setting.get("kernels"):  # what sft.liger applies: liger's RMSNorm/SwiGLU/RoPE kernels in the LM
        from dnallm.losses import apply_liger_kernels

        apply_liger_kernels(model.language_model)
    if setting.get("compile"):  # what sft.compile applies: one compiled graph shared by the 36 decoder layers
        compile_layers(model.language_model)
    model.loss_chunk_size = setting.get("loss", 1024)
    model.train()
    dims = lm_dims(model)
    timed = prepare(model, records.select(range(args.train_samples)), setting, device, dtype, no_cache=a.no_cache)
    warm = [timed[i % len(timed)] for i in range(args.train_warmup)]
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    engine = None
    if setting["engine"] == "deepspeed":
        optimizer = torch.optim.AdamW(trainable, lr=1e-4)
        ds = json.load(open(a.zero))
        ds["bf16"] = {"enabled": dtype == torch.bfloat16}
        ds.update(train_micro_batch_size_per_gpu=setting["batch"], gradient_accumulation_steps=1)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)

        def step(batch):
            loss = engine(**batch)["loss"]
            engine.backward(loss)
            engine.step()
            return loss
    else:
        fused = bool(setting.get("fused_adamw")) and device.type == "cuda"
        optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=fused or None)

        def step(batch):
            loss = model(**batch)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for b in warm:
        loss = step(b)
    sync()
    seconds = []
    for _ in range(args.train_repeats):
        sync()
        t = time.perf_counter()
        for b in timed:
            loss = step(b)
        sync()
        seconds.append(time.perf_counter() - t)
    final_loss = float(loss.detach())
    samples = sum(b["input_ids"].shape[0] for b in timed)
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    padded = sum(b["attention_mask"].numel() for b in timed)
    flops = sum(model_flops(b, dims) for b in timed)
    rates = [samples / s for s in seconds]
    med = statistics.median(seconds)
    row = {"setting": name, **{k: v for k, v in setting.items()}, "steps_per_repeat": len(timed),
           "repeats": len(seconds),
           "samples_per_s": round(samples / med, 3), "samples_per_s_all": [round(r, 3) for r in rates],
           "spread_pct": round(100 * (max(rates) - min(rates)) / (samples / med), 1),
           "tokens_per_s": round(tokens / med, 1), "mean_tokens_per_sample": tokens // samples,
           "padding_pct": round(100 * (1 - tokens / padded), 1),
           "model_tflops_per_s": round(flops / med / 1e12, 1),
           "mfu_pct": round(100 * flops / med / 1e12 / SPEC_PEAK_TFLOPS, 1),
           "mfu_frozen_pct": round(100 * flops * 2 / 3 / med / 1e12 / SPEC_PEAK_TFLOPS, 1),
           "trainable_params": n_trainable, "lm_matmul_params": dims["N"], "loss": round(final_loss, 4)}
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        row["resident_before_gib"] = round(resident, 2)
    if engine is not None:
        engine.destroy()
    del engine, optimizer, model, warm, timed, step, trainable
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def run_training(names: list[str], records, args, device, dtype) -> dict:
    """Every named setting in order (liger-kernel ones last), each failure reported and skipped; the summary
    has the fast settings' ratios over the faster baseline."""
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown training settings {unknown}; known: {list(SETTINGS)}")
    names = sorted(names, key=lambda n: bool(SETTINGS[n].get("kernels")))  # stable: patched ones last
    rows = {}
    for name in names:
        try:
            row = run_setting(name, SETTINGS[name], records, args, device, dtype)
        except Exception as e:  # noqa: BLE001 - one setting's failure (OOM, a missing kernel) must not end the run
            traceback.print_exc()
            row = {"setting": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        gc.collect()  # after run_setting's frame is gone (its locals kept the engine/model cycle alive)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows[name] = row
        print("RESULT train " + json.dumps(row), flush=True)
    base = [rows[b]["samples_per_s"] for b in BASELINES if b in rows and "samples_per_s" in rows[b]]
    summary = {}
    if base:
        ref = max(base)
        for name, row in rows.items():
            if "samples_per_s" in row:
                row["vs_faster_baseline"] = round(row["samples_per_s"] / ref, 2)
        summary["faster_baseline_samples_per_s"] = ref
    print("\n| setting | batch | samples/s median | repeats | spread % | vs faster baseline | tokens/s | MFU % (6N) "
          "| MFU % (frozen 4N) | peak GiB |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        if "error" in row:
            print(f"| {name} | | failed: {row['error'][:80]} | | | | | | | |")
            continue
        print(f"| {name} | {row['batch']} | {row['samples_per_s']} | {row['samples_per_s_all']} | {row['spread_pct']} "
              f"| {row.get('vs_faster_baseline', '')} | {row['tokens_per_s']} | {row['mfu_pct']} "
              f"| {row['mfu_frozen_pct']} | {row.get('peak_mem_gib')} |")
    summary["rows"] = rows
    return summary
