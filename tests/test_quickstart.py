"""End to end on a cut-down preset: pretrain, SFT, select on val, evaluate, explain; then the CLI on it."""

import json

import pytest
import torch
from helpers import mini_preset
from typer.testing import CliRunner

from dnallm.cli import app
from dnallm.data import load_kegg, load_views, training_views
from dnallm.inference import explain_variant, parse_answer
from dnallm.encoders.cache import EmbeddingCache
from dnallm.evaluation import wilson_interval
from dnallm.modeling import DNALLMForConditionalGeneration
from dnallm.training import answer_loss, encode_examples


def test_quickstart_writes_checkpoint_metrics_and_explanation(quickstart_dir):
    out, result = quickstart_dir
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    assert metrics == result["metrics"]
    assert metrics["split"] == "test" and metrics["n"] == 24
    # test and hard-test, each with the model's two modes, its controls and every baseline incl. the probe
    hard = json.loads((out / "eval" / "hard-test" / "metrics.json").read_text())
    assert hard["n"] == 24 and set(hard["controls"]) == {"text-only", "shuffled-dna"}
    assert set(hard["baselines"]) == {"majority", "tfidf-logreg", "kmer-logreg", "encoder alone"}
    assert metrics["invalid_answers"] == 0 and metrics["constrained"]  # constrained answers are always labels
    systems = {(r["system"], r["mode"]) for r in result["summary"]}
    assert {("model", "score"), ("model", "generate (constrained answer)"), ("control: shuffled-dna", "score"),
            ("baseline: encoder alone", "DNA only (frozen encoder)")} <= systems
    for row in result["summary"]:
        assert row["test"] is not None and row["hard-test"] is not None
    by_name = {(r["system"], r["mode"]): r for r in result["summary"]}
    assert by_name[("model", "score")]["test"] == metrics["modes"]["score"]["accuracy"]
    assert (metrics["accuracy_ci_low"], metrics["accuracy_ci_high"]) == wilson_interval(metrics["correct"], 24)
    predictions = [json.loads(line) for line in open(out / "eval" / "test" / "predictions.jsonl")]
    assert len(predictions) == 24 and sum(p["correct"] for p in predictions) == metrics["correct"]
    summary = json.loads((out / "model" / "train_summary.json").read_text())
    # the checkpoint left in model/ is the one whose validation loss was recorded as the best
    best = DNALLMForConditionalGeneration.from_pretrained(out / "model")
    val = encode_examples(best, load_views("val", training_views(mini_preset()), limit=24), 8192)
    cache = EmbeddingCache(best.dna_encoder, dtype=torch.float32, device=best.device)
    cache.add([w for e in val for w in e["windows"]])
    assert answer_loss(best, val, cache, batch_size=8) == pytest.approx(summary["best_val_loss"], rel=1e-5)
    assert set(result["example"]) >= {"label", "reasoning", "raw_text", "gold", "top_k"}
    # the checkpoint refers to its models by paths relative to itself
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["dna_config"]["encoder_name_or_path"] == "../encoder" and config["text_model_name_or_path"] == "../text-model"


def test_explain_variant_from_saved_checkpoint(quickstart_dir):
    out, result = quickstart_dir
    row = load_kegg("test")[0]
    first = explain_variant(row["question"], row["reference_sequence"], row["variant_sequence"], model=out / "model",
                            max_new_tokens=24)
    again = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=out / "model",
                            max_new_tokens=24)
    assert first.raw_text == again.raw_text  # KEGG-layout input and pre-cut windows are the same question
    # the default answer line is constrained to the 37 labels; constrained=False decodes it freely
    assert first.label in first.label_probabilities and first.raw_text.endswith(f"Answer: {first.label}")
    free = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=out / "model",
                           max_new_tokens=24, constrained=False)
    assert free.label == parse_answer(free.raw_text)
    assert first.to_dict().keys() == {"label", "reasoning", "raw_text", "label_probabilities", "top_k"}
    assert sum(first.label_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    scored = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=out / "model",
                             mode="score")
    assert scored.label == scored.top_k[0][0] == max(scored.label_probabilities, key=scored.label_probabilities.get)
    assert scored.label_probabilities == first.label_probabilities and scored.raw_text == ""


