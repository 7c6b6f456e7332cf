"""GRPO on top of an SFT checkpoint: a small trainer following trl's GRPOTrainer algorithm.

Ours because trl's trainer carries multimodal inputs only as image fields, and our model splices DNA embeddings
into `inputs_embeds` (docs/benchmarks.md). trl's choices: G sampled completions per prompt, group-normalised
advantages (reward - mean) / (std + 1e-4), the clipped surrogate with epsilon, an optional k3 KL penalty (beta,
default 0 as in trl >= 0.19) against the frozen SFT adapter, and a token-level mean over all completion tokens
(trl's "dapo" loss). One optimisation pass per generation batch, so old = current logprobs.

Trainable weights (projector, LoRA) stay fp32 while a bf16 model computes under autocast; the policy
forward/backward runs in micro-batches whose gradients add up to the full batch's; out/last holds a resumable state
and `resume` continues it to the same result.

Several ranks (`torchrun --nproc_per_node N train/grpo.py ...`): data parallel. Every rank draws the same prompts
and takes every N-th, samples with its own seed, and the gradients of the token mean over all ranks' completions
are summed before the step: every rank takes the step of one process holding the whole batch.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dnallm.losses import chunked_token_logprobs
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.rewards import total_reward
from dnallm.training import _barrier, _load_trainable, _publish, _staging, checkpoint_layers


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
    # Sequences per policy forward/backward (None: the whole step at once). On an H200 (Genos-1.2B + Qwen3-4B,
    # 4 x 8 completions of 768 tokens), 8 with gradient checkpointing peak at 28.6 GiB (all 32 at once: 53.8 GiB).
    micro_batch_size: int | None = 8
    gradient_checkpointing: bool = True
    seed: int = 0
    log_every: int = 1
    save_every: int | None = 10       # steps between resumable states in out/last (None: only at the end)
    resume: bool = False              # continue from out/last if it exists
    stop_after_steps: int | None = None  # end early (a later resume continues to `steps`); for staged runs/tests

    def __post_init__(self):
        # one completion per group has no spread: its advantage is NaN (std of one value), and so is every weight
        if self.num_generations < 2:
            raise ValueError(f"grpo.num_generations must be >= 2 (a group's advantages compare its completions), "
                             f"not {self.num_generations}")


def _completion_mask(completions: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """1 up to and including the first end token (any of `end_ids`: Qwen3's <|im_end|> and <|endoftext|>), 0 after."""
    is_eos = torch.isin(completions, torch.tensor(end_ids, device=completions.device))
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


def _completion_logprobs(model: DNALLMForConditionalGeneration, prompt_ids, prompt_mask, completions, completion_mask, dna):
    """Log-probabilities of the completion tokens; the LM head runs on completion positions only, in chunks."""
    ids = torch.cat([prompt_ids, completions], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    hidden = model.text_hidden_states(ids, mask, positions, **dna)
    return chunked_token_logprobs(hidden[:, prompt_ids.shape[1] - 1:-1], model.get_output_embeddings(), completions,
                                  model.loss_chunk_size)


def _encode_dna(model: DNALLMForConditionalGeneration, windows: list[list[str]], copies: int):
    """Encoder outputs for `copies` consecutive rows per prompt, in the processor's order (row by row, each
    row's windows in turn); the frozen encoder runs once per distinct prompt, not once per copy."""
    dna = {k: v.to(model.device) for k, v in model.processor.tokenize_dna([w for ws in windows for w in ws]).items()}
    hidden, mask = model.dna_encoder(dna["dna_input_ids"], dna["dna_attention_mask"])
    return tuple(x.unflatten(0, (len(windows), -1)).repeat_interleave(copies, 0).flatten(0, 1) for x in (hidden, mask))


def _save_state(out_dir: Path, model: DNALLMForConditionalGeneration, optimizer, rng: random.Random, state: dict) -> None:
    """Everything a resume needs, in out/last: weights, optimizer, step and log, RNG states (prompts: `rng`,
    generation: torch's); no scheduler (constant learning rate). Switched in atomically like SFT's state."""
    rank = _rank_and_world()[0]
    last = _staging(out_dir, "last", state["step"], rank)
    last.mkdir(parents=True, exist_ok=True)
    torch.save({"python": rng.getstate(), "torch": torch.get_rng_state(),  # every rank samples with its own
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, last / _rng_file(rank))
    if rank == 0:  # the weights and the optimizer are the same on every rank
        model.save_pretrained(last)
        torch.save({"optimizer": optimizer.state_dict()}, last / "optimizer.pt")
        (last / "trainer_state.json").write_text(json.dumps(state, indent=2))
    _barrier()
    if rank == 0:
        _publish(out_dir, "last", last)
    _barrier()


def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if _rank_and_world()[1] > 1:
        dist.all_reduce(x)
    return x


def _load_state(last: Path, model: DNALLMForConditionalGeneration, optimizer, rng: random.Random) -> dict:
    _load_trainable(model, last)
    optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=False)["optimizer"])
    saved = torch.load(last / _rng_file(_rank_and_world()[0]), weights_only=False)
    rng.setstate(saved["python"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"]:
        torch.cuda.set_rng_state_all(saved["cuda"])
    return json.loads((last / "trainer_state.json").read_text())


def grpo_train(model: DNALLMForConditionalGeneration, records, cfg: GRPOConfig, out_dir: str | Path,
               reference_adapter: str | Path | None = None, reward_fn=None) -> list[dict]:
    """Run `cfg.steps` GRPO steps on `records` (train split); saves the model to out_dir; returns the log.

    reward_fn(completion, record, n_tokens) -> dict with at least "total" (and optionally "correct", "format")
    replaces the built-in weighted correctness/format/length reward, as trl's custom reward functions do.
    out_dir/last holds the latest training state; `cfg.resume` continues from it and gives the same weights as an
    uninterrupted run.
    """
    reward_fn = reward_fn or (lambda text, record, n: total_reward(text, record["label"], n, cfg.reward_weights,
                                                                  cfg.length_target, cfg.length_limit))
    out_dir = Path(out_dir)
    proc, tok = model.processor, model.processor.tokenizer
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():  # torchrun set the environment
            dist.init_process_group("nccl" if model.device.type == "cuda" else "gloo")
    rank, world = _rank_and_world()
    if cfg.prompts_per_step % world:
        raise ValueError(f"prompts_per_step {cfg.prompts_per_step} does not split over {world} ranks")
    rng = random.Random(cfg.seed)  # the same prompt draws on every rank
    torch.manual_seed(cfg.seed + rank)  # different completions on every rank
    if cfg.beta > 0:
        if reference_adapter is None:
            raise ValueError("beta > 0 needs reference_adapter (the SFT checkpoint's adapter folder)")
        model.language_model.load_adapter(str(reference_adapter), adapter_name="reference", is_trainable=False)
        model.language_model.set_adapter("default")
    if cfg.gradient_checkpointing:
        checkpoint_layers(model.language_model)
    params = [p for n, p in model.named_parameters() if p.requires_grad and "reference" not in n]
    # fp32 master weights: an Adam step moves a weight by about lr (1e-6), far below bf16's resolution (2^-8
    # relative), so bf16 trainable weights would never change. A bf16 model still computes in bf16 (autocast).
    given_dtypes = [p.dtype for p in params]
    for p in params:
        p.data = p.data.float()
    half = {p.dtype for p in model.parameters() if not p.requires_grad} & {torch.bfloat16, torch.float16}
    compute_dtype = next(iter(half), None)

    def amp():  # a half-precision model computes in its dtype; fp32 weights are cast per op, gradients stay fp32
        return torch.autocast(model.device.type, dtype=compute_dtype or torch.bfloat16, enabled=bool(compute_dtype))

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=0.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = out_dir / "last"
    state = {"step": 0, "log": []}
    if cfg.resume and (last / "trainer_state.json").exists():
        state = _load_state(last, model, optimizer, rng)
        print(f"[grpo] resumed from {last} at step {state['step']}", flush=True)
    G, log, start = cfg.num_generations, state["log"], time.time()
    stop_at = min(cfg.steps, cfg.stop_after_steps or cfg.steps)
    for step in range(state["step"] + 1, stop_at + 1):
        chosen = [records[i] for i in rng.sample(range(len(records)), cfg.prompts_per_step)][rank::world]
        rows = [r for r in chosen for _ in range(G)]
        windows = [[r["ref_window"], r["variant_window"]] for r in chosen]
        batch = proc([proc.prompt(r["question"]) for r in rows], [w for w in windows for _ in range(G)],
                     padding_side="left", dna_ids=False)
        prompt_ids, prompt_mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
        model.eval()
        with torch.no_grad(), amp():
            hidden, dna_mask = _encode_dna(model, windows, G)  # every forward of this step reuses these
            completions = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                         max_new_tokens=cfg.max_new_tokens, do_sample=True,
                                         temperature=cfg.temperature, top_p=1.0, top_k=0, dna_hidden_states=hidden,
                                         dna_positions_mask=dna_mask,
                                         # on-policy: the loss reads these tokens' log-probs under the unmasked model
                                         think_opens_once=False)[:, prompt_ids.shape[1]:]
        completion_mask = _completion_mask(completions, model.processor.end_token_ids)
        texts = tok.batch_decode(completions * completion_mask + tok.pad_token_id * (1 - completion_mask),
                                 skip_special_tokens=True)
        rewards = [reward_fn(t, r, int(n)) for t, r, n in zip(texts, rows, completion_mask.sum(1).tolist())]
        total = torch.tensor([x["total"] for x in rewards], device=model.device)
        advantages = group_advantages(total, G)

        per_row = hidden.shape[0] // len(rows)  # DNA windows per sequence
        size = cfg.micro_batch_size or len(rows)

        def micro_batch(i):
            """Rows i..i+size; completion columns after every row's end are dropped (causal: they change nothing)."""
            s = slice(i, i + size)
            width = int(completion_mask[s].sum(1).max())
            dna = {"dna_hidden_states": hidden[i * per_row:(i + size) * per_row],
                   "dna_positions_mask": dna_mask[i * per_row:(i + size) * per_row]}
            return prompt_ids[s], prompt_mask[s], completions[s, :width], completion_mask[s, :width], dna

        starts = range(0, len(rows), size)
        refs = [None] * len(starts)
        if cfg.beta > 0:
            model.language_model.set_adapter("reference")
            with torch.no_grad(), amp():  # eval mode (still): the reference is a fixed policy, no dropout
                refs = [_completion_logprobs(model, *micro_batch(i)) for i in starts]
            model.language_model.set_adapter("default")
            for n, p in model.language_model.named_parameters():  # set_adapter re-enables grads; keep the reference frozen
                if ".reference." in n:
                    p.requires_grad_(False)

        model.train()
        # The token-level mean runs over all completion tokens of the step (of every rank), so each micro-batch's
        # loss is divided by the full count and the accumulated gradient (summed over ranks) equals the full batch's.
        n_tokens = _sum_over_ranks(completion_mask.sum().float()).clamp(min=1)
        loss_sum, kl_sum = 0.0, 0.0
        for i, ref in zip(starts, refs):
            ids, pmask, comp, cmask, dna = micro_batch(i)
            with amp():
                logp = _completion_logprobs(model, ids, pmask, comp, cmask, dna)
            adv = advantages[i:i + size].unsqueeze(1)
            ratio = torch.exp(logp - logp.detach())
            per_token = -torch.min(ratio * adv, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * adv)
            if ref is not None:
                kl = k3_kl(logp, ref)
                per_token = per_token + cfg.beta * kl
                kl_sum += (kl.detach() * cmask).sum().item()
            loss = (per_token * cmask).sum() / n_tokens
            loss.backward()
            loss_sum += loss.item()
        if world > 1:
            for p in params:  # every rank's share of the token mean -> the full batch's gradient, on every rank
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _sum_over_ranks(p.grad)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        # Step figures over the completions of all ranks.
        sums = _sum_over_ranks(torch.tensor([loss_sum, kl_sum, total.sum().item(), len(rewards),
                                             sum(x.get("correct", 0.0) for x in rewards),
                                             sum(x.get("format", 0.0) for x in rewards)], dtype=torch.float64,
                                            device=model.device)).tolist()
        entry = {"step": step, "loss": sums[0], "reward": sums[2] / sums[3], "accuracy": sums[4] / sums[3],
                 "format": sums[5] / sums[3], "mean_tokens": n_tokens.item() / sums[3],
                 "kl": sums[1] / n_tokens.item(), "grad_norm": grad_norm.item(), "ranks": world,
                 "seconds": round(time.time() - start, 1)}
        log.append(entry)
        if step % cfg.log_every == 0 and rank == 0:
            print(f"[grpo] {json.dumps(entry)}", flush=True)
        if step % (cfg.save_every or stop_at) == 0 or step == stop_at:
            _save_state(out_dir, model, optimizer, rng, {"step": step, "log": log})
    if cfg.beta > 0:
        model.language_model.delete_adapter("reference")
    if rank == 0:
        model.save_pretrained(out_dir)  # fp32 weights; from_pretrained(dtype=...) casts them
        (out_dir / "grpo_log.json").write_text(json.dumps({"config": asdict(cfg), "log": log,
                                                           "finished": len(log) >= cfg.steps}, indent=2))
    _barrier()
    for p, dtype in zip(params, given_dtypes):  # hand the model back as it came (a bf16 model runs without autocast)
        p.data = p.data.to(dtype)
    return log
