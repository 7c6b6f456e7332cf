"""The encoder-alone probe and the shipped tiny stand-ins it measures."""

import json

import numpy as np
import pytest

from dnallm.data import load_kegg
from dnallm.encoders import build_encoder
from dnallm.probe import pooled_window_states, run_probe, window_features
from dnallm.quickstart import SHIPPED_STAND_INS, build_tiny_models, load_preset


@pytest.fixture(scope="module")
def shipped_encoder():
    return build_encoder("genos", str(SHIPPED_STAND_INS / "encoder"), layer=load_preset("tiny")["model"]["dna_config"]["layer"])


@pytest.fixture(scope="module")
def splits():
    # a cut of the official splits keeps the encoding to a few hundred windows on CI's 2 cores
    return load_kegg("train").select(range(0, 1159, 3)), load_kegg("val").select(range(0, 144, 2)), load_kegg("test")


def test_pooled_states_are_the_mean_over_dna_positions_and_cached(shipped_encoder, tmp_path, monkeypatch):
    windows = list(load_kegg("test").select(range(3))["ref_window"])
    pooled = pooled_window_states(shipped_encoder, windows, cache_dir=tmp_path)
    hidden, mask = shipped_encoder.encode(windows[:1])
    assert np.allclose(pooled[windows[0]], hidden[0][mask[0]].mean(0).numpy(), atol=1e-5)
    # a second call reads the cache file and never runs the encoder
    monkeypatch.setattr(shipped_encoder, "encode", lambda *a, **k: pytest.fail("encoder ran despite the cache"))
    again = pooled_window_states(shipped_encoder, windows, cache_dir=tmp_path)
    assert all(np.array_equal(again[w], pooled[w]) for w in windows)


def test_states_cached_for_training_feed_the_probe_without_a_second_encoder_pass(shipped_encoder, tmp_path,
                                                                                monkeypatch):
    from dnallm.encoders.cache import EmbeddingCache
    from dnallm.probe import store_pooled

    windows = list(load_kegg("test").select(range(4))["variant_window"])
    expected = pooled_window_states(shipped_encoder, windows)  # computed by the probe itself, no cache
    cache = EmbeddingCache(shipped_encoder)
    cache.add(windows[:3], batch_size=2)  # as train_sft fills it (other batches than the probe's)
    store_pooled(shipped_encoder, cache.pooled(), tmp_path)
    encoded = []
    real_encode = shipped_encoder.encode
    monkeypatch.setattr(shipped_encoder, "encode", lambda ws: encoded.append(list(ws)) or real_encode(ws))
    pooled = pooled_window_states(shipped_encoder, windows, cache_dir=tmp_path)
    assert encoded == [windows[3:]]  # only the window training never saw is encoded
    for w in windows:
        np.testing.assert_allclose(pooled[w], expected[w], rtol=0, atol=1e-6)


def test_an_encoder_of_the_same_layout_with_other_weights_never_reads_the_cached_states(shipped_encoder, tmp_path):
    """Two pretrainings of one layout share the fingerprint; the cache must tell them apart by their weights."""
    import torch

    windows = list(load_kegg("test").select(range(3))["ref_window"])
    pooled = pooled_window_states(shipped_encoder, windows, cache_dir=tmp_path)
    other = build_encoder("genos", str(SHIPPED_STAND_INS / "encoder"), layer=shipped_encoder.layer)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert other.fingerprint == shipped_encoder.fingerprint
    fresh = pooled_window_states(other, windows)  # no cache
    cached = pooled_window_states(other, windows, cache_dir=tmp_path)
    for w in windows:
        assert not np.allclose(fresh[w], pooled[w], atol=1e-3)  # the two encoders do differ
        np.testing.assert_allclose(cached[w], fresh[w], rtol=0, atol=1e-6)
    assert len(list(tmp_path.glob("pooled-*.npz"))) == 2


def test_feature_sets():
    ds = load_kegg("test").select(range(2))
    pooled = {w: np.full(2, float(i)) for i, w in enumerate(list(ds["ref_window"]) + list(ds["variant_window"]))}
    diff = window_features(pooled, ds, "diff")
    assert diff.shape == (2, 2) and np.array_equal(diff, window_features(pooled, ds, "variant") -
                                                   window_features(pooled, ds, "ref"))
    assert window_features(pooled, ds, "ref+variant+diff").shape == (2, 6)
    with pytest.raises(ValueError, match="unknown feature set"):
        window_features(pooled, ds, "sum")


def test_probe_finds_the_locus_signal_in_the_shipped_encoder(shipped_encoder, splits, tmp_path):
    train, val, test = splits
    result = run_probe(shipped_encoder, train, val, test, cache_dir=tmp_path, c_grid=(1.0, 10.0),
                       feature_sets=("ref", "ref+variant+diff"))
    accuracy = np.mean([p == g for p, g in zip(result["predicted"], test["label"])])
    assert accuracy > 0.6  # a third of the training split; the full probe reaches 86-87 % (docs/benchmarks.md)
    assert len(result["selection"]) == 4 and result["val_accuracy"] == max(s["val_accuracy"] for s in result["selection"])
    assert result["probabilities"].shape == (146, 37) and np.allclose(result["probabilities"].sum(1), 1)
    # control: the same encoder states with the training labels shuffled carry no usable signal
    rng = np.random.default_rng(0)
    shuffled = train.add_column("shuffled", list(rng.permutation(train["label"]))).remove_columns("label") \
        .rename_column("shuffled", "label")
    control = run_probe(shipped_encoder, shuffled, val, test, cache_dir=tmp_path, c_grid=(1.0,), feature_sets=("ref",))
    assert np.mean([p == g for p, g in zip(control["predicted"], test["label"])]) < 0.3


