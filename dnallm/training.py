"""Supervised fine-tuning: frozen encoder (run once, cached), trainable projector + LoRA.

The same loop runs on CPU (tiny preset, plain AdamW) and on GPUs under DeepSpeed (ZeRO JSON config, bf16).
Checkpoint selection uses the validation split only; the test split is never read here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import yaml

from dnallm.encoders.cache import EmbeddingCache
from dnallm.modeling import DNALLMForConditionalGeneration


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
    # Also train each example in Qwen3 non-thinking mode (answer line only): true = one such copy per record;
    # a mapping {view: copies} sets it per training view (e.g. {kegg: 1, kegg_hard: 4}: the short DNA-only
    # answer examples are cheap and are where the DNA -> label signal is densest).
    direct_answers: bool | dict = False
    # Reasoning-mode (thinking) examples per record: true = one; a mapping {view: copies}, e.g. {kegg: 1,
    # kegg_hard: 0} to teach reasoning on the pathway-context view only (the long examples are most of the cost).
    thinking_answers: bool | dict = True
    eval_batch_size: int = 16
    evals_per_epoch: int = 1
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    deepspeed: str | dict | None = None  # path to (or dict of) a DeepSpeed JSON config
    log_every: int = 10
    save_every: int | None = None    # steps between resumable states in out/last (default: every evaluation)
    resume: bool = False             # continue from out/last if it exists
    stop_after_steps: int | None = None  # end early (the schedule still spans all epochs); for staged runs/tests
    train_lora: bool = True          # False: stage 1, projector only
    init_projector_from: str | None = None  # stage 2: start from a stage-1 checkpoint's projector
    tensorboard: bool = True
    progress: bool = False           # a tqdm bar instead of log lines

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


def _copies(setting: bool | int | dict, view: str) -> int:
    """Examples per record for one answer mode: a bool/int for every view, or a mapping {view: copies}."""
    return int(setting.get(view, 0) if isinstance(setting, dict) else setting)


def encode_examples(model: DNALLMForConditionalGeneration, records, max_length: int, direct_answers: bool | dict = False,
                    thinking_answers: bool | dict = True) -> list[dict]:
    """Tokenize every record once: prompt + answer ids, labels on the answer only, and its two windows.

    With direct_answers, each record also yields non-thinking-mode examples whose answer is the label line
    alone (Qwen3's hybrid thinking/non-thinking training): a short, dense signal for the label. Mappings give
    the number of copies of each mode per view (the records' `view` column; records without one are `kegg`).
    """
    proc = model.processor
    window = model.config.dna_config.window_size
    out = []
    for r in records:
        view = r.get("view", "kegg")
        windows = [r["ref_window"], r["variant_window"]]
        if {len(w) for w in windows} != {window}:
            raise ValueError(f"row {r.get('row')}: windows of {len(windows[0])}/{len(windows[1])} bp, but the model "
                             f"reads {window} bp windows (config.dna_config.window_size); load the data with "
                             f"load_kegg/load_views(..., window={window})")
        for thinking in (True, False):
            copies = _copies(thinking_answers if thinking else direct_answers, view)
            if not copies:
                continue
            # Tokenized once; the copies share the tensors (collate only reads them).
            target = proc.target(r["reasoning"] if thinking else None, r["label"])
            b = proc([proc.prompt(r["question"], thinking=thinking)], [windows], targets=[target], dna_ids=False)
            n = b["input_ids"].shape[1]
            if n > max_length:
                raise ValueError(f"row {r.get('row')}: {n} tokens exceed max_length {max_length}")
            out += [{"input_ids": b["input_ids"][0], "labels": b["labels"][0], "windows": windows}] * copies
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
def answer_loss(model: DNALLMForConditionalGeneration, examples: list[dict], cache: EmbeddingCache, batch_size: int,
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


def _optimizer(model: DNALLMForConditionalGeneration, cfg: SFTConfig, total_updates: int):
    if not cfg.train_lora:  # stage 1: projector only (LoRA and the DNA marker rows stay as initialised)
        for p in model.language_model.parameters():
            p.requires_grad_(False)
    lora_params = [p for p in model.language_model.parameters() if p.requires_grad]
    groups = [g for g in ({"params": list(model.projector.parameters()), "lr": cfg.lr_projector},
                          {"params": lora_params, "lr": cfg.lr_lora}) if g["params"]]
    warmup = max(1, int(total_updates * cfg.warmup_ratio))
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, total_updates) / total_updates)))
    return groups, optimizer, schedule


def _load_trainable(model: DNALLMForConditionalGeneration, path: Path, projector_only: bool = False) -> None:
    """Load projector (and LoRA) weights saved by `save_pretrained` into a model being trained."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from dnallm.modeling import ADAPTER_DIR, PROJECTOR_FILE

    model.projector.load_state_dict(load_file(path / PROJECTOR_FILE))
    adapter = path / ADAPTER_DIR / "adapter_model.safetensors"
    if not projector_only and adapter.exists():
        result = set_peft_model_state_dict(model.language_model, load_file(adapter))
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"{adapter}: unexpected LoRA weights {result.unexpected_keys[:5]}")


def _save_model(model, path: Path, engine, rank: int) -> None:
    """save_pretrained on rank 0; under ZeRO-3 every rank first gathers the (small) trainable weights."""
    gather = contextlib.nullcontext()
    if engine is not None and engine.zero_optimization_stage() == 3:
        import deepspeed

        gather = deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad],
                                                   modifier_rank=None)
    with gather:
        if rank == 0:
            model.save_pretrained(path)


