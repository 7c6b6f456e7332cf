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
from torch.nn.utils.rnn import pad_sequence
from transformers import TrainerCallback

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
    # Examples per record of each kind: a bool/number for every view or a mapping {view: copies}; fractions give a
    # fixed share of the records one more copy ({kegg: 0.5}). direct: Qwen3 non-thinking mode (answer line only:
    # short, and where the DNA -> label signal is densest); thinking: reasoning mode (the long, costly examples).
    direct_answers: bool | float | dict = False
    thinking_answers: bool | float | dict = True
    # Loss weight of a reasoning example's tokens after `</think>` (answer line, end of turn; 1.0 = plain token mean):
    # unweighted they are ~8 of ~500 labelled tokens, and the answer copied whatever disease the reasoning named.
    answer_weight: float = 1.0
    # Distractor examples per record: the record's prompt and DNA, another label's reasoning tail as the think block,
    # the record's own answer line (loss on that line only): teaches the answer to come from the DNA when the
    # reasoning points elsewhere (docs/benchmarks.md, session 12).
    distractor_answers: float | dict = 0
    eval_batch_size: int = 16
    evals_per_epoch: int = 1
    seed: int = 0
    bf16: bool = False
    # true: recompute every decoder layer in the backward; a fraction in (0, 1]: that share of the layers (the first
    # ones), trading memory for speed in between (docs/benchmarks.md).
    gradient_checkpointing: bool | float = False
    # liger-kernel (the `liger` extra; CUDA only): its fused linear cross-entropy for the answer loss and its
    # RMSNorm/SwiGLU/RoPE kernels in the text model (docs/benchmarks.md, "Speed, round two").
    liger: bool = False
    # torch.compile of each decoder layer (one graph reused by every layer, dynamic shapes). With `liger`, only its
    # fused loss is used: compile fuses RMSNorm/SwiGLU/RoPE itself and dynamo cannot trace liger's kernels
    # (docs/benchmarks.md, "Speed, round four").
    compile: bool = False
    deepspeed: str | dict | None = None  # path to (or dict of) a DeepSpeed JSON config
    log_every: int = 10
    # Steps are optimizer updates (Trainer's global_step); each epoch ends in a (possibly partial) accumulation.
    save_every: int | None = None    # steps between resumable states in out/last (default: every evaluation)
    resume: bool = False             # continue from out/last (a symlink to the latest checkpoint-N) if it exists
    stop_after_steps: int | None = None  # end early (the schedule still spans all epochs); for staged runs/tests
    train_lora: bool = True          # False: stage 1, projector only
    init_projector_from: str | None = None  # stage 2: start from a stage-1 checkpoint's projector
    tensorboard: bool = True
    progress: bool = False           # a tqdm bar instead of log lines

    def __post_init__(self):
        from dnallm.data import VIEWS

        g = self.gradient_checkpointing
        if not isinstance(g, bool) and not (isinstance(g, (int, float)) and 0 < g <= 1):
            raise ValueError(f"sft.gradient_checkpointing must be true, false or a fraction of layers in (0, 1], not {g!r}")
        # a misspelt view would get 0 copies, and with thinking_answers 0 there its records no example at all
        for name in ("direct_answers", "thinking_answers", "distractor_answers"):
            setting = getattr(self, name)
            if isinstance(setting, dict) and (unknown := sorted(set(setting) - set(VIEWS))):
                raise ValueError(f"sft.{name}: unknown view(s) {unknown}; expected views from {VIEWS}")

    @classmethod
    def from_dict(cls, d: dict) -> "SFTConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SFT options {sorted(unknown)}")
        return cls(**d)


