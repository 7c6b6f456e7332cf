"""GRPO on top of an SFT checkpoint: a small trainer following trl's GRPOTrainer algorithm.

trl's trainer generates from text prompts with a plain causal LM; our model splices DNA embeddings into
`inputs_embeds`, so the loop is ours, with trl's choices: G sampled completions per prompt, group-normalised
advantages (reward - mean) / (std + 1e-4), the clipped surrogate with epsilon, an optional k3 KL penalty
(beta, default 0 as in trl >= 0.19) against the frozen SFT adapter, and a token-level mean over all
completion tokens (trl's "dapo" loss). One optimisation pass per generation batch, so old = current logprobs.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dnallm.losses import chunked_token_logprobs
from dnallm.modeling import DNALLMForCausalLM
from dnallm.rewards import total_reward


@dataclass
class GRPOConfig:
    steps: int = 200
    prompts_per_step: int = 4
    num_generations: int = 8          # G
    max_new_tokens: int = 768
    temperature: float = 1.0
    lr: float = 1e-6
    epsilon: float = 0.2
    beta: float = 0.0                 # KL weight against the SFT policy (0: no reference model needed)
    max_grad_norm: float = 1.0
    reward_weights: dict = field(default_factory=lambda: {"correct": 1.0, "format": 0.2, "length": 0.1})
    length_target: int = 512
    length_limit: int = 1024
    seed: int = 0
    log_every: int = 1


def _completion_mask(completions: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first end-of-turn token, 0 after it."""
    is_eos = completions == eos_id
    after = (is_eos.cumsum(1) - is_eos.long()) > 0
    return (~after).long()


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(reward - group mean) / (group std + 1e-4) for consecutive groups of `group_size` completions (trl's)."""
    r = rewards.view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): exp(d) - d - 1 with d = ref - policy log-prob."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _completion_logprobs(model: DNALLMForCausalLM, prompt_ids, prompt_mask, completions, completion_mask, dna):
    """Log-probabilities of the completion tokens; the LM head runs on completion positions only, in chunks."""
    from peft import PeftModel

    ids = torch.cat([prompt_ids, completions], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    base = model.text_model.get_base_model() if isinstance(model.text_model, PeftModel) else model.text_model
    hidden = base.model(inputs_embeds=model.embed_inputs(ids, **dna), attention_mask=mask,
                        position_ids=positions).last_hidden_state
    return chunked_token_logprobs(hidden[:, prompt_ids.shape[1] - 1:-1], base.lm_head, completions,
                                  model.loss_chunk_size)


def grpo_train(model: DNALLMForCausalLM, records, cfg: GRPOConfig, out_dir: str | Path,
               reference_adapter: str | Path | None = None, reward_fn=None) -> list[dict]:
    """Run `cfg.steps` GRPO steps on `records` (train split); saves the model to out_dir; returns the log.

    reward_fn(completion, record, n_tokens) -> dict with at least "total" (and optionally "correct", "format")
    replaces the built-in weighted correctness/format/length reward, as trl's custom reward functions do.
    """
    reward_fn = reward_fn or (lambda text, record, n: total_reward(text, record["label"], n, cfg.reward_weights,
                                                                  cfg.length_target, cfg.length_limit))
    out_dir = Path(out_dir)
    proc, tok = model.processor, model.processor.tokenizer
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.beta > 0:
        if reference_adapter is None:
            raise ValueError("beta > 0 needs reference_adapter (the SFT checkpoint's adapter folder)")
        model.text_model.load_adapter(str(reference_adapter), adapter_name="reference", is_trainable=False)
        model.text_model.set_adapter("default")
    params = [p for n, p in model.named_parameters() if p.requires_grad and "reference" not in n]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    G, log, start = cfg.num_generations, [], time.time()
    for step in range(1, cfg.steps + 1):
        chosen = [records[i] for i in rng.sample(range(len(records)), cfg.prompts_per_step)]
        rows = [r for r in chosen for _ in range(G)]
        batch = proc([proc.prompt(r["question"]) for r in rows], [[r["ref_window"], r["variant_window"]] for r in rows],
                     padding_side="left")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        prompt_ids, prompt_mask = batch.pop("input_ids"), batch.pop("attention_mask")
        model.eval()
        completions = model.generate(prompt_ids, prompt_mask, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                                     temperature=cfg.temperature, **batch)
        completion_mask = _completion_mask(completions, tok.eos_token_id)
        texts = tok.batch_decode(completions * completion_mask + tok.pad_token_id * (1 - completion_mask),
                                 skip_special_tokens=True)
        rewards = [reward_fn(t, r, int(n)) for t, r, n in zip(texts, rows, completion_mask.sum(1).tolist())]
        total = torch.tensor([x["total"] for x in rewards], device=model.device)
        advantages = group_advantages(total, G).view(-1, 1)

        model.train()
        logp = _completion_logprobs(model, prompt_ids, prompt_mask, completions, completion_mask, batch)
        ratio = torch.exp(logp - logp.detach())
        surrogate = torch.min(ratio * advantages, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * advantages)
        per_token = -surrogate
        kl = torch.zeros_like(logp)
        if cfg.beta > 0:
            with torch.no_grad():
                model.text_model.set_adapter("reference")
                ref = _completion_logprobs(model, prompt_ids, prompt_mask, completions, completion_mask, batch)
                model.text_model.set_adapter("default")
            for n, p in model.text_model.named_parameters():  # set_adapter re-enables grads; keep the reference frozen
                if ".reference." in n:
                    p.requires_grad_(False)
            kl = k3_kl(logp, ref)
            per_token = per_token + cfg.beta * kl
        mask = completion_mask.float()
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        entry = {"step": step, "loss": loss.item(), "reward": total.mean().item(),
                 "accuracy": sum(x.get("correct", 0.0) for x in rewards) / len(rewards),
                 "format": sum(x.get("format", 0.0) for x in rewards) / len(rewards),
                 "mean_tokens": completion_mask.sum(1).float().mean().item(),
                 "kl": ((kl * mask).sum() / mask.sum().clamp(min=1)).item(), "seconds": round(time.time() - start, 1)}
        log.append(entry)
        if step % cfg.log_every == 0:
            print(f"[grpo] {json.dumps(entry)}", flush=True)
    if cfg.beta > 0:
        model.text_model.delete_adapter("reference")
    model.save_pretrained(out_dir)
    (out_dir / "grpo_log.json").write_text(json.dumps({"config": asdict(cfg), "log": log}, indent=2))
    return log
