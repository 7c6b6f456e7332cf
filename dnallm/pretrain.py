"""Brief pretraining of the tiny stand-in models (no pretrained weights are reachable offline).

- DNA: a small Genos-layout MoE (Mixtral classes) trained by next-base prediction on the training windows.
- Text: a small Qwen3-layout LM trained by next-token prediction on the training questions and reasoning,
  with the Qwen3 tokenizer pruned to the training text's vocabulary (see `dnallm.tokenization`).
Both are saved with `save_pretrained` and then loaded exactly like real checkpoints.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from transformers import MixtralForCausalLM, Qwen3Config, Qwen3ForCausalLM

from dnallm.encoders.genos import build_base_tokenizer, genos_config


def _lm_steps(model, tokenizer, batches, out_dir, lr: float, log_every: int, what: str, device: str = "cpu",
              stop_after: int | None = None) -> list[float]:
    """Plain AdamW next-token training with warmup + cosine decay, then model and tokenizer saved to `out_dir`;
    returns the loss curve. stop_after ends the run early with the full run's schedule (the tests replay it)."""
    total = len(batches)
    if total == 0:  # e.g. text_pretrain.epochs x rows < 1: no step to take, and the schedule would divide by 0
        raise ValueError(f"{what}: the settings give no training batch (check steps / epochs and the training rows)")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * s / total)))
    model.train()
    losses, start = [], time.time()
    for step, batch in enumerate(batches[:stop_after]):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % log_every == 0 or step == total - 1:
            print(f"[{what}] step {step + 1}/{total} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval().cpu()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return losses


def pretrain_dna_encoder(windows: list[str], out_dir: str | Path, steps: int = 120, batch_size: int = 16,
                         lr: float = 2e-3, seed: int = 0, device: str = "cpu", stop_after: int | None = None,
                         **layout) -> list[float]:
    """Train a tiny Genos-layout DNA LM on `windows` by next-base prediction and save it to `out_dir`."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = build_base_tokenizer()
    layout = {"vocab_size": 128, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, **layout}
    model = MixtralForCausalLM(genos_config("1.2b", **layout))
    windows = sorted(set(windows))
    batches = [dict(tokenizer(rng.sample(windows, min(batch_size, len(windows))), return_tensors="pt", padding=True,
                              add_special_tokens=False)) for _ in range(steps)]
    return _lm_steps(model, tokenizer, batches, out_dir, lr, max(1, steps // 6), "dna pretrain", device=device,
                     stop_after=stop_after)


def pretrain_text_model(tokenizer, texts: list[str], out_dir: str | Path, epochs: float = 1.0,
                        batch_size: int = 8, lr: float = 3e-3, max_length: int = 1024, seed: int = 0,
                        device: str = "cpu", stop_after: int | None = None, **layout) -> list[float]:
    """Train a tiny Qwen3-layout LM on `texts` by next-token prediction; save model and tokenizer."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    layout = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 8192, **layout}
    config = Qwen3Config(vocab_size=len(tokenizer), tie_word_embeddings=True, rope_theta=1e6,
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **layout)
    model = Qwen3ForCausalLM(config)
    order = [i for _ in range(math.ceil(epochs)) for i in rng.sample(range(len(texts)), len(texts))]
    order = order[: int(len(texts) * epochs)]
    batches = [dict(tokenizer([texts[j] + tokenizer.eos_token for j in order[i:i + batch_size]], return_tensors="pt",
                              padding=True, truncation=True, max_length=max_length, add_special_tokens=False))
               for i in range(0, len(order), batch_size)]
    return _lm_steps(model, tokenizer, batches, out_dir, lr, max(1, len(batches) // 8), "text pretrain",
                     device=device, stop_after=stop_after)