def decoder_layers(language_model: torch.nn.Module) -> list[torch.nn.Module]:
    """The text model's decoder layers (transformers' GradientCheckpointingLayer); none is an error."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in language_model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"{type(language_model).__name__} has no decoder layers")
    return layers


def checkpoint_layers(language_model: torch.nn.Module, fraction: bool | float = True) -> int:
    """Gradient checkpointing on the first round(fraction x L) decoder layers (True: all); returns how many.

    transformers' flag is per layer: enable it, then switch it off again after the first k layers (every layer
    stores the same activations, so which k does not change the memory saved)."""
    # non-reentrant: needs no input that requires grad, and lets torch stop a recomputation early
    language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = decoder_layers(language_model)
    k = len(layers) if fraction is True else max(1, round(float(fraction) * len(layers)))
    for layer in layers[k:]:
        layer.gradient_checkpointing = False
    return k


def compile_layers(language_model: torch.nn.Module) -> int:
    """torch.compile every decoder layer in place; returns how many.

    Not TrainingArguments(torch_compile=True), which compiles the whole wrapper: the DNA splice and the chunked
    loss vary with every batch and would recompile or break the graph; the layers share one compiled graph."""
    layers = decoder_layers(language_model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def _copies(setting: bool | float | dict, view: str, draw: str | None = None) -> int:
    """Examples per record for one answer mode: a bool/number for every view, or a mapping {view: copies}.

    A fraction (e.g. 1.5) gives one more copy to the records whose fixed draw (seeded by `draw`, e.g. "thinking-17",
    so the same records in every run) falls below it. Without a draw: whether the mode is used at all."""
    copies = float(setting.get(view, 0) if isinstance(setting, dict) else setting)
    if copies < 0:
        raise ValueError(f"example copies must be >= 0, not {copies} (view {view})")
    whole, frac = int(copies), copies - int(copies)
    if draw is None:
        return whole + (frac > 0)
    return whole + (random.Random(draw).random() < frac)


def record_views(records) -> set[str]:
    """The training views the records hold (records without a `view` column are `kegg`)."""
    return set(records["view"]) if "view" in records.column_names else {"kegg"}


def encode_examples(model: DNALLMForConditionalGeneration, records, max_length: int,
                    direct_answers: bool | float | dict = False, thinking_answers: bool | float | dict = True,
                    answer_weight: float = 1.0, distractor_answers: float | dict = 0) -> list[dict]:
    """Tokenize every record once: prompt + answer ids, labels on the answer only, and its two windows.

    The copies of each kind of example (SFTConfig: thinking, direct = Qwen3 non-thinking mode with the label line
    alone, distractor) are set per view (the records' `view` column; records without one are `kegg`).
    answer_weight: the per-token loss weight of a reasoning example's answer line (SFTConfig).
    """
    proc = model.processor
    window = model.config.dna_config.window_size
    out = []
    views = record_views(records)
    tails = _reasoning_tails(records) if any(_copies(distractor_answers, v) for v in views) else []
    for i, r in enumerate(records):
        view = r.get("view", "kegg")
        windows = [r["ref_window"], r["variant_window"]]
        if {len(w) for w in windows} != {window}:
            raise ValueError(f"row {r.get('row')}: windows of {len(windows[0])}/{len(windows[1])} bp, but the model "
                             f"reads {window} bp windows (config.dna_config.window_size); load the data with "
                             f"load_kegg/load_views(..., window={window})")
        for thinking, setting in ((True, thinking_answers), (False, direct_answers)):
            copies = _copies(setting, view, f"{'thinking' if thinking else 'direct'}-{i}")
            if not copies:
                continue
            # Tokenized once; the copies share the tensors (collate only reads them).
            target = proc.target(r["reasoning"] if thinking else None, r["label"])
            b = proc([proc.prompt(r["question"], thinking=thinking)], [windows], targets=[target], dna_ids=False)
            example = {"input_ids": b["input_ids"][0], "labels": b["labels"][0], "windows": windows}
            if thinking and answer_weight != 1.0:  # 1 elsewhere (the prompt's weights are never read)
                answer = _answer_tokens(proc.tokenizer, example["input_ids"], target)
                example["label_weights"] = torch.where(answer, float(answer_weight), 1.0)
            _check_length(example, r, max_length)
            out += [example] * copies
        for k in range(_copies(distractor_answers, view, f"distractor-{i}")):
            example = _distractor_example(proc, r, windows, tails, random.Random(f"{i}-{k}"), answer_weight)
            out.append(_check_length(example, r, max_length, "distractor example"))
    return out


def _check_length(example: dict, record: dict, max_length: int, kind: str = "example") -> dict:
    if len(example["input_ids"]) > max_length:  # SFTConfig.max_length: an error, never a silent cut
        raise ValueError(f"row {record.get('row')}: {kind} of {len(example['input_ids'])} tokens exceeds max_length "
                         f"{max_length}")
    return example


def _reasoning_tails(records, steps: int = 2) -> list[tuple[str, str]]:
    """(label, last `steps` lines of the reasoning) of every record: where a KEGG reasoning names its disease."""
    return [(r["label"], "\n".join(r["reasoning"].strip().splitlines()[-steps:])) for r in records]


def _distractor_example(proc, record: dict, windows: list[str], tails: list[tuple[str, str]], rng: random.Random,
                        answer_weight: float) -> dict:
    """The record's thinking prompt and DNA, another label's reasoning tail as the think block, the record's own
    answer line; labels (weighted `answer_weight`) on the tokens after `</think>` only."""
    others = [tail for label, tail in tails if label != record["label"]]
    if not others:
        raise ValueError(f"row {record.get('row')}: distractor answers need records of another label")
    target = proc.target(rng.choice(others), record["label"])
    b = proc([proc.prompt(record["question"], thinking=True)], [windows], targets=[target], dna_ids=False)
    ids, labels = b["input_ids"][0], b["labels"][0].clone()
    labels[~_answer_tokens(proc.tokenizer, ids, target)] = -100  # the prompt's labels are -100 already
    return {"input_ids": ids, "labels": labels, "windows": windows,
            "label_weights": torch.full((len(ids),), float(answer_weight))}


def _answer_tokens(tokenizer, ids: torch.Tensor, target: str) -> torch.Tensor:
    """True on the example's tokens that start after the target's last `</think>` (the answer line, end of turn).

    The target (the example's last tokens) is tokenized alone for its character offsets: its tokens must be the
    same as inside the example, or per-token labels and weights would land on the wrong tokens."""
    enc = tokenizer(target, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] != ids[-len(enc["input_ids"]):].tolist():
        raise ValueError("the target's tokens differ when tokenized alone; cannot place per-token labels or weights")
    answer_start = target.rindex("</think>") + len("</think>")
    return torch.tensor([False] * (len(ids) - len(enc["input_ids"]))
                        + [start >= answer_start for start, _ in enc["offset_mapping"]])


def pad_examples(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """The examples' ids and labels right-padded to one width, with their attention mask."""
    ids = [e["input_ids"] for e in examples]
    return {"input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_id),
            "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True),
            "labels": pad_sequence([e["labels"] for e in examples], batch_first=True, padding_value=-100)}


def collate(examples: list[dict], cache: EmbeddingCache, pad_id: int) -> dict[str, torch.Tensor]:
    batch = pad_examples(examples, pad_id)
    batch["dna_hidden_states"], batch["dna_positions_mask"] = cache.lookup([w for e in examples for w in e["windows"]])
    if any("label_weights" in e for e in examples):  # weight 1 where an example has none, and on the padding
        batch["label_weights"] = pad_sequence([e.get("label_weights", torch.ones(len(e["input_ids"])))
                                               for e in examples], batch_first=True, padding_value=1.0)
    return batch


def _batch_indices(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches (indices): shuffle, sort inside chunks of 16 batches by length (little padding), then
    shuffle the batches, so that long reasoning examples and short direct answers stay interleaved.

    Not transformers' `get_length_grouped_indices`: its megabatches run from longest to shortest batch unshuffled,
    and with it the tiny default's hard-test score fell from 85.6 % to 48.6 % (docs/benchmarks.md, issue 14)."""
    order = rng.sample(range(len(lengths)), len(lengths))
    chunk = batch_size * 16
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lengths.__getitem__)
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def _batches(examples: list[dict], batch_size: int, rng: random.Random) -> list[list[dict]]:
    """`_batch_indices` as lists of examples (benchmarks/sft_step.py batches this way)."""
    return [[examples[i] for i in b] for b in _batch_indices([len(e["input_ids"]) for e in examples], batch_size, rng)]


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

    It is written whole to `.best-step<N>` and synced, then the symlink `best` is switched to it in one rename; the
    entries at the top of `out` are symlinks through `best` (`config.json -> best/config.json`), so a crash mid-save
    leaves the previous best checkpoint whole, never a mix of two steps.
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


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


WORLD_FILE = "world_size.json"  # in each checkpoint-N: the number of ranks that wrote it


def _resharded(checkpoint: Path, saved_world: int, world: int, rank: int) -> Path:
    """A copy of `checkpoint` (saved on `saved_world` ranks) that this world of ranks can resume from.

    Trainer counts updates per rank-batch, so the examples seen are `step * saved_world / world` updates here: the
    copy is `checkpoint-<that step>` with the step and the LR schedule rescaled, its DeepSpeed shards converted by
    DeepSpeed's `ds_to_universal` (the caller sets `checkpoint.load_universal`) and each rank's RNG file taken from a
    saved rank. The original stays untouched until the first save of the resumed run replaces it."""
    import subprocess
    import sys

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    step = state["global_step"] * saved_world // world
    target = checkpoint.parent / f"checkpoint-{step}-ws{world}"
    if rank == 0:
        if target.exists():  # left by a crash during an earlier reshard
            shutil.rmtree(target)
        staging = checkpoint.parent / f".{target.name}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint, staging, ignore=shutil.ignore_patterns("global_step*", "latest*", "rng_state*"))
        (staging / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}, indent=2))
        if (staging / "scheduler.pt").exists():
            schedule = torch.load(staging / "scheduler.pt", weights_only=False)
            schedule["last_epoch"], schedule["_step_count"] = step, step + 1
            torch.save(schedule, staging / "scheduler.pt")
        for r in range(world):  # Trainer names it rng_state.pth on one rank, rng_state_<r>.pth on several
            source = checkpoint / ("rng_state.pth" if saved_world == 1 else f"rng_state_{r % saved_world}.pth")
            if source.exists():
                shutil.copy2(source, staging / ("rng_state.pth" if world == 1 else f"rng_state_{r}.pth"))
        for shards in checkpoint.glob("global_step*"):
            # ds_to_universal requires the marker DeepSpeed expects its client to have saved; Trainer's
            # save_checkpoint does not pass one, so a copy of the shards gets it.
            source = staging / ".shards"
            shutil.copytree(shards, source)
            for states in source.glob("*model_states.pt"):
                saved = torch.load(states, weights_only=False)
                saved.setdefault("universal_checkpoint_info", {"universal_checkpoint_version": 0.2})
                torch.save(saved, states)
            convert = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                                      str(source), "--output_folder", str(staging / f"global_step{step}_universal")],
                                     capture_output=True, text=True)
            if convert.returncode:
                raise RuntimeError(f"{shards}: DeepSpeed's ds_to_universal failed:\n{convert.stderr[-2000:]}")
            shutil.rmtree(source)
        (staging / WORLD_FILE).write_text(json.dumps({"world_size": world}))
        _fsync_tree(staging)
        os.replace(staging, target)
        print(f"[sft] {checkpoint.name} was saved on {saved_world} rank(s): resharded for {world} as {target.name}",
              flush=True)
    _barrier()
    return target


