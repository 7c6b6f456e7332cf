
import pytest

from dnallm.evaluation import classification_metrics, wilson_interval
from dnallm.inference import parse_answer, prepare_windows, split_reasoning
from dnallm.labels import KEGG_LABELS


@pytest.mark.parametrize("text,expected", [
    ("<think>\nsteps\n</think>\n\nAnswer: melanoma", "melanoma"),
    ("<think>x</think>\nAnswer:  Parkinson's Disease.\n\n", "parkinson's disease"),
    ("reasoning mentions melanoma\nAnswer: prostate cancer", "prostate cancer"),
    ("<think>this is melanoma</think>\nThe answer is melanoma", None),       # no Answer: line
    ("Answer: melanoma\nmore text after", None),                            # not the final line
    ("Answer: the flu", None),                                              # not one of the 37
    ("<think>Answer: melanoma", None),                                      # inside an unclosed think block
    ("", None),
])
def test_strict_answer_parse(text, expected):
    assert parse_answer(text) == expected


def test_split_reasoning():
    assert split_reasoning("<think>\nStep 1: x\n</think>\n\nAnswer: melanoma") == "Step 1: x"
    assert split_reasoning("Step 1: x\nAnswer: melanoma") == "Step 1: x"
    # a block that was never opened (cut or drifting generations): the close tag is not part of the reasoning
    assert split_reasoning("Step 1: x\n</think>\n\nAnswer: melanoma") == "Step 1: x"


def test_wilson_interval_known_values():
    low, high = wilson_interval(140, 146)
    # hand-computed: centre 0.94714, half-width 0.03389
    assert low == pytest.approx(0.91325, abs=1e-5) and high == pytest.approx(0.98103, abs=1e-5)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_metrics_count_invalid_as_wrong_and_average_over_the_labels_present():
    gold = ["melanoma", "melanoma", "prostate cancer", "gastric cancer"]
    pred = ["melanoma", None, "prostate cancer", "melanoma"]
    m = classification_metrics(gold, pred)
    assert (m["n"], m["correct"], m["invalid_answers"]) == (4, 2, 1)
    assert m["accuracy"] == 0.5
    # per-label F1: melanoma 0.5 (p=1/2, r=1/2), prostate cancer 1.0, gastric cancer 0.0; the labels present
    # in gold or predictions are these three; the 37-label figure counts the 34 absent ones as 0
    melanoma_f1 = 2 * 0.5 * 0.5 / (0.5 + 0.5)
    assert m["macro_f1"] == pytest.approx((melanoma_f1 + 1.0 + 0.0) / 3)
    assert m["macro_f1_37"] == pytest.approx((melanoma_f1 + 1.0 + 0.0) / len(KEGG_LABELS))


def test_a_perfect_classifier_has_macro_f1_one_on_every_split():
    from dnallm.data import load_kegg

    for split in ("test", "grouped-test"):
        gold = list(load_kegg(split)["label"])
        m = classification_metrics(gold, gold)
        assert m["macro_f1"] == 1.0 and m["accuracy"] == 1.0
        assert m["macro_f1_37"] == pytest.approx(len(set(gold)) / len(KEGG_LABELS))  # the old figure's cap
    assert set(m) >= {"n", "accuracy", "macro_f1", "accuracy_ci_low", "accuracy_ci_high"}


def test_prepare_windows_errors_name_the_problem():
    with pytest.raises(ValueError, match="row 3: reference sequence: invalid base 'X' at position 1"):
        prepare_windows("AX" + "A" * 1022, "A" * 1024, where="row 3")
    with pytest.raises(ValueError, match="wrong window length: reference 1000 bp, variant 1024 bp"):
        prepare_windows("A" * 1000, "A" * 1024)
    ref, var = prepare_windows("acgt" * 256, "ACGT" * 256)
    assert ref == var == "ACGT" * 256


def test_long_sequences_in_another_layout_are_refused_not_mis_windowed():
    """Any pair of >= 4000 bp sequences split as KEGG layout (2000 bp flanks): an SNV centred in 2500 bp flanks
    gave windows differing at index 1012, one in 5000 bp flanks two identical windows (the variant unseen)."""
    import random

    from dnallm.data import load_kegg

    rng = random.Random(0)
    for flank, problem in ((2500, "not in the KEGG layout"), (5000, "not in the KEGG layout")):
        up, down = "".join(rng.choice("ACGT") for _ in range(flank)), "".join(rng.choice("ACGT") for _ in range(flank))
        with pytest.raises(ValueError, match=f"row 1: .*{problem}"):
            prepare_windows(up + "A" + down, up + "G" + down, where="row 1")
    # a deletion of 1,800 bp right after the flank: the windows cut from it are identical
    up, down = "".join(rng.choice("ACGT") for _ in range(2000)), "".join(rng.choice("ACGT") for _ in range(2000))
    middle = "C" * 1800
    with pytest.raises(ValueError, match="the model would not see the variant"):
        prepare_windows(up + "T" + middle + down, up + "T" + middle[:-1] + down)
    for row in load_kegg("test").select(range(0, 146, 5)):  # every shipped layout still passes, windows unchanged
        assert prepare_windows(row["reference_sequence"], row["variant_sequence"]) == (row["ref_window"],
                                                                                       row["variant_window"])
