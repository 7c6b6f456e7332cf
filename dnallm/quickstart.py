"""`dnallm quickstart`: the embedded default, end to end on CPU.

1. pretrain a tiny Genos-layout DNA LM (next-base) on the training windows       -> DIR/encoder
2. prune the Qwen3 tokenizer to the training text, pretrain a tiny Qwen3 LM       -> DIR/text-model
3. SFT: frozen encoder, projector + LoRA; checkpoint chosen on val answer loss    -> DIR/model
4. evaluate on the official test split (greedy, strict Answer: parse)             -> DIR/eval/test
5. one explain_variant call on the saved checkpoint
"""

from __future__ import annotations

import json
import shutil
import time
from importlib import resources
from pathlib import Path

import torch
import yaml

from dnallm.configuration import DNALLMConfig
from dnallm.data import WINDOW_SIZE, load_kegg, load_views, training_views
from dnallm.encoders.cache import EmbeddingCache
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.probe import store_pooled
from dnallm.processing import DNALLMProcessor, format_answer
from dnallm.training import SFTConfig, train_sft


# The two tiny stand-ins, pretrained with `build_tiny_models` on the official train split (see its README.md).
SHIPPED_STAND_INS = Path(__file__).parent / "assets" / "tiny"


def load_preset(name_or_path: str | Path = "tiny") -> dict:
    """A preset by name (the packaged `dnallm/presets/NAME.yaml`, e.g. "tiny") or by path (train/configs/...),
    checked against the one schema every entry point reads (`check_preset`)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise FileNotFoundError(f"no preset file {path}")
        return check_preset(yaml.safe_load(path.read_text()), str(path))
    packaged = resources.files("dnallm.presets").joinpath(f"{name_or_path}.yaml")
    if not packaged.is_file():
        names = sorted(p.name.removesuffix(".yaml") for p in resources.files("dnallm.presets").iterdir()
                       if p.name.endswith(".yaml"))
        raise ValueError(f"unknown preset {name_or_path!r}: give a .yaml path or one of {names}")
    return check_preset(yaml.safe_load(packaged.read_text()), f"preset {name_or_path!r}")


def check_preset(preset: dict, where: str) -> dict:
    """The preset schema: `model` holds DNALLMConfig's arguments (the encoder under `dna_config`), `sft`
    SFTConfig's, `grpo` GRPOConfig's, `data` the training views; the tiny preset adds its stand-ins' pretraining
    and its evaluation settings. An unknown section or key is an error naming it, not a silently ignored typo."""
    import inspect

    from dnallm.configuration import DNAEncoderConfig
    from dnallm.grpo import GRPOConfig

    def known(cls) -> set[str]:
        return {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "kwargs")}

    schema = {"model": known(DNALLMConfig), "sft": known(SFTConfig), "grpo": known(GRPOConfig), "data": {"views"},
              "dna_pretrain": {"steps", "batch_size", "lr", "layout"},
              "text_pretrain": {"epochs", "batch_size", "lr", "layout"}, "eval": {"batch_size", "max_new_tokens"}}
    if not isinstance(preset, dict) or not isinstance(preset.get("model"), dict):
        raise ValueError(f"{where}: a preset is a mapping with at least a 'model' section")
    sections = [(section, preset[section], schema.get(section)) for section in preset]
    sections.append(("model.dna_config", preset["model"].get("dna_config") or {}, known(DNAEncoderConfig)))
    for section, values, keys in sections:
        if keys is None:
            raise ValueError(f"{where}: unknown section {section!r}; expected {sorted(schema)}")
        unknown = sorted(set(values or {}) - keys)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} in section {section!r}; expected {sorted(keys)}")
    return preset


def build_tiny_models(out: Path, train, preset: dict, device: str = "cpu", stop_after: int | None = None,
                      encoder_from: Path | None = None) -> dict:
    """Steps 1-2: the two small pretrained models the tiny preset stands on.

    Writes OUT/encoder, OUT/text-model and OUT/pretrain_log.json (the settings and both loss curves, which the
    tests use to check that this function still reproduces the shipped stand-ins' first steps; `stop_after`
    ends each pretraining after that many steps, with the full run's schedule). `encoder_from`: copy that
    folder's encoder/ (and its logged DNA losses) instead of pretraining one, to rebuild the text stand-in alone.
    """
    from dnallm.data import HARD_QUESTION
    from dnallm.encoders import build_encoder
    from dnallm.pretrain import pretrain_dna_encoder, pretrain_text_model
    from dnallm.tokenization import BUNDLED_QWEN3_TOKENIZER, load_text_tokenizer, prune_tokenizer

    out = Path(out)
    p = preset["dna_pretrain"]
    if encoder_from is not None:
        if (Path(encoder_from) / "encoder").resolve() != (out / "encoder").resolve():
            shutil.copytree(Path(encoder_from) / "encoder", out / "encoder", dirs_exist_ok=True)
        dna_losses = json.loads((Path(encoder_from) / "pretrain_log.json").read_text())["dna_losses"]
    else:
        dna_losses = pretrain_dna_encoder(list(train["ref_window"]) + list(train["variant_window"]), out / "encoder",
                                          steps=p["steps"], batch_size=p["batch_size"], lr=p["lr"], device=device,
                                          stop_after=stop_after, **p["layout"])
    # The processor adds the DNA span tokens; the pruned vocabulary keeps them and every piece of the
    # rendered training conversations (chat markup, questions, reasoning, answer lines).
    encoder = build_encoder("genos", str(out / "encoder"))
    proc = DNALLMProcessor(load_text_tokenizer(str(BUNDLED_QWEN3_TOKENIZER)), encoder.tokenizer)
    texts = [proc.prompt(q) + proc.target(r["reasoning"], r["label"]) for r in train
             for q in (r["question"], HARD_QUESTION)]
    tokenizer = prune_tokenizer(proc.tokenizer, texts)
    p = preset["text_pretrain"]
    # Pretraining text: each training question followed by its written answer (reasoning + answer line),
    # no DNA: the LM learns the language and the answer format before it ever sees a DNA token.
    text_losses = pretrain_text_model(
        tokenizer, [f"{r['question']}\n\n{format_answer(r['reasoning'], r['label'])}" for r in train],
        out / "text-model", epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], device=device,
        stop_after=stop_after, **p["layout"])
    log = {"dna_pretrain": preset["dna_pretrain"], "text_pretrain": preset["text_pretrain"], "train_rows": len(train),
           "device": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu",
           "torch": torch.__version__, "dna_losses": dna_losses, "text_losses": text_losses}
    (out / "pretrain_log.json").write_text(json.dumps(log))
    return log


def summary_table(evaluations: dict[str, dict]) -> list[dict]:
    """Rows (system, mode, accuracy per split) that put the model next to its controls and baselines: the
    rows of each split's report (`report.system_rows`), side by side."""
    from dnallm.report import system_rows

    splits = list(evaluations)
    rows: dict[tuple[str, str], dict] = {}
    for split, metrics in evaluations.items():
        for system, mode, m in system_rows(metrics):
            if "skipped" in m:
                continue
            if system == "model" and mode == "generate" and metrics.get("constrained"):
                mode += " (constrained answer)"
            rows.setdefault((system, mode), {"system": system, "mode": mode})[split] = m["accuracy"]
    return [{**{s: None for s in splits}, **row} for row in rows.values()]


def run_quickstart(out: str | Path = "runs/quickstart", preset: str | dict = "tiny", pretrain: bool = False,
                   reuse: bool = False, limit: int | None = None, splits: str = "official",
                   device: str = "cpu") -> dict:
    """Run the embedded default end to end; `limit` keeps only the first rows of each split (smoke runs).

    Stand-ins: the shipped pretrained ones (dnallm/assets/tiny, copied to DIR) unless `pretrain` (build them anew
    from the preset, ~40 min on 2 CPU cores) or `reuse` (keep DIR/encoder and DIR/text-model from an earlier run).
    splits="official": the published train/val/test; splits="grouped": the leak-free grouped split (pretraining,
    always anew, SFT and selection on grouped-train/val only, evaluation on grouped-test).
    device: where pretraining, SFT and evaluation run ("cpu" is the embedded default; "cuda" for the grouped run).
    """
    from dnallm.evaluation import evaluate_split, split_spec, training_split
    from dnallm.inference import explain_variant

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    preset = load_preset(preset) if isinstance(preset, str) else check_preset(preset, "the preset given")
    take = (lambda ds: ds.select(range(min(limit, len(ds))))) if limit else (lambda ds: ds)
    torch.manual_seed(0)
    timings = {}
    t = time.time()
    if splits not in ("official", "grouped"):
        raise ValueError(f"unknown splits {splits!r}; expected 'official' or 'grouped'")
    prefix = "grouped-" if splits == "grouped" else ""
    if pretrain or splits == "grouped":
        # The shipped stand-ins were pretrained on the official train split, which holds grouped-test variants.
        build_tiny_models(out, take(load_kegg(prefix + "train")), preset, device=device)
    elif not (reuse and (out / "encoder").exists() and (out / "text-model").exists()):
        for part in ("encoder", "text-model"):  # copies, so that DIR holds everything its checkpoint needs
            shutil.copytree(SHIPPED_STAND_INS / part, out / part, dirs_exist_ok=True)
        shutil.copy2(SHIPPED_STAND_INS / "pretrain_log.json", out / "pretrain_log.json")  # not an earlier run's
    views = training_views(preset)
    window = preset["model"].get("dna_config", {}).get("window_size", WINDOW_SIZE)
    train, val = (load_views(prefix + s, views, limit=limit, window=window) for s in ("train", "val"))
    timings["pretrain_s"] = round(time.time() - t, 1)

    t = time.time()
    # Paths are relative to the checkpoint folder DIR/model, so the whole DIR can be moved.
    config = DNALLMConfig(**{**preset["model"], "text_model_name_or_path": "../text-model",
                             "dna_config": {**preset["model"].get("dna_config", {}), "encoder_type": "genos",
                                            "encoder_name_or_path": "../encoder"}})
    (out / "model").mkdir(exist_ok=True)
    model = DNALLMForConditionalGeneration.build(config, base_dir=out / "model")
    model.add_lora()
    model.to(device)
    # One encoder pass per window for the whole run: the SFT's encoder states also give the probe its pooled
    # vectors for every training and validation window.
    cache = EmbeddingCache(model.dna_encoder, device=device)
    summary = train_sft(model, train, val, SFTConfig.from_dict(preset["sft"]), out / "model", cache=cache)
    store_pooled(model.dna_encoder, cache.pooled(), out / "probe-cache")
    del cache
    timings["sft_s"] = round(time.time() - t, 1)

    t = time.time()
    # an earlier run's evaluations in a reused DIR (other splits, another model) go: DIR/eval is this run's
    shutil.rmtree(out / "eval", ignore_errors=True)
    # the val-selected checkpoint, as users load it (inference.load_model): LoRA merged into the weights
    best = DNALLMForConditionalGeneration.from_pretrained(out / "model").merge_lora().to(device).eval()
    evaluations = {}
    # test and hard-test hold the same windows: one encoder pass per distinct window for both evaluations
    eval_cache = EmbeddingCache(best.dna_encoder, device=device)
    for split in (prefix + "test", "hard-" + prefix + "test"):
        name, view = split_spec(split)
        # Controls in score mode only: on 2 CPU cores each generation pass costs a minute or more.
        # Baselines and the probe train on the matching training split (cut like the rest in smoke runs).
        train_records = take(load_kegg(*split_spec(training_split(split)), window=window)) if limit else None
        evaluations[split] = evaluate_split(
            best, take(load_kegg(name, view=view, window=window)), split, out / "eval" / split,
            batch_size=preset["eval"]["batch_size"], max_new_tokens=preset["eval"]["max_new_tokens"],
            controls=("text-only", "shuffled-dna"), controls_generate=False, probe_cache_dir=out / "probe-cache",
            train_records=train_records, encoder_cache=eval_cache)
    metrics = evaluations[prefix + "test"]
    example = take(load_kegg(prefix + "test", window=window))[0]
    timings["eval_s"] = round(time.time() - t, 1)

    t = time.time()
    explanation = explain_variant(example["question"], example["reference_sequence"], example["variant_sequence"],
                                  model=best)
    timings["explain_s"] = round(time.time() - t, 1)
    result = {"metrics": metrics, "summary": summary_table(evaluations), "best_val_loss": summary["best_val_loss"],
              "timings": timings, "example": {"row": example["row"], "gold": example["label"], **explanation.to_dict()}}
    (out / "quickstart.json").write_text(json.dumps(result, indent=2))
    return result