class _EpochBatches(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: `_batch_indices` of (seed, epoch) alone, so a resume rebuilds the epoch
    exactly. accelerate shards it over ranks (rank r takes batches r, r + world, ...); Trainer's `set_epoch`
    reaches it directly or, through accelerate's wrappers, as `.sampler.set_epoch`."""

    class _Epoch:
        epoch = 0

        def set_epoch(self, epoch: int):
            self.epoch = epoch

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.sampler, self.drop_last = self._Epoch(), False

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __len__(self):  # the same for every epoch: the shuffles do not change how many batches there are
        return len(_batch_indices(self.lengths, self.batch_size, random.Random(0)))

    def __iter__(self):
        return iter(_batch_indices(self.lengths, self.batch_size, random.Random(self.seed * 100_003 + self.sampler.epoch)))


class _Progress(TrainerCallback):
    """Stops at `stop_after_steps` (with a save) and evaluates + saves at the last step of the schedule."""

    def __init__(self, stop_at: int | None):
        self.stop_at = stop_at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = control.should_save = True
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = control.should_save = True
        return control


def _make_trainer_class():
    from transformers import Trainer

    class SFTTrainer(Trainer):
        """transformers.Trainer with dnallm's optimizer groups, token-weighted loss, answer-loss evaluation,
        atomic best checkpoint at the top of out_dir and projector+LoRA-only checkpoints (`last` -> checkpoint-N)."""

        def __init__(self, *args, sft_cfg: SFTConfig, val_examples, cache, out_dir: Path, **kwargs):
            super().__init__(*args, **kwargs)
            self.sft_cfg, self.val_examples, self.cache, self.out_dir = sft_cfg, val_examples, cache, out_dir
            self._last_train_loss, self._flop_params = float("nan"), None

        def get_train_dataloader(self):
            batches = _EpochBatches([len(e["input_ids"]) for e in self.train_dataset], self.args.per_device_train_batch_size,
                                    self.args.seed)
            return self.accelerator.prepare(torch.utils.data.DataLoader(
                self.train_dataset, batch_sampler=batches, collate_fn=self.data_collator, num_workers=0))

        # --- optimizer / schedule -------------------------------------------------------------------------
        def create_optimizer(self, model=None):
            if self.optimizer is None:
                model = self.model
                if not self.sft_cfg.train_lora:  # stage 1: projector only
                    for p in model.language_model.parameters():
                        p.requires_grad_(False)
                lora = [p for p in model.language_model.parameters() if p.requires_grad]
                groups = [g for g in ({"params": list(model.projector.parameters()), "lr": self.sft_cfg.lr_projector},
                                      {"params": lora, "lr": self.sft_cfg.lr_lora}) if g["params"]]
                # fused: one kernel instead of torch's CPU default, a loop over ~60 small tensors (~6 % of a step)
                self.optimizer = torch.optim.AdamW(groups, weight_decay=self.sft_cfg.weight_decay, betas=(0.9, 0.95),
                                                   fused=model.device.type in ("cpu", "cuda"))
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                total = max(1, num_training_steps)
                warmup = max(1, int(total * self.sft_cfg.warmup_ratio))
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
                        1 + math.cos(math.pi * min(s, total) / total)))
                self._created_lr_scheduler = True
            return self.lr_scheduler

        # --- loss ---------------------------------------------------------------------------------------------
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(**inputs)
            loss = out["loss"]
            self._last_train_loss = loss.detach().item()
            if num_items_in_batch is not None:
                # token-weighted over the whole accumulation (and, with average_tokens_across_devices, over the
                # ranks: DDP/DeepSpeed average the gradients, hence the world-size factor)
                loss = loss * out["n_tokens"] / num_items_in_batch
                if self.args.average_tokens_across_devices:
                    loss = loss * self.accelerator.num_processes
            return (loss, out) if return_outputs else loss

        def floating_point_ops(self, inputs) -> int:
            # Trainer's total_flos (6 x tokens x non-embedding parameters), the parameters counted once rather than
            # in a walk over all modules at every step (~5 s of the tiny default's CPU SFT)
            if self._flop_params is None:
                self._flop_params = self.model.num_parameters(exclude_embeddings=True)
            return 6 * inputs["input_ids"].numel() * self._flop_params

        # --- evaluation / best checkpoint ---------------------------------------------------------------------
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            cfg = self.sft_cfg
            val_loss = answer_loss(self.model, self.val_examples, self.cache, cfg.eval_batch_size, cfg.bf16)
            improved = self.state.best_metric is None or val_loss < self.state.best_metric
            if improved:
                self.state.best_metric = val_loss
                self.state.best_global_step = self.state.global_step
                _save_best(self.model, self.out_dir, self._engine(), self.args.process_index, self.state.global_step)
            if self.args.process_index == 0:
                print(f"[sft] step {self.state.global_step}: val answer loss {val_loss:.4f}"
                      f"{' (best, saved)' if improved else ''}", flush=True)
            metrics = {f"{metric_key_prefix}_answer_loss": val_loss, "train_loss_last": self._last_train_loss}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _engine(self):
            return self.model_wrapped if self.is_deepspeed_enabled else None

        # --- checkpoints ----------------------------------------------------------------------------------------
        def save_model(self, output_dir=None, _internal_call=False):
            _save_model(self.model, Path(output_dir or self.args.output_dir), self._engine(), self.args.process_index)

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            _barrier()
            if self.args.process_index == 0:  # `last` switches only once checkpoint-N is whole on disk
                folder = self.out_dir / f"checkpoint-{self.state.global_step}"
                (folder / WORLD_FILE).write_text(json.dumps({"world_size": self.args.world_size}))
                _publish(self.out_dir, "last", folder)
                for old in self.out_dir.glob("checkpoint-*"):  # e.g. the resharded copy a resume started from
                    if old != folder:
                        shutil.rmtree(old, ignore_errors=True)
            _barrier()

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            if not self.is_deepspeed_enabled:  # DeepSpeed: deepspeed_load_checkpoint restores the module
                _load_trainable(self.model, Path(resume_from_checkpoint))

        def _load_best_model(self):
            pass  # the best checkpoint lives at the top of out_dir (see _save_best); the final weights stay

    return SFTTrainer


