"""Evaluation that can be trusted (issue 4): grouped split, metrics, calibration, baselines, controls, CLI."""

import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from dnallm.baselines import majority_baseline, tfidf_logreg_baseline
from dnallm.calibration import expected_calibration_error, reliability_bins
from dnallm.cli import app
from dnallm.data import GROUPED_SPLITS, HARD_QUESTION, SPLITS, load_kegg
from dnallm.evaluation import (CONTROLS, abstain_metrics, calibration_metrics, classification_metrics,
                               control_inputs, derange_by_content, derangement, per_label_table, run_inputs,
                               top_k_accuracy)
from dnallm.labels import KEGG_LABELS, LABEL_TO_ID
from dnallm.splits import assignments_csv, assignments_path, grouped_assignments


# ---- grouped split ----

def test_grouped_split_reproduces_the_shipped_file():
    # the shipped file was written by `python -m dnallm.splits` in another process: same bytes = deterministic
    assert assignments_csv(grouped_assignments()) == assignments_path().read_text()


def test_grouped_split_shares_no_variant_sequence_or_reference_window():
    parts = {s: load_kegg(s) for s in GROUPED_SPLITS}
    sizes = {s: len(ds) for s, ds in parts.items()}
    assert sum(sizes.values()) == 1449 == sum(len(load_kegg(s)) for s in SPLITS)
    for s in ("grouped-val", "grouped-test"):
        assert 0.08 <= sizes[s] / 1449 <= 0.12, sizes
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for column in ("variant_sequence", "ref_window"):
                assert not set(parts[a][column]) & set(parts[b][column]), (a, b, column)
    # every official row exactly once, and the grouped record is that official row
    keys = [(src, row) for ds in parts.values() for src, row in zip(ds["source_split"], ds["row"])]
    assert len(set(keys)) == 1449
    official = {s: load_kegg(s) for s in SPLITS}
    r = parts["grouped-test"][5]
    assert official[r["source_split"]][r["row"]]["variant_sequence"] == r["variant_sequence"]
    hard = load_kegg("grouped-test", view="kegg_hard")
    assert set(hard["question"]) == {HARD_QUESTION} and hard["label"] == parts["grouped-test"]["label"]


# ---- metrics ----

def test_ece_equals_a_hand_computed_value():
    confidence = [0.95, 0.95, 0.62, 0.62, 0.62, 0.10]
    correct = [1, 0, 1, 1, 0, 0]
    # bins of width 1/15: (14/15, 1] holds 0.95 x2 (acc 1/2), (9/15, 10/15] holds 0.62 x3 (acc 2/3),
    # (1/15, 2/15] holds 0.10 (acc 0)
    expected = 2 / 6 * abs(0.5 - 0.95) + 3 / 6 * abs(2 / 3 - 0.62) + 1 / 6 * abs(0.0 - 0.10)
    assert expected == pytest.approx(0.19)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    assert [b["count"] for b in reliability_bins(confidence, correct)] == [0, 1] + [0] * 7 + [3] + [0] * 4 + [2]
    # the same through label probabilities: the top label is the prediction, correct when it is the gold one
    probs = np.full((6, 37), 0.0)
    gold = []
    for i, (c, ok) in enumerate(zip(confidence, correct)):
        probs[i] = (1 - c) / 36
        probs[i, 3] = c
        gold.append(KEGG_LABELS[3] if ok else KEGG_LABELS[4])
    assert calibration_metrics(gold, probs)["ece"] == pytest.approx(expected)


