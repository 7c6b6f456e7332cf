"""SFT step throughput at the seed sizes, random init (no weights are reachable offline).

    python benchmarks/sft_step.py --encoder genos-1.2b --text qwen3-4b --batch 1 --stride 1 --steps 6

Builds the real layouts from config (Genos via Mixtral classes, Qwen3), wires them with
`DNALLMForConditionalGeneration.from_parts`, wraps the model in DeepSpeed (ZeRO-2 JSON, bf16) and times optimizer steps on
real KEGG training examples. --no-cache re-runs the frozen encoder every step (the BioReason way).
Prints one JSON line: samples/s, tokens/s, peak GPU memory, the card.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch

from dnallm.configuration import DNALLMConfig
from dnallm.data import load_kegg
from dnallm.encoders.cache import EmbeddingCache
from dnallm.encoders.genos import GenosEncoder, build_base_tokenizer, genos_config
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.tokenization import BUNDLED_QWEN3_TOKENIZER, load_text_tokenizer
from dnallm.training import _batches, collate, encode_examples
from qwen3_layouts import qwen3_config  # benchmarks/ is on sys.path when a script here runs


# Encoders whose code cannot run here are replaced by a 2-layer stand-in with the real encoder's hidden size, and
# the real number of DNA positions per 1024 bp window is matched through the projector stride (NT: 6-mers).
# Encoder outputs are cached before the timed steps, so the step cost depends only on these two shapes.
STAND_INS = {"nt-500m": (1024, 6), "hyenadna": (256, 1), "evo2-1b": (1920, 1)}


# CPU smoke tests of the benchmark code (`--encoder tiny --text tiny`): 2-layer look-alikes of both layouts.
TINY_ENCODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, num_local_experts=2)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16)


def text_config(name: str):
    return qwen3_config("1.7b", **TINY_TEXT) if name == "tiny" else qwen3_config(name.removeprefix("qwen3-"))


def encoder_config(name: str):
    if name == "tiny":
        return genos_config("1.2b", **TINY_ENCODER)
    if name.startswith("genos-"):
        return genos_config(name.removeprefix("genos-"))
    hidden, _ = STAND_INS[name]
    return genos_config("1.2b", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2)


def build(args, device, dtype) -> DNALLMForConditionalGeneration:
    from transformers import MixtralModel, Qwen3ForCausalLM

    torch.manual_seed(0)
    if args.encoder in STAND_INS:
        args.stride = max(args.stride, STAND_INS[args.encoder][1])
    with torch.device(device):
        encoder_model = MixtralModel(encoder_config(args.encoder)).to(dtype)
        text_model = Qwen3ForCausalLM(text_config(args.text)).to(dtype)
    if args.attn:
        text_model.config._attn_implementation = args.attn
    encoder = GenosEncoder(encoder_model, build_base_tokenizer(), -1, f"random-init {args.encoder}")
    config = DNALLMConfig(projector_type=args.projector, projector_stride=args.stride, lora_r=args.lora_r,
                          lora_alpha=2 * args.lora_r, lora_dropout=0.0)
    model = DNALLMForConditionalGeneration.from_parts(config, encoder, text_model, load_text_tokenizer(str(BUNDLED_QWEN3_TOKENIZER)),
                                         dtype=dtype)
    model.add_lora()
    model.loss_chunk_size = args.loss_chunk
    if args.grad_ckpt:
        model.language_model.gradient_checkpointing_enable()
        model.language_model.enable_input_require_grads()
    return model.to(device)


def time_sft_steps(model, records, args, device, dtype) -> dict:
    """DeepSpeed-wrapped optimizer steps on real examples; returns throughput and peak memory."""
    import deepspeed

    examples = encode_examples(model, records, max_length=8192)
    cache = EmbeddingCache(model.dna_encoder, dtype=dtype, device=device)
    if not args.no_cache:
        cache.add([w for e in examples for w in e["windows"]])
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    ds_config = {**json.load(open(args.zero)), "train_micro_batch_size_per_gpu": args.batch,
                 "gradient_accumulation_steps": 1}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    pad = model.processor.tokenizer.pad_token_id
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    batches = _batches(examples, args.batch, random.Random(0))  # length-grouped, as the trainer batches
    times, tokens = [], 0
    for step in range(args.warmup + args.steps):
        chunk = batches[step]
        batch = collate(chunk, cache, pad)
        if args.no_cache:  # BioReason-style: the frozen encoder runs inside every step
            batch.pop("dna_hidden_states"), batch.pop("dna_positions_mask")
            batch.update(model.processor.tokenize_dna([w for e in chunk for w in e["windows"]]))
        batch = {k: v.to(device) for k, v in batch.items()}
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = engine(**batch)["loss"]
        engine.backward(loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
            tokens += int(batch["attention_mask"].sum())
    seconds = sum(times)
    engine.destroy()  # drop DeepSpeed's hooks and buffers so later work on this card gets the memory
    del engine, optimizer
    return {"label": args.label, "encoder": args.encoder + (" (stand-in shape)" if args.encoder in STAND_INS else ""),
            "text": args.text, "projector": args.projector, "stride": args.stride, "batch": args.batch,
            "encoder_cached": not args.no_cache, "grad_ckpt": args.grad_ckpt, "loss_chunk": args.loss_chunk,
            "lora_r": args.lora_r,
            "zero": os.path.basename(args.zero), "steps": args.steps,
            "samples_per_s": round(args.batch * args.steps / seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "mean_tokens_per_sample": tokens // (args.batch * args.steps),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "loss": round(loss.item(), 4)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--encoder", default="genos-1.2b")
    p.add_argument("--text", default="qwen3-4b")
    p.add_argument("--projector", default="mlp")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--lora-r", type=int, default=32)
    p.add_argument("--no-cache", action="store_true", help="re-run the encoder every step")
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--attn", default="sdpa_gqa", help="the library's default for Qwen3 (dnallm.attention)")
    p.add_argument("--zero", default="train/configs/zero2.json")
    p.add_argument("--label", default="")
    p.add_argument("--loss-chunk", type=int, default=1024, help="answer tokens per LM-head chunk; 0 = full logits")
    return p


def init_distributed(device) -> None:
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(k, v)
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")


def main() -> None:
    args = parser().parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_distributed(device)
    model = build(args, device, torch.bfloat16)
    records = load_kegg("train").select(range(args.batch * (args.steps + args.warmup)))
    print("RESULT " + json.dumps(time_sft_steps(model, records, args, device, torch.bfloat16)), flush=True)


if __name__ == "__main__":
    main()