def train_sft(model: DNALLMForConditionalGeneration, train_records, val_records, cfg: SFTConfig, out_dir: str | Path,
              cache: EmbeddingCache | None = None) -> dict:
    """Train projector + LoRA on transformers.Trainer; keep the checkpoint with the lowest validation answer loss
    at the top of out_dir.

    `cache`: the frozen encoder's states, filled here for every training and validation window (pass one in to
    reuse those states afterwards, e.g. for the encoder-alone probe).

    out_dir/last is a symlink to the latest Trainer checkpoint (out_dir/checkpoint-N: projector + LoRA, optimizer,
    scheduler, RNG, trainer_state.json); `cfg.resume` continues from it.
    """
    from transformers import TrainingArguments

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = model.device
    model.dna_encoder.to(device)
    if cfg.liger:  # here, before any work: on a CPU model this is an error naming the device
        from dnallm.losses import FUSED, apply_liger_kernels, require_liger

        if cfg.compile:  # liger's fused loss only (see SFTConfig.compile)
            require_liger(model.device)
        else:
            apply_liger_kernels(model.language_model)
        model.loss_chunk_size = FUSED
    if cfg.init_projector_from:  # stage 2 starts from the stage-1 projector
        _load_trainable(model, Path(cfg.init_projector_from), projector_only=True)

    train = encode_examples(model, train_records, cfg.max_length, cfg.direct_answers, cfg.thinking_answers,
                            cfg.answer_weight, cfg.distractor_answers)
    views = record_views(train_records)
    model.config.answer_modes = [mode for mode, setting in (("thinking", cfg.thinking_answers),
                                                            ("direct", cfg.direct_answers))
                                 if any(_copies(setting, v) for v in views)]
    val = encode_examples(model, val_records, cfg.max_length)  # selection on the reasoning-mode answer loss
    if cache is None:
        cache = EmbeddingCache(model.dna_encoder, dtype=torch.bfloat16 if cfg.bf16 else torch.float32, device=device)
    t0 = time.time()
    cache.add([w for e in train + val for w in e["windows"]], batch_size=cfg.eval_batch_size)
    if rank == 0:
        print(f"[sft] encoder cache: {len(cache)} distinct windows in {time.time() - t0:.0f}s", flush=True)

    if cfg.gradient_checkpointing:
        checkpoint_layers(model.language_model, cfg.gradient_checkpointing)
    if cfg.compile:
        compile_layers(model.language_model)
    # Trainer counts optimizer updates; accumulation restarts at every epoch (a partial one closes each epoch).
    batches_per_epoch = math.ceil(len(_EpochBatches([len(e["input_ids"]) for e in train], cfg.batch_size, cfg.seed))
                                  / world)
    updates_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    eval_every = max(1, updates_per_epoch // max(1, cfg.evals_per_epoch))
    ds_config = None
    if cfg.deepspeed:
        ds_config = cfg.deepspeed if isinstance(cfg.deepspeed, dict) else json.loads(Path(cfg.deepspeed).read_text())
        ds_config = {**ds_config, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                     "gradient_clipping": "auto"}
        ds_config.pop("train_batch_size", None)
    last = out_dir / "last"
    resume = last.resolve() if cfg.resume and (last / "trainer_state.json").exists() else None
    saved_world = (json.loads((resume / WORLD_FILE).read_text())["world_size"]
                   if resume and (resume / WORLD_FILE).exists() else world)
    if saved_world != world and ds_config is not None:  # see _resharded
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    pad_id = model.processor.tokenizer.pad_token_id
    args = TrainingArguments(
        output_dir=str(out_dir), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
        remove_unused_columns=False, bf16=cfg.bf16,
        eval_strategy="steps", eval_steps=eval_every, save_strategy="steps", save_steps=cfg.save_every or eval_every,
        logging_steps=cfg.log_every, report_to="none",
        disable_tqdm=not cfg.progress, deepspeed=ds_config, use_cpu=device.type == "cpu",
        dataloader_num_workers=0, average_tokens_across_devices=True, save_only_model=False,
    )
    callbacks = [_Progress(cfg.stop_after_steps)]
    if cfg.tensorboard and rank == 0:  # Trainer's TensorBoard callback, writing to out_dir/tensorboard
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # tensorboard comes with the `train` extra, not with the core install
            raise ImportError("sft.tensorboard is on but the tensorboard package is missing: pip install "
                              "'dnallm-variants[train]', or set sft.tensorboard: false") from e
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(SummaryWriter(str(out_dir / "tensorboard"))))
    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=train, eval_dataset=val, data_collator=lambda ex: collate(ex, cache, pad_id),
        callbacks=callbacks, sft_cfg=cfg, val_examples=val, cache=cache, out_dir=out_dir)
    if resume:
        if rank == 0:  # a checkpoint-N written after `last` (a crash mid-save) is incomplete
            for old in out_dir.glob("checkpoint-*"):
                if old.resolve() != resume:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()
        if saved_world != world:
            resume = _resharded(resume, saved_world, world, rank)
    start = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    history = [{"step": h["step"], "epoch": round(h.get("epoch", 0.0), 3), "train_loss": h.get("train_loss_last"),
                "val_loss": h["eval_answer_loss"]} for h in state.log_history if "eval_answer_loss" in h]
    summary = {"best_val_loss": state.best_metric if state.best_metric is not None else math.inf,
               "steps": state.global_step, "finished": state.global_step >= state.max_steps,
               "train_seconds": round(time.time() - start, 1), "history": history,
               "train_examples": len(train), "train_tokens_per_epoch": sum(len(e["input_ids"]) for e in train),
               "config": asdict(cfg)}
    if rank == 0:
        (out_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