def _save_best(model, out: Path, engine, rank: int, step: int) -> None:
    """The selected checkpoint, at the top of `out` (where users load it from), switched in atomically.

    It is written whole to `.best-step<N>` and synced; then the symlink `best` is switched to it in one rename.
    The entries at the top of `out` (config.json, projector.safetensors, adapter/, tokenizers, ...) are
    symlinks through `best` (`config.json -> best/config.json`), so that one rename switches the whole
    checkpoint: a crash mid-save leaves the previous best checkpoint whole, never a mix of two steps.
    """
    staging = _staging(out, "best", step, rank)
    _save_model(model, staging, engine, rank)
    _barrier()
    if rank == 0:
        _publish(out, "best", staging)
        for entry in staging.iterdir():
            top, target = out / entry.name, f"best/{entry.name}"
            if top.is_symlink() and os.readlink(top) == target:
                continue
            if top.is_dir() and not top.is_symlink():  # a real folder from an older dnallm (first save only)
                shutil.rmtree(top)
            _replace_with_link(top, target)
    _barrier()


def _replace_with_link(path: Path, target: str) -> None:
    tmp = path.with_name(f".{path.name}.link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, path)  # atomic


def _staging(out: Path, name: str, step: int, rank: int) -> Path:
    """A fresh folder `out/.<name>-step<N>` (the same on every rank) to write the state `out/<name>` into."""
    staging = out / f".{name}-step{step}"
    link = out / name
    if link.exists() and link.resolve() == staging.resolve():  # re-saving the step the link holds: keep it
        staging = out / f".{name}-step{step}-again"
    if rank == 0 and staging.exists():  # left by a crash during an earlier save of this step
        shutil.rmtree(staging)
    _barrier()
    return staging


def _publish(out: Path, name: str, staging: Path) -> None:
    """Sync `staging` to disk, then point the symlink `out/<name>` at it in one atomic rename and delete the
    folder it pointed at before. Rank 0 only."""
    _fsync_tree(staging)
    link = out / name
    previous = link.resolve() if link.is_symlink() else None
    if link.exists() and not link.is_symlink():  # a folder from an older dnallm: move it out of the way
        link.rename(out / f".{name}-old")
        previous = out / f".{name}-old"
    _replace_with_link(link, staging.name)
    _fsync_tree(out, recursive=False)
    if previous is not None and previous.exists() and previous != staging.resolve():
        shutil.rmtree(previous)


def _fsync_tree(path: Path, recursive: bool = True) -> None:
    for p in (sorted(path.rglob("*")) if recursive else []) + [path]:
        if p.is_symlink():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _save_state(out: Path, model, engine, optimizer, schedule, state: dict, rank: int) -> None:
    """Everything a resume needs, in out/last: weights, optimizer, scheduler, counters, RNG states.

    Atomic: the state is written to a new folder `.last-step<N>` and synced to disk; then the symlink `last`
    is switched to it in one rename, and the previous folder deleted. A crash mid-save leaves `last` pointing
    at the previous state, whole.
    """
    staging = _staging(out, "last", state["step"], rank)
    _save_model(model, staging, engine, rank)
    if engine is not None:
        # collective: every rank writes its shard; the info lets ds_to_universal reshard for another world size
        engine.save_checkpoint(str(staging / "deepspeed"), tag="last",
                               client_state={"universal_checkpoint_info": {"universal_checkpoint_version": 0.2}})
    if rank == 0:
        if engine is None:
            torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
                       staging / "optimizer.pt")
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        torch.save(rng, staging / "rng.pt")
        (staging / "trainer_state.json").write_text(
            json.dumps({**state, "world_size": int(os.environ.get("WORLD_SIZE", 1))}, indent=2))
    _barrier()  # every rank's shard is written
    if rank == 0:
        _publish(out, "last", staging)
    _barrier()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _to_universal(ds_dir: Path, rank: int) -> None:
    """Convert DeepSpeed's `last` checkpoint to a universal one (loadable on any number of ranks)."""
    import subprocess
    import sys

    import torch.distributed as dist

    if rank == 0:
        subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                        str(ds_dir / "last"), "--output_folder", str(ds_dir / "last_universal")], check=True,
                       capture_output=True)
    if dist.is_initialized():
        dist.barrier()


