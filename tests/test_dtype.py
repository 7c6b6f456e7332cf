"""Inference dtype (issue 13, item 5): --dtype auto|bfloat16|float16|float32; auto = bf16 on CUDA, fp32 on CPU."""

import pytest
import torch

from dnallm.data import load_kegg
from dnallm.inference import explain_variant, load_model, resolve_dtype


def test_auto_is_bfloat16_on_cuda_and_float32_on_cpu():
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")


def test_bfloat16_model_scores_like_the_float32_one(quickstart_dir):
    out, _ = quickstart_dir
    model_fp32 = load_model(str(out / "model"), device="cpu")  # auto on the CPU
    model_bf16 = load_model(str(out / "model"), device="cpu", dtype="bfloat16")
    for model, dtype in ((model_fp32, torch.float32), (model_bf16, torch.bfloat16)):
        assert {p.dtype for p in model.parameters()} == {dtype}  # encoder, projector and LM alike
    r = load_kegg("test")[0]
    a = explain_variant(r["question"], r["ref_window"], r["variant_window"], model=model_fp32, mode="score")
    b = explain_variant(r["question"], r["ref_window"], r["variant_window"], model=model_bf16, mode="score")
    for label, p in a.label_probabilities.items():
        assert abs(b.label_probabilities[label] - p) < 0.05, label
    # the same answer, unless the cut-down model's top two are within bf16's rounding of each other
    (first, p1), (_, p2) = sorted(a.label_probabilities.items(), key=lambda kv: -kv[1])[:2]
    assert b.label == first or p1 - p2 < 0.05, (first, p1, p2, b.label)
    by_path = explain_variant(r["question"], r["ref_window"], r["variant_window"], model=out / "model",
                              mode="score", dtype="bfloat16")
    assert by_path.label_probabilities == b.label_probabilities  # the path is loaded in the dtype asked for


def test_cli_commands_take_dtype(quickstart_dir):
    from typer.testing import CliRunner

    from dnallm.cli import app

    out, _ = quickstart_dir
    r = load_kegg("test")[0]
    runner = CliRunner()
    res = runner.invoke(app, ["explain", "--model", str(out / "model"), "--reference", r["ref_window"], "--variant",
                              r["variant_window"], "--question", r["question"], "--mode", "score",
                              "--dtype", "bfloat16"])
    assert res.exit_code == 0, res.output
    model = load_model(str((out / "model").resolve()), dtype="bfloat16")  # the cached instance the CLI used
    expected = explain_variant(r["question"], r["ref_window"], r["variant_window"], model=model, mode="score")
    assert expected.label in res.output
    res = runner.invoke(app, ["eval", "--model", str(out / "model"), "--dtype", "fp8", "--limit", "2"])
    assert res.exit_code == 2 and "unknown dtype 'fp8'" in res.output
