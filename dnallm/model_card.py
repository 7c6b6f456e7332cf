"""What a checkpoint is, what it was trained on and how accurate it was measured to be, read from its files:
the config, `train_summary.json` and the evaluations `dnallm eval` or the quickstart wrote next to it. Nothing is
re-measured: a checkpoint without evaluations says so instead of showing a number.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dnallm.labels import KEGG_LABELS

DATA = ("BioReason KEGG variant -> disease set (37 labels); training views: kegg (question with the pathway "
        "context) and kegg_hard (the same variants, question without it)")
LEAK_NOTE = ("The official split leaks: 94 of the 146 test variant sequences also occur in training "
             "(rows_with_variant_in_train). hard-* splits ask without the pathway context; grouped-* splits share "
             "no variant window with training.")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _training(path: Path) -> dict | None:
    summary = _read_json(path / "train_summary.json")
    if summary is None:
        return None
    cfg = summary.get("config") or {}
    views = {}  # answers per record and view, e.g. {"kegg": {"direct": 2}}
    for form in ("thinking_answers", "direct_answers"):
        setting = cfg.get(form) or {}
        # a bool or a number sets every view (SFTConfig); which views the data held is not recorded
        per_view = setting if isinstance(setting, dict) else {"every view": float(setting)}
        for view, count in per_view.items():
            views.setdefault(view, {})[form.removesuffix("_answers")] = count
    return {"examples": summary.get("train_examples"), "tokens_per_epoch": summary.get("train_tokens_per_epoch"),
            "epochs": cfg.get("epochs"), "steps": summary.get("steps"), "best_val_loss": summary.get("best_val_loss"),
            "answers_per_record": views}


def checkpoint_identity(path: str | Path) -> str | None:
    """What an evaluation records of the checkpoint it ran on: the SHA-256 of its train_summary.json (written once
    per training run), None without one. The card shows only evaluations of this very training run."""
    try:
        return hashlib.sha256((Path(path) / "train_summary.json").read_bytes()).hexdigest()
    except OSError:
        return None


def _evaluations(path: Path) -> list[dict]:
    """Evaluations of this checkpoint: `dnallm eval`'s MODEL/eval/SPLIT and the quickstart's DIR/eval/SPLIT, each
    only if it records this training run (a sibling checkpoint's, or an earlier run's in a reused folder, do not)."""
    out = []
    identity = checkpoint_identity(path)
    found = sorted({*(path / "eval").glob("*/metrics.json"), *(path.parent / "eval").glob("*/metrics.json")})
    for metrics_path in found:
        m = _read_json(metrics_path)
        if not m or "split" not in m or identity is None or (m.get("checkpoint") or {}).get("identity") != identity:
            continue
        modes = m.get("modes") or {m.get("mode", "?"): m}
        out.append({
            "split": m["split"], "n": m.get("n"),
            "modes": [{"mode": name, "accuracy": r["accuracy"], "ci_low": r.get("accuracy_ci_low"),
                       "ci_high": r.get("accuracy_ci_high"), "macro_f1": r.get("macro_f1")}
                      for name, r in modes.items() if isinstance(r, dict) and "accuracy" in r],
            "rows_with_variant_in_train": m.get("rows_with_variant_in_train"),
            "baselines_trained_on": m.get("baselines_trained_on"),
            "generate_decoding": m.get("decoding"),
        })
    return out


def checkpoint_card(path: str | Path, config) -> dict:
    """The card of the checkpoint at `path` whose loaded config is `config` (a DNALLMConfig)."""
    path = Path(path)
    dna, text = config.dna_config, config.text_config
    fingerprint = dna.fingerprint or {}
    return {
        "checkpoint": str(path),
        "encoder": {"type": dna.encoder_type, "name_or_path": dna.encoder_name_or_path, "layer": dna.layer,
                    "window_bp": dna.window_size, "hidden_size": fingerprint.get("hidden_size"),
                    "num_layers": fingerprint.get("num_hidden_layers")},
        "text_model": {"name_or_path": config.text_model_name_or_path, "model_type": getattr(text, "model_type", None),
                       "hidden_size": getattr(text, "hidden_size", None),
                       "num_layers": getattr(text, "num_hidden_layers", None),
                       "vocab_size": getattr(text, "vocab_size", None)},
        "projector": {"type": config.projector_type, "stride": config.projector_stride},
        "lora": {"r": config.lora_r, "alpha": config.lora_alpha},
        "answer_forms_trained": list(config.answer_modes or []),
        "labels": len(KEGG_LABELS),
        "data": DATA,
        "training": _training(path),
        "evaluations": _evaluations(path),
        "note": LEAK_NOTE,
    }