def test_per_label_table_on_a_hand_example():
    gold = ["melanoma", "melanoma", "prostate cancer", "gastric cancer"]
    pred = ["melanoma", None, "prostate cancer", "melanoma"]
    table = {r["label"]: r for r in per_label_table(gold, pred)}
    assert len(table) == 37
    assert table["melanoma"] == {"label": "melanoma", "support": 2, "predicted": 2, "precision": 0.5,
                                 "recall": 0.5, "f1": 0.5}
    assert table["prostate cancer"] == {"label": "prostate cancer", "support": 1, "predicted": 1,
                                        "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert (table["gastric cancer"]["support"], table["gastric cancer"]["recall"]) == (1, 0.0)
    assert sum(r["support"] for r in table.values()) == 4
    assert np.mean([r["f1"] for r in table.values()]) == pytest.approx(classification_metrics(gold, pred)["macro_f1_37"])
    present = [r["f1"] for r in table.values() if r["support"] or r["predicted"]]
    assert np.mean(present) == pytest.approx(classification_metrics(gold, pred)["macro_f1"])


def test_abstain_and_top_k_on_hand_probabilities():
    probs = np.full((4, 37), 0.0)
    rows = [(0, 0.9), (1, 0.6), (2, 0.4), (3, 0.8)]        # (argmax label id, top probability)
    for i, (j, p) in enumerate(rows):
        probs[i] = (1 - p) / 36
        probs[i, j] = p
    probs[2, 5] = 0.3                                         # second choice of row 2
    gold = [KEGG_LABELS[0], KEGG_LABELS[1], KEGG_LABELS[5], KEGG_LABELS[9]]
    a = abstain_metrics(gold, probs, threshold=0.5)
    # answered: rows 0, 1, 3 (row 2 abstains); correct among them: rows 0 and 1
    assert (a["answered"], a["coverage"], a["correct"]) == (3, 0.75, 2)
    assert a["accuracy_on_answered"] == pytest.approx(2 / 3)
    assert abstain_metrics(gold, probs, threshold=0.0)["coverage"] == 1.0
    assert abstain_metrics(gold, probs, threshold=0.95)["accuracy_on_answered"] is None
    assert top_k_accuracy(gold, probs, 1) == 0.5 and top_k_accuracy(gold, probs, 2) == 0.75


# ---- baselines ----

def test_tfidf_baseline_on_the_official_test_split():
    train, test = load_kegg("train"), load_kegg("test")
    predicted, probs = tfidf_logreg_baseline(list(train["question"]), list(train["label"]), list(test["question"]))
    m = classification_metrics(list(test["label"]), predicted)
    print(f"TF-IDF + logistic regression on official test: {m['correct']}/{m['n']} = {m['accuracy']:.4f}")
    assert m["accuracy"] >= 0.9  # the question text alone gives the label away (known figure: 140/146)
    assert probs.shape == (146, 37) and np.allclose(probs.sum(1), 1.0)
    # on the hard view every question is the same sentence: the text classifier has nothing to go on
    hard_train, hard_test = load_kegg("train", view="kegg_hard"), load_kegg("test", view="kegg_hard")
    hard_predicted, _ = tfidf_logreg_baseline(list(hard_train["question"]), list(hard_train["label"]),
                                              list(hard_test["question"]))
    assert len(set(hard_predicted)) == 1


def test_kmer_baseline_reads_the_label_off_the_variant_window():
    from dnallm.baselines import kmer_logreg_baseline

    train, test = load_kegg("train"), load_kegg("test")
    predicted, probs = kmer_logreg_baseline(list(train["variant_window"]), list(train["label"]),
                                            list(test["variant_window"]))
    m = classification_metrics(list(test["label"]), predicted)
    assert m["accuracy"] >= 0.85  # known figure: 89.0 % (6-mer TF-IDF, C = 20)
    # DNA only: windows from another record give that record's answer, not this one's
    shuffled = [test["variant_window"][j] for j in derangement(len(test))]
    control, _ = kmer_logreg_baseline(list(train["variant_window"]), list(train["label"]), shuffled)
    assert classification_metrics(list(test["label"]), control)["accuracy"] < 0.3


def test_baselines_fit_once_per_training_set(monkeypatch):
    """test and hard-test share the training windows: the second evaluation reuses the fitted 6-mer classifier,
    and gives the same answer as a fresh fit; other training data is fitted anew."""
    from sklearn.pipeline import Pipeline

    from dnallm import baselines

    train, test = load_kegg("train").select(range(200)), load_kegg("test").select(range(20))
    fits = []
    real_fit = Pipeline.fit
    monkeypatch.setattr(Pipeline, "fit", lambda self, *a, **k: (fits.append(1), real_fit(self, *a, **k))[1])
    baselines._FITTED.clear()
    args = (list(train["variant_window"]), list(train["label"]), list(test["variant_window"]))
    first = baselines.kmer_logreg_baseline(*args)
    second = baselines.kmer_logreg_baseline(*args)
    assert len(fits) == 1 and first[0] == second[0] and np.array_equal(first[1], second[1])
    baselines._FITTED.clear()
    assert np.allclose(baselines.kmer_logreg_baseline(*args)[1], first[1]) and len(fits) == 2
    baselines.kmer_logreg_baseline(args[0][:150], args[1][:150], args[2])  # another training set: a new fit
    assert len(fits) == 3


def test_majority_baseline_equals_the_majority_class_share():
    train, test = load_kegg("train"), load_kegg("test")
    counts = Counter(train["label"])
    top = max(counts.values())
    majority = [label for label in KEGG_LABELS if counts[label] == top][0]
    share = list(test["label"]).count(majority) / len(test)
    predicted, probs = majority_baseline(list(train["label"]), list(test["question"]))
    assert set(predicted) == {majority}
    assert classification_metrics(list(test["label"]), predicted)["accuracy"] == pytest.approx(share)
    assert probs[0, LABEL_TO_ID[majority]] == pytest.approx(top / len(train))


# ---- controls ----

@pytest.mark.parametrize("n", [2, 3, 7, 146])
def test_derangement_has_no_fixed_point_and_is_fixed(n):
    perm = derangement(n)
    assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    assert perm == derangement(n)


def test_shuffled_dna_gives_no_row_its_own_windows():
    """Two test rows hold the same windows: a plain derangement of the rows gave one of them its own DNA."""
    test = load_kegg("test")
    windows = list(zip(test["ref_window"], test["variant_window"]))
    _, shuffled = control_inputs(test, "shuffled-dna")
    assert sorted(shuffled) == sorted(windows)
    assert all(mine != given for mine, given in zip(windows, shuffled))
    with pytest.raises(ValueError, match="cannot give row"):
        derange_by_content(["a", "a", "a", "b"])


def test_controls_change_the_inputs():
    records = load_kegg("test").select(range(8))
    questions, windows = control_inputs(records)
    text_q, text_w = control_inputs(records, "text-only")
    assert text_q == questions and text_w == [()] * 8
    dna_q, dna_w = control_inputs(records, "dna-only")
    assert dna_q == [HARD_QUESTION] * 8 and dna_w == windows
    shuf_q, shuf_w = control_inputs(records, "shuffled-dna")
    perm = derange_by_content(windows)
    assert shuf_q == questions and shuf_w == [windows[j] for j in perm] and shuf_w != windows
    _, same_w = control_inputs(records, "ref-as-variant")
    assert all(r == v == w[0] for (r, v), w in zip(same_w, windows))
    with pytest.raises(ValueError, match="unknown control"):
        control_inputs(records, "nothing")


def test_text_only_prompts_carry_no_dna(quickstart_dir):
    from dnallm.inference import load_model

    model = load_model(str((quickstart_dir[0] / "model").resolve()))
    proc = model.processor
    question = load_kegg("test")[0]["question"]
    assert proc.prompt(question).count(proc.dna_pad_token) == 2
    with proc.without_dna():
        prompt = proc.prompt(question)
        batch = proc([prompt], [[]])
    assert proc.dna_pad_token not in prompt and "Reference sequence" not in prompt and question in prompt
    assert set(batch) == {"input_ids", "attention_mask"} and proc.dna_pad_id not in batch["input_ids"][0].tolist()
    assert proc.prompt(question).count(proc.dna_pad_token) == 2  # the context manager restores DNA prompts
    # the same harness answers both; without DNA the label probabilities change
    records = load_kegg("test").select(range(2))
    main = run_inputs(model, *control_inputs(records), max_new_tokens=2)
    text_only = run_inputs(model, *control_inputs(records, "text-only"), max_new_tokens=2)
    assert np.allclose(text_only["probabilities"].sum(1), 1.0)
    assert not np.allclose(main["probabilities"], text_only["probabilities"])
    assert len(text_only["texts"]) == 2


def test_cached_encoder_states_give_the_same_answers_and_encode_each_window_once(tiny_dir):
    """Inside processor.cached_encoder_states(cache) batches carry the cached encoder states: generation and
    label scoring give what they give from DNA token ids, and a window seen again is not encoded again."""
    from dnallm.encoders.cache import EmbeddingCache
    from test_model import build

    model = build(tiny_dir).eval()
    records = load_kegg("test").select(range(3))
    questions, windows = control_inputs(records)
    direct = run_inputs(model, questions, windows, max_new_tokens=6, batch_size=2, score_batch_size=2)
    encoded = []
    encode = model.dna_encoder.encode
    model.dna_encoder.encode = lambda chunk: (encoded.extend(chunk), encode(chunk))[1]
    cache = EmbeddingCache(model.dna_encoder)
    with model.processor.cached_encoder_states(cache):
        batch = model.processor([model.processor.prompt(questions[0])], [list(windows[0])])
        assert "dna_input_ids" not in batch and batch["dna_hidden_states"].shape[0] == 2
        cached = run_inputs(model, questions, windows, max_new_tokens=6, batch_size=2, score_batch_size=2)
        shuffled = run_inputs(model, *control_inputs(records, "shuffled-dna"), generate=False, score_batch_size=2)
    assert "dna_input_ids" in model.processor([model.processor.prompt(questions[0])], [list(windows[0])])
    assert sorted(encoded) == sorted({w for pair in windows for w in pair})  # 6 windows, each encoded once
    assert cached["texts"] == direct["texts"]
    np.testing.assert_allclose(cached["probabilities"], direct["probabilities"], rtol=1e-4, atol=1e-6)
    assert shuffled["scored"] is not None


# ---- end to end ----

@pytest.mark.slow  # 79 s on 2 cores
def test_cli_eval_writes_metrics_predictions_report_and_pngs(quickstart_dir, tmp_path):
    model = quickstart_dir[0] / "model"
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(model), "--split", "grouped-test", "--out", str(tmp_path),
                              "--limit", "6", "--max-new-tokens", "4", "--batch-size", "6", "--controls"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"split", "n", "accuracy", "macro_f1", "accuracy_ci_low", "accuracy_ci_high"} <= set(metrics)
    assert (metrics["split"], metrics["n"], metrics["mode"]) == ("grouped-test", 6, "generate")
    assert metrics["accuracy"] == metrics["modes"]["generate"]["accuracy"]
    assert set(metrics["controls"]) == set(CONTROLS)
    for control in CONTROLS:
        assert {"generate", "score"} <= set(metrics["controls"][control])
    assert metrics["controls"]["shuffled-dna"]["inputs_unchanged"] < 6
    assert set(metrics["baselines"]) == {"majority", "tfidf-logreg", "kmer-logreg", "encoder alone"}
    assert metrics["baselines_trained_on"].startswith("grouped-train")
    assert metrics["rows_with_variant_in_train"] == 0                        # the grouped split does not leak
    assert len(metrics["per_label"]) == 37 and metrics["calibration"]["n_bins"] == 15
    rows = [json.loads(line) for line in open(tmp_path / "predictions.jsonl")]
    assert len(rows) == 6 and sum(r["correct"] for r in rows) == metrics["correct"]
    for r in rows:
        assert len(r["probabilities"]) == 37 and sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert [lab for lab, _ in r["top_k"]] == sorted(r["probabilities"], key=r["probabilities"].get,
                                                        reverse=True)[:3]
        assert r["scored"] == r["top_k"][0][0] and set(r["controls"]) == set(CONTROLS)
    report = (tmp_path / "report.md").read_text()
    assert "baseline: tfidf-logreg" in report and "control: shuffled-dna" in report
    for png in ("confusion_matrix.png", "reliability.png"):
        assert f"({png})" in report and (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # scoring only: no generation, the headline numbers are those of the label probabilities
    res = runner.invoke(app, ["eval", "--model", str(model), "--split", "hard-test", "--out", str(tmp_path / "s"),
                              "--limit", "6", "--no-generate"])
    assert res.exit_code == 0, res.output
    scored = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert scored["mode"] == "score" and set(scored["modes"]) == {"score"} and scored["controls"] == {}
    assert scored["accuracy"] == scored["modes"]["score"]["accuracy"]
    assert "generated" not in json.loads(open(tmp_path / "s" / "predictions.jsonl").readline())
    res = runner.invoke(app, ["eval", "--model", str(model), "--split", "grouped-nothing"])
    assert res.exit_code == 2 and "unknown split" in res.output


def test_baselines_and_probe_read_windows_of_the_models_size(tiny_dir, tmp_path, monkeypatch):
    """A model reading 512 bp windows: the baselines train on, and the probe selects on, 512 bp windows too."""
    import dnallm.baselines
    import dnallm.probe
    from dnallm.configuration import DNALLMConfig
    from dnallm.evaluation import evaluate_split
    from dnallm.modeling import DNALLMForConditionalGeneration

    cfg = DNALLMConfig(dna_config={"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder"),
                                   "window_size": 512},
                       text_model_name_or_path=str(tiny_dir / "text-model"), projector_stride=32, lora_r=4)
    model = DNALLMForConditionalGeneration.build(cfg).eval()
    seen = {}
    real_baselines, real_probe = dnallm.baselines.run_baselines, dnallm.probe.run_probe

    def baselines(train, rows):
        seen["baselines"] = {len(w) for w in train["variant_window"]}
        return real_baselines(train.select(range(0, len(train), 20)), rows)

    def probe(encoder, train, val, rows, **kwargs):
        seen["probe"] = [{len(w) for w in ds["ref_window"]} for ds in (train, val, rows)]
        return real_probe(encoder, train.select(range(0, len(train), 20)), val.select(range(0, len(val), 8)), rows,
                          **kwargs)

    monkeypatch.setattr(dnallm.baselines, "run_baselines", baselines)
    monkeypatch.setattr(dnallm.probe, "run_probe", probe)
    rows = load_kegg("test", window=512).select(range(4))
    metrics = evaluate_split(model, rows, "test", tmp_path / "eval", generate=False, report=False)
    assert seen == {"baselines": {512}, "probe": [{512}, {512}, {512}]}
    assert metrics["baselines_trained_on"] == "train (n=1159)"
    # on val, where the probe is selected, it has no held-out row
    seen.clear()
    val_metrics = evaluate_split(model, load_kegg("val", window=512).select(range(4)), "val", tmp_path / "eval-val",
                                 generate=False, report=False)
    assert "probe" not in seen and "encoder alone" not in val_metrics["baselines"]
    assert "selected on val" in val_metrics["probe_left_out"]
    with pytest.raises(ValueError, match=r"the baselines' training records \(given records\): the records hold "
                                         r"windows of \[1024\] bp, but the model reads 512 bp"):
        evaluate_split(model, rows, "test", tmp_path / "eval2", generate=False, report=False, probe=False,
                       train_records=load_kegg("train").select(range(8)))
