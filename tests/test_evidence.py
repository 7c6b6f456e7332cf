"""Ref-vs-alt contrast (dnallm.evidence): the answer's label with the variant vs with the reference in its place."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dnallm.cli import app
from dnallm.data import load_kegg
from dnallm.evidence import no_variant_windows, ref_vs_alt
from dnallm.inference import explain_variant, load_model
from dnallm.labels import KEGG_LABELS
from dnallm.scoring import label_probabilities


def test_ref_vs_alt_reads_the_labels_change_and_the_top_movers():
    variant, reference = torch.full((37,), 0.01), torch.full((37,), 0.01)
    variant[3], variant[5], reference[3], reference[7] = 0.50, 0.15, 0.20, 0.45
    c = ref_vs_alt(variant, reference, KEGG_LABELS[3])
    assert c["label"] == KEGG_LABELS[3] and c["delta_p"] == pytest.approx(0.30)
    assert c["p_variant"] == pytest.approx(0.50) and c["p_reference"] == pytest.approx(0.20)
    assert c["reference_label"] == KEGG_LABELS[7]
    assert [label for label, _ in c["movers"]] == [KEGG_LABELS[7], KEGG_LABELS[3], KEGG_LABELS[5]]
    assert c["movers"][0][1] == pytest.approx(-0.44)
    assert ref_vs_alt(variant, reference, None)["label"] == KEGG_LABELS[3]  # unparsed answer: the top label
    with pytest.raises(ValueError, match="unknown label 'scurvy'"):
        ref_vs_alt(variant, reference, "scurvy")
    with pytest.raises(ValueError, match=r"two \[37\] probability vectors"):
        ref_vs_alt(variant[:5], reference, None)


def test_contrast_is_the_scoring_difference_and_zero_without_a_variant(quickstart_dir):
    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    row = load_kegg("test")[0]
    question, ref, var = row["question"], row["ref_window"], row["variant_window"]
    assert ref != var
    result = explain_variant(question, ref, var, model=model, mode="score", contrast=True)
    c = result.contrast
    # independently: the two scorings the contrast compares
    both = label_probabilities(model, [question, question], [(ref, var), *no_variant_windows([(ref, var)])])
    j = KEGG_LABELS.index(result.label)
    assert c["label"] == result.label
    assert c["p_variant"] == pytest.approx(float(both[0, j]), abs=1e-6) == pytest.approx(result.label_probabilities[result.label], abs=1e-6)
    assert c["p_reference"] == pytest.approx(float(both[1, j]), abs=1e-6)
    assert c["delta_p"] == pytest.approx(float(both[0, j] - both[1, j]), abs=1e-6)
    assert c["reference_label"] == KEGG_LABELS[int(both[1].argmax())]
    # no variant (reference in both slots): nothing moves
    same = explain_variant(question, ref, ref, model=model, mode="score", contrast=True).contrast
    assert same["delta_p"] == 0.0 and all(change == 0.0 for _, change in same["movers"])
    assert "contrast" not in explain_variant(question, ref, var, model=model, mode="score").to_dict()


def test_cli_contrast_matches_the_api(quickstart_dir):
    out, _ = quickstart_dir
    row = load_kegg("test")[1]
    res = CliRunner().invoke(app, ["explain", "--model", str(out / "model"), "--mode", "score", "--contrast",
                                   "--question", row["question"], "--reference", row["ref_window"],
                                   "--variant", row["variant_window"]])
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)["contrast"]
    api = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=out / "model",
                          mode="score", contrast=True).contrast
    assert cli["label"] == api["label"] and cli["delta_p"] == pytest.approx(api["delta_p"], abs=1e-6)