def test_thinking_budget_forces_the_answer_line(quickstart_dir):
    from dnallm.inference import FORCED_ANSWER, generate_answers, load_model

    out, _ = quickstart_dir
    model = load_model(str((out / "model").resolve()))
    rows = load_kegg("test").select(range(3))
    windows = list(zip(rows["ref_window"], rows["variant_window"]))
    # free decoding of the answer line (the constrained default is tested in test_scoring.py)
    budgeted = generate_answers(model, list(rows["question"]), windows, max_new_tokens=4, max_answer_tokens=6,
                                constrained=False)
    free = generate_answers(model, list(rows["question"]), windows, max_new_tokens=4, max_answer_tokens=0,
                            constrained=False)
    forced = [(b, f) for b, f in zip(budgeted, free) if b != f]
    assert forced  # a 4-token budget cuts the reasoning of (at least) one of the three
    for b, f in forced:
        assert b.startswith(f) and b[len(f):].startswith(FORCED_ANSWER)


def test_cli_eval_and_explain(quickstart_dir, tmp_path):
    out, _ = quickstart_dir
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(out / "model"), "--split", "hard-val", "--out", str(tmp_path),
                              "--max-new-tokens", "8", "--batch-size", "48", "--no-probe"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["split"] == "hard-val" and metrics["n"] == 144
    row = load_kegg("test")[1]
    res = runner.invoke(app, ["explain", "--model", str(out / "model"), "--question", row["question"],
                              "--reference", row["ref_window"], "--variant", row["variant_window"][:-1] + "Z"])
    assert res.exit_code == 2 and "invalid base 'Z' at position 1023" in res.output


def test_cli_probe_on_a_checkpoints_encoder(quickstart_dir, tmp_path):
    out, _ = quickstart_dir
    runner = CliRunner()
    res = runner.invoke(app, ["probe", "--model", str(out / "model"), "--split", "hard-test",
                              "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "probe.json")])
    assert res.exit_code == 0, res.output
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert (probe["split"], probe["n"], probe["probe"]["layer"], probe["selected_on"]) == ("hard-test", 146, 2, "val")
    assert probe["accuracy"] > 0.8  # the shipped stand-in knows loci (87.0 % on the full training split)
    assert len(probe["probe"]["selection"]) == 9 and list((tmp_path / "cache").glob("pooled-genos-*.npz"))
    res = runner.invoke(app, ["probe", "--model", str(out / "model"), "--encoder", "x"])
    assert res.exit_code == 2 and "Invalid value" in res.output  # --encoder and --model are exclusive


def test_the_quickstart_runs_on_the_core_install(tmp_path):
    """README command 1 installs the core dependencies only: the quickstart (pretrained stand-ins, SFT, evaluation,
    explain) must not need an optional extra. The extras are installed here (CI), so a subprocess hides them."""
    import subprocess
    import sys

    # A reused folder: an earlier run's evaluation (another split) and pretraining log must not outlive it (the card
    # showed them as the new model's).
    (tmp_path / "eval" / "grouped-test").mkdir(parents=True)
    (tmp_path / "eval" / "grouped-test" / "metrics.json").write_text('{"split": "grouped-test"}')
    (tmp_path / "pretrain_log.json").write_text('{"train_rows": 2}')
    extras = ["deepspeed", "trl", "tensorboard", "gradio", "pysam", "pyfaidx", "Bio", "mcp", "pytest"]
    script = f"""
import sys
sys.modules.update(dict.fromkeys({extras!r}))  # None: `import X` raises ImportError, find_spec(X) says absent
from dnallm.quickstart import run_quickstart
result = run_quickstart({str(tmp_path)!r}, limit=4)
assert result["summary"] and result["example"]["label_probabilities"]
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model" / "config.json").exists()
    from dnallm.quickstart import SHIPPED_STAND_INS

    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["hard-test", "test"]
    assert (tmp_path / "pretrain_log.json").read_bytes() == (SHIPPED_STAND_INS / "pretrain_log.json").read_bytes()
    identity = json.loads((tmp_path / "eval" / "test" / "metrics.json").read_text())["checkpoint"]["identity"]
    from dnallm.model_card import checkpoint_identity

    assert identity == checkpoint_identity(tmp_path / "model")