def test_a_second_split_against_the_same_train_and_val_reuses_the_fitted_probe(shipped_encoder, splits, tmp_path,
                                                                              monkeypatch):
    import dnallm.probe as probe

    train, val, test = (ds.select(range(40)) for ds in splits)
    hard = load_kegg("test", view="kegg_hard").select(range(40))
    options = dict(c_grid=(1.0, 10.0), feature_sets=("ref", "variant"))
    run_probe(shipped_encoder, train, val, test, cache_dir=tmp_path, **options)  # fits and keeps the probe
    fresh = run_probe(shipped_encoder, train, val, hard, **options)  # no cache: fitted anew
    monkeypatch.setattr(probe, "_fit", lambda *a, **k: pytest.fail("refitted despite the kept probe"))
    reused = run_probe(shipped_encoder, train, val, hard, cache_dir=tmp_path, **options)
    assert (reused["feature_set"], reused["C"], reused["selection"]) == \
        (fresh["feature_set"], fresh["C"], fresh["selection"])
    np.testing.assert_allclose(reused["probabilities"], fresh["probabilities"], rtol=0, atol=1e-6)
    # other training labels are another probe: fitted, not loaded
    relabelled = train.map(lambda r, i: {"label": test["label"][i]}, with_indices=True)
    with pytest.raises(pytest.fail.Exception, match="refitted"):
        run_probe(shipped_encoder, relabelled, val, hard, cache_dir=tmp_path, **options)


@pytest.mark.slow  # 71 s on 2 cores
def test_shipped_stand_ins_match_the_preset_and_their_first_pretraining_steps_reproduce(tmp_path):
    """The shipped weights come from build_tiny_models with the tiny preset (assets/tiny/README.md); replaying
    its first steps here gives the recorded losses."""
    preset = load_preset("tiny")
    log = json.loads((SHIPPED_STAND_INS / "pretrain_log.json").read_text())
    assert log["dna_pretrain"] == preset["dna_pretrain"] and log["text_pretrain"] == preset["text_pretrain"]
    config = json.loads((SHIPPED_STAND_INS / "encoder" / "config.json").read_text())
    assert {k: config[k] for k in preset["dna_pretrain"]["layout"]} == preset["dna_pretrain"]["layout"]
    assert len(log["dna_losses"]) == preset["dna_pretrain"]["steps"]
    replay = build_tiny_models(tmp_path, load_kegg("train"), preset, stop_after=3)
    # recorded on a GPU (fp32): the CPU replay agrees to rounding
    assert replay["dna_losses"] == pytest.approx(log["dna_losses"][:3], rel=2e-3)
    assert replay["text_losses"] == pytest.approx(log["text_losses"][:3], rel=2e-3)
    # the loss fell over the full run: these are trained models, not initialisations
    assert np.mean(log["dna_losses"][-20:]) < log["dna_losses"][0] - 3.0
    assert np.mean(log["text_losses"][-20:]) < log["text_losses"][0] - 5.0


def test_probe_and_baseline_fits_run_blas_on_one_thread(monkeypatch):
    """The small logistic-regression fits run BLAS single-threaded (12x faster on the 2-core CPU; the speed itself
    is in docs/benchmarks.md): fails if a fit runs under the default thread pool."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    from dnallm import baselines
    from dnallm.probe import _fit

    blas_threads = []
    real_fit = LogisticRegression.fit

    def recording_fit(self, *a, **k):
        blas_threads.append({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
        return real_fit(self, *a, **k)

    monkeypatch.setattr(LogisticRegression, "fit", recording_fit)
    rng = np.random.default_rng(0)
    _fit(rng.normal(size=(40, 8)), [0, 1, 2, 3] * 10, 1.0)
    train = load_kegg("train").select(range(60))
    baselines.run_baselines(train, load_kegg("test").select(range(5)))
    assert len(blas_threads) == 3 and all(t == {1} for t in blas_threads), blas_threads


@pytest.mark.parametrize("split", ["val", "hard-val", "grouped-val"])
def test_the_probe_is_not_scored_on_the_split_it_is_selected_on(shipped_encoder, split, tmp_path):
    """On val the probe's "score" was the best candidate's val accuracy: selected and scored on the same rows."""
    from typer.testing import CliRunner

    from dnallm.cli import app
    from dnallm.evaluation import probe_metrics

    rows = load_kegg("val").select(range(4))
    with pytest.raises(ValueError, match="would not be held out"):
        probe_metrics(shipped_encoder, rows, rows, split, cache_dir=tmp_path)
    result = CliRunner().invoke(app, ["probe", "--encoder", str(SHIPPED_STAND_INS / "encoder"), "--split", split])
    words = " ".join(result.output.replace("│", " ").split())  # rich wraps the message in a box
    assert result.exit_code == 2 and "its score there is not held out" in words, result.output


def test_pretraining_settings_that_give_no_batch_are_an_error(tmp_path):
    """epochs x rows < 1 left no batch, and the warmup schedule divided by zero (ZeroDivisionError)."""
    from dnallm.pretrain import pretrain_text_model
    from dnallm.tokenization import BUNDLED_QWEN3_TOKENIZER, load_text_tokenizer

    tokenizer = load_text_tokenizer(str(BUNDLED_QWEN3_TOKENIZER))
    with pytest.raises(ValueError, match="text pretrain: the settings give no training batch"):
        pretrain_text_model(tokenizer, ["What disease does this contribute to?"] * 8, tmp_path, epochs=0.1,
                            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=8)
