"""Supervised fine-tuning: frozen encoder (run once, cached), trainable projector + LoRA.

The same loop runs on CPU (tiny preset, plain AdamW) and on GPUs under DeepSpeed (ZeRO JSON config, bf16).
Checkpoint selection uses the validation split only; the test split is never read here.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import yaml

from dnallm.encoders.cache import EmbeddingCache
from dnallm.modeling import DNALLMForCausalLM


@dataclass
class SFTConfig:
    epochs: float = 2.0
    batch_size: int = 8              # per device
    grad_accum: int = 1
    lr_projector: float = 1e-3
    lr_lora: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    max_length: int = 4096           # prompt + DNA + answer tokens; longer examples are an error, not cut
    eval_batch_size: int = 16
    evals_per_epoch: int = 1
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    deepspeed: str | dict | None = None  # path to (or dict of) a DeepSpeed JSON config
    log_every: int = 10
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "SFTConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SFT options {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SFTConfig":
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def encode_examples(model: DNALLMForCausalLM, records, max_length: int) -> list[dict]:
    """Tokenize every record once: prompt + answer ids, labels on the answer only, and its two windows."""
    proc = model.processor
    out = []
    for r in records:
        windows = [r["ref_window"], r["variant_window"]]
        b = proc([proc.prompt(r["question"])], [windows], targets=[proc.target(r["reasoning"], r["label"])],
                 dna_ids=False)
        n = b["input_ids"].shape[1]
        if n > max_length:
            raise ValueError(f"row {r.get('row')}: {n} tokens exceed max_length {max_length}")
        out.append({"input_ids": b["input_ids"][0], "labels": b["labels"][0], "windows": windows})
    return out


def collate(examples: list[dict], cache: EmbeddingCache, pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = e["input_ids"], e["labels"], 1
    hidden, mask = cache.lookup([w for e in examples for w in e["windows"]])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "dna_hidden_states": hidden, "dna_positions_mask": mask}


def _batches(examples: list[dict], batch_size: int, rng: random.Random) -> list[list[dict]]:
    # Shuffle, then sort inside chunks of 16 batches by length so batches carry little padding.
    order = rng.sample(range(len(examples)), len(examples))
    chunk = batch_size * 16
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: len(examples[i]["input_ids"]))
        batches += [[examples[i] for i in part[j:j + batch_size]] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def answer_loss(model: DNALLMForCausalLM, examples: list[dict], cache: EmbeddingCache, batch_size: int,
                bf16: bool = False) -> float:
    """Mean per-token loss on the answer (reasoning + label line + end of turn)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(examples[i:i + batch_size], cache,
                                                           model.processor.tokenizer.pad_token_id).items()}
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        total += out["loss"].item() * out["n_tokens"]
        count += out["n_tokens"]
    return total / max(1, count)


def train_sft(model: DNALLMForCausalLM, train_records, val_records, cfg: SFTConfig, out_dir: str | Path) -> dict:
    """Train projector + LoRA; keep the checkpoint with the lowest validation answer loss in out_dir."""
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    rank = int(os.environ.get("RANK", 0))
    device = model.device
    model.encoder.to(device)

    train = encode_examples(model, train_records, cfg.max_length)
    val = encode_examples(model, val_records, cfg.max_length)
    # The frozen encoder runs once per distinct window (many KEGG windows repeat), never per step.
    cache = EmbeddingCache(model.encoder, dtype=torch.bfloat16 if cfg.bf16 else torch.float32)
    t0 = time.time()
    cache.add([w for e in train + val for w in e["windows"]], batch_size=cfg.eval_batch_size)
    print(f"[sft] encoder cache: {len(cache)} distinct windows in {time.time() - t0:.0f}s", flush=True)

    if cfg.gradient_checkpointing:
        model.text_model.gradient_checkpointing_enable()
        model.text_model.enable_input_require_grads()
    lora_params = [p for n, p in model.text_model.named_parameters() if p.requires_grad]
    groups = [{"params": list(model.projector.parameters()), "lr": cfg.lr_projector},
              {"params": lora_params, "lr": cfg.lr_lora}]
    groups = [g for g in groups if g["params"]]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_updates = max(1, math.ceil(steps_per_epoch * cfg.epochs / cfg.grad_accum))
    warmup = max(1, int(total_updates * cfg.warmup_ratio))
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_updates) / total_updates)))

    engine = None
    if cfg.deepspeed:
        import deepspeed

        ds_config = cfg.deepspeed if isinstance(cfg.deepspeed, dict) else json.loads(Path(cfg.deepspeed).read_text())
        ds_config = {**ds_config, "train_micro_batch_size_per_gpu": cfg.batch_size,
                     "gradient_accumulation_steps": cfg.grad_accum, "gradient_clipping": cfg.max_grad_norm}
        ds_config.pop("train_batch_size", None)
        engine, optimizer, _, schedule = deepspeed.initialize(model=model, optimizer=optimizer,
                                                              lr_scheduler=schedule, config=ds_config)

    eval_every = max(1, steps_per_epoch // max(1, cfg.evals_per_epoch))
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    history, best, step = [], math.inf, 0
    start = time.time()
    pad_id = model.processor.tokenizer.pad_token_id
    while step < total_steps:
        for batch_examples in _batches(train, cfg.batch_size, rng):
            if step >= total_steps:
                break
            model.train()
            batch = {k: v.to(device) for k, v in collate(batch_examples, cache, pad_id).items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and engine is None):
                loss = (engine or model)(**batch)["loss"]
            if engine is not None:
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.grad_accum).backward()
                if (step + 1) % cfg.grad_accum == 0:
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm)
                    optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.log_every == 0 and rank == 0:
                print(f"[sft] step {step}/{total_steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
            if step % eval_every == 0 or step == total_steps:
                val_loss = answer_loss(model, val, cache, cfg.eval_batch_size, cfg.bf16)
                history.append({"step": step, "epoch": round(step / steps_per_epoch, 3), "train_loss": loss.item(),
                                "val_loss": val_loss})
                improved = val_loss < best
                if improved:
                    best = val_loss
                    if rank == 0:
                        model.save_pretrained(out_dir)
                if rank == 0:
                    print(f"[sft] step {step}: val answer loss {val_loss:.4f}{' (best, saved)' if improved else ''}",
                          flush=True)
    summary = {"best_val_loss": best, "steps": step, "train_seconds": round(time.time() - start, 1),
               "history": history, "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}}
    if rank == 0:
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