def train_sft(model: DNALLMForConditionalGeneration, train_records, val_records, cfg: SFTConfig, out_dir: str | Path,
              cache: EmbeddingCache | None = None) -> dict:
    """Train projector + LoRA; keep the checkpoint with the lowest validation answer loss in out_dir.

    `cache`: the frozen encoder's states, filled here for every training and validation window (pass one in to
    reuse those states afterwards, e.g. for the encoder-alone probe).

    out_dir/last holds the latest full training state; `cfg.resume` continues from it and gives the same
    result as an uninterrupted run (same batch order, optimizer, scheduler and RNG state).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = model.device
    model.dna_encoder.to(device)
    if cfg.init_projector_from:  # stage 2 starts from the stage-1 projector
        _load_trainable(model, Path(cfg.init_projector_from), projector_only=True)

    train = encode_examples(model, train_records, cfg.max_length, cfg.direct_answers, cfg.thinking_answers)
    views = set(train_records["view"]) if "view" in train_records.column_names else {"kegg"}
    # Saved with the checkpoint: label scoring warns when it reads a form the model never learnt.
    model.config.answer_modes = [mode for mode, setting in (("thinking", cfg.thinking_answers),
                                                            ("direct", cfg.direct_answers))
                                 if any(_copies(setting, v) for v in views)]
    val = encode_examples(model, val_records, cfg.max_length)  # selection on the reasoning-mode answer loss
    # The frozen encoder runs once per distinct window (many KEGG windows repeat), never per step.
    if cache is None:
        cache = EmbeddingCache(model.dna_encoder, dtype=torch.bfloat16 if cfg.bf16 else torch.float32, device=device)
    t0 = time.time()
    cache.add([w for e in train + val for w in e["windows"]], batch_size=cfg.eval_batch_size)
    if rank == 0:
        print(f"[sft] encoder cache: {len(cache)} distinct windows in {time.time() - t0:.0f}s", flush=True)

    if cfg.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
        model.language_model.enable_input_require_grads()
    # Each rank takes every world-th batch of the epoch's shared order.
    steps_per_epoch = math.ceil(math.ceil(len(train) / cfg.batch_size) / world)
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    groups, optimizer, schedule = _optimizer(model, cfg, max(1, math.ceil(total_steps / cfg.grad_accum)))
    last = out_dir / "last"
    resuming = cfg.resume and (last / "trainer_state.json").exists()
    state = json.loads((last / "trainer_state.json").read_text()) if resuming else {
        "step": 0, "best_val_loss": math.inf, "history": []}
    # A DeepSpeed state saved on another number of ranks is resharded through a universal checkpoint.
    reshard = resuming and cfg.deepspeed and state.get("world_size", world) != world
    engine = None
    if cfg.deepspeed:
        import deepspeed

        ds_config = cfg.deepspeed if isinstance(cfg.deepspeed, dict) else json.loads(Path(cfg.deepspeed).read_text())
        ds_config = {**ds_config, "train_micro_batch_size_per_gpu": cfg.batch_size,
                     "gradient_accumulation_steps": cfg.grad_accum, "gradient_clipping": cfg.max_grad_norm}
        ds_config.pop("train_batch_size", None)
        if reshard:
            ds_config["checkpoint"] = {"load_universal": True}
        engine, optimizer, _, schedule = deepspeed.initialize(model=model, optimizer=optimizer,
                                                              lr_scheduler=schedule, config=ds_config)

    if resuming:
        if reshard:  # same number of examples seen, counted in this world's per-rank steps
            state["step"] = state["step"] * state["world_size"] // world
        if engine is not None:  # restores module (any ZeRO stage), optimizer and scheduler
            tag = "last"
            if reshard:
                _to_universal(last / "deepspeed", rank)
                tag = "last_universal"
            engine.load_checkpoint(str(last / "deepspeed"), tag=tag, load_module_strict=False)
        else:
            _load_trainable(model, last)
            opt_state = torch.load(last / "optimizer.pt", weights_only=False)
            optimizer.load_state_dict(opt_state["optimizer"]), schedule.load_state_dict(opt_state["schedule"])
        rng = torch.load(last / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        if rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        if rank == 0:
            print(f"[sft] resumed from {last} at step {state['step']}", flush=True)

    writer = None
    if rank == 0 and cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"))
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=state["step"], desc="sft", unit="step", disable=rank != 0 or not cfg.progress)
    eval_every = max(1, steps_per_epoch // max(1, cfg.evals_per_epoch))
    # Stops and saves happen at optimizer-step boundaries only (a saved state holds no half-accumulated
    # gradients), so a requested stop inside an accumulation moves to the end of that accumulation.
    stop_at = min(total_steps, math.ceil((cfg.stop_after_steps or total_steps) / cfg.grad_accum) * cfg.grad_accum)
    save_due = False
    pad_id = model.processor.tokenizer.pad_token_id
    start = time.time()
    step = state["step"]
    while step < stop_at:
        epoch, offset = divmod(step, steps_per_epoch)
        # The epoch's batch order depends only on (seed, epoch), so a resume rebuilds it exactly.
        order = _batches(train, cfg.batch_size, random.Random(cfg.seed * 100_003 + epoch))
        order = (order + order[: -len(order) % world])[rank::world]  # equal step counts on every rank
        for batch_examples in order[offset:steps_per_epoch]:
            if step >= stop_at:
                break
            model.train()
            batch = {k: v.to(device) for k, v in collate(batch_examples, cache, pad_id).items()}
            # The last micro-batch of the run closes its accumulation even when it is a partial one.
            boundary = (step + 1) % cfg.grad_accum == 0 or step + 1 == total_steps
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and engine is None):
                loss = (engine or model)(**batch)["loss"]
            if engine is not None:
                if boundary:
                    engine.set_gradient_accumulation_boundary(True)
                engine.backward(loss)
                engine.step()
            else:
                (loss / cfg.grad_accum).backward()
                if boundary:
                    torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.max_grad_norm)
                    optimizer.step(), schedule.step(), optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if writer:
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr_projector", schedule.get_last_lr()[0], step)
            if step % cfg.log_every == 0 and rank == 0 and not cfg.progress:
                print(f"[sft] step {step}/{total_steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)", flush=True)
            if step % eval_every == 0 or step == total_steps:
                val_loss = answer_loss(model, val, cache, cfg.eval_batch_size, cfg.bf16)
                state["history"].append({"step": step, "epoch": round(step / steps_per_epoch, 3),
                                         "train_loss": loss.item(), "val_loss": val_loss})
                improved = val_loss < state["best_val_loss"]
                if improved:
                    state["best_val_loss"] = val_loss
                    _save_best(model, out_dir, engine, rank, step)
                if writer:
                    writer.add_scalar("val/answer_loss", val_loss, step)
                if rank == 0:
                    tqdm.write(f"[sft] step {step}: val answer loss {val_loss:.4f}{' (best, saved)' if improved else ''}")
            save_due = save_due or step % (cfg.save_every or eval_every) == 0 or step == stop_at
            if save_due and boundary:
                state["step"] = step
                _save_state(out_dir, model, engine, optimizer, schedule, state, rank)
                save_due = False
    bar.close()
    if writer:
        writer.close()
    summary = {"best_val_loss": state["best_val_loss"], "steps": step, "finished": step >= total_steps,
               "train_seconds": round(time.time() - start, 1), "history": state["history"],
               "train_examples": len(train), "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in train),
               "config": asdict(cfg)}
    if rank == 0:
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
