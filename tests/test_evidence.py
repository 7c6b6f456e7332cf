"""Evidence for an answer: the ref-vs-alt contrast and the encoder's zero-shot score (dnallm.evidence), the ISM map
(dnallm.ism), through the API and the CLI (the app: tests/test_app.py)."""

import io
import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer, EsmConfig, EsmForMaskedLM, EsmTokenizer, MixtralForCausalLM
from typer.testing import CliRunner

from dnallm.cli import app
from dnallm.data import load_kegg
from dnallm.encoders import build_encoder
from dnallm.encoders.base import NoLMHeadError
from helpers import nt_vocab
from dnallm.evidence import encoder_dll, no_variant_windows, ref_vs_alt
from dnallm.inference import explain_variant, load_model
from dnallm.ism import TSV_COLUMNS, check_flank, ism_map, ism_png, ism_tsv, mutations, variant_kind
from dnallm.labels import KEGG_LABELS
from dnallm.scoring import label_logprobs, label_probabilities


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


# ---- in-silico mutagenesis (dnallm.ism) ------------------------------------------------------------------------

def _indel_row(ds):
    return next(r for r in ds if len(r["ref_allele"]) != len(r["alt_allele"]))


def test_ism_positions_bases_and_bad_settings():
    window = "ACGT" * 256
    muts = mutations(window, 2)
    assert [(o, b) for o, b, _ in muts[:3]] == [(-2, "A"), (-2, "C"), (-2, "T")]  # index 510 holds a G
    assert len(muts) == 5 * 3
    for offset, base, mutated in muts:  # exactly one base changed, at centre + offset, to `base`
        changed = [i for i in range(1024) if mutated[i] != window[i]]
        assert changed == [512 + offset] and mutated[512 + offset] == base
    with_n = window[:512] + "N" + window[513:]
    assert [b for o, b, _ in mutations(with_n, 0)] == list("ACGT")  # an N: all four bases are mutations
    assert check_flank(511, 1024) == 511 and check_flank(0, 1024) == 0
    with pytest.raises(ValueError, match="flank 512 reaches beyond the 1024 bp window.*at most 511"):
        check_flank(512, 1024)
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="integer >= 0"):
            check_flank(bad, 1024)
    snv = window[:512] + "T" + window[513:]
    assert variant_kind(window, snv) == "snv" and variant_kind(window, window) == "none"
    assert variant_kind(window, window[:512] + window[513:] + "A") == "indel_or_mnv"  # 1 bp deletion
    with pytest.raises(ValueError, match="differ at index 100, before the centre 512"):
        variant_kind(window, window[:100] + "T" + window[101:])


def _label_logp(model, question, windows, j):
    return torch.log_softmax(label_logprobs(model, [question] * len(windows), windows), -1)[:, j]


def test_ism_map_is_the_scoring_of_each_mutated_variant_window(quickstart_dir):
    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    row = load_kegg("test", view="kegg_hard")[2]
    question, ref, var = row["question"], row["ref_window"], row["variant_window"]
    result = explain_variant(question, ref, var, model=model, mode="score", attribution=True, attribution_flank=3)
    m = result.attribution
    assert m["label"] == result.label and m["variant_kind"] == "snv" and m["n_windows"] == 7 * 3
    assert m["offsets"] == list(range(-3, 4)) and m["variant_bases"] == var[509:516]
    assert m["reference_bases"] == ref[509:516] and m["reference_bases"][3] != m["variant_bases"][3]
    j = KEGG_LABELS.index(m["label"])
    unmutated = float(_label_logp(model, question, [(ref, var)], j)[0])
    assert m["log_p"] == pytest.approx(unmutated, abs=1e-5)
    # the base already at each position is not mutated; every other cell is filled
    for k, base in enumerate(m["variant_bases"]):
        assert [d is None for d in m["delta"][k]] == [b == base for b in "ACGT"]
    # independently: the ordinary label scoring of a few mutated windows, as changes of log p(label)
    cells = [(0, "ACGT".index(m["reference_bases"][3])), (-3, 0 if var[509] != "A" else 1),
             (2, 3 if var[514] != "T" else 2)]
    mutated = [var[:512 + o] + "ACGT"[b] + var[513 + o:] for o, b in cells]
    expected = _label_logp(model, question, [(ref, w) for w in mutated], j) - unmutated
    assert [m["delta"][o + 3][b] for o, b in cells] == pytest.approx(expected.tolist(), abs=1e-5)
    # offset 0 mutated to the reference base is the reference window: the contrast's log-ratio
    c = explain_variant(question, ref, var, model=model, mode="score", contrast=True).contrast
    assert m["delta"][3]["ACGT".index(ref[512])] == pytest.approx(
        math.log(c["p_reference"]) - math.log(c["p_variant"]), abs=1e-5)
    # and a label given explicitly is the one tracked
    other = KEGG_LABELS[(j + 1) % len(KEGG_LABELS)]
    assert ism_map(model, question, (ref, var), label=other, flank=0)["label"] == other


def test_ism_of_an_indel_is_relative_to_the_window_centre(quickstart_dir):
    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    row = _indel_row(load_kegg("test", view="kegg_hard"))
    question, ref, var = row["question"], row["ref_window"], row["variant_window"]
    m = ism_map(model, question, (ref, var), flank=2)
    # offset 0 is index 512 of the variant window, where both windows' alleles start
    assert m["variant_kind"] == "indel_or_mnv" and m["centre"] == 512
    assert m["variant_bases"] == var[510:515] and m["reference_bases"] == ref[510:515]
    j = KEGG_LABELS.index(m["label"])
    base = "ACGT"[0] if var[513] != "A" else "C"
    mutated = var[:513] + base + var[514:]
    logps = _label_logp(model, question, [(ref, var), (ref, mutated)], j)
    assert m["delta"][3]["ACGT".index(base)] == pytest.approx(float(logps[1] - logps[0]), abs=1e-5)


def test_ism_map_of_the_tiny_default_is_not_flat_on_hard_test(quickstart_dir):
    """The map carries signal: mutations move log p(label) by far more than the scoring's float noise (~1e-6),
    and differently at different positions and bases."""
    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    rows = load_kegg("test", view="kegg_hard").select(range(3))
    for row in rows:
        m = ism_map(model, row["question"], (row["ref_window"], row["variant_window"]), flank=4)
        values = torch.tensor([d for r in m["delta"] for d in r if d is not None])
        assert len(values) == 27 and float(values.abs().max()) > 1e-4, m["delta"]
        assert float(values.std()) > 1e-5 and len(set(values.tolist())) > 20


def test_ism_tsv_and_png(quickstart_dir, tmp_path):
    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    row = load_kegg("test", view="kegg_hard")[0]
    m = ism_map(model, row["question"], (row["ref_window"], row["variant_window"]), flank=2)
    lines = ism_tsv(m).splitlines()
    assert lines[0].split("\t") == list(TSV_COLUMNS) and len(lines) == 1 + 15
    first = dict(zip(TSV_COLUMNS, lines[1].split("\t")))
    b = "ACGT".index(first["mutated_base"])
    assert (first["offset"], first["index"], first["variant_base"]) == ("-2", "510", row["variant_window"][510])
    assert float(first["delta_log_p"]) == m["delta"][0][b]
    assert float(first["log_p"]) == pytest.approx(m["log_p"] + m["delta"][0][b], abs=1e-12)
    png = ism_png(m)
    assert png == ism_png(m)  # the same map, the same bytes
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > image.height > 100
    # the map's colours are in the image: a flat map (all zeros) draws a different picture
    flat = {**m, "delta": [[None if d is None else 0.0 for d in r] for r in m["delta"]]}
    assert ism_png(flat) != png


def test_cli_attribute_matches_the_api(quickstart_dir, tmp_path):
    out, _ = quickstart_dir
    row = load_kegg("test", view="kegg_hard")[1]
    res = CliRunner().invoke(app, ["attribute", "--model", str(out / "model"), "--question", row["question"],
                                   "--reference", row["ref_window"], "--variant", row["variant_window"],
                                   "--flank", "3", "--batch-size", "5", "--out", str(tmp_path / "ism")])
    assert res.exit_code == 0, res.output
    api = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=out / "model",
                          mode="score", attribution=True, attribution_flank=3, attribution_batch_size=5)
    cli = json.loads((tmp_path / "ism" / "explanation.json").read_text())
    assert cli["attribution"] == api.attribution  # every float identical
    assert cli["label"] == api.label and cli["label_probabilities"] == api.label_probabilities
    assert (tmp_path / "ism" / "ism.tsv").read_text() == ism_tsv(api.attribution)
    assert (tmp_path / "ism" / "ism.png").read_bytes() == ism_png(api.attribution)
    assert "21 mutated windows over ±3 bp" in " ".join(res.output.split())


@pytest.mark.parametrize("args, message", [
    (["--flank", "600"], "flank 600 reaches beyond the 1024 bp window"),
    (["--flank", "-1"], "integer >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
])
def test_cli_attribute_bad_settings_are_clear_errors(quickstart_dir, tmp_path, args, message):
    out, _ = quickstart_dir
    row = load_kegg("test")[0]
    res = CliRunner().invoke(app, ["attribute", "--model", str(out / "model"), "--reference", row["ref_window"],
                                   "--variant", row["variant_window"], "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    assert not (tmp_path / "x").exists()


def test_windows_not_cut_by_the_window_rule_are_refused_by_attribution(quickstart_dir):
    out, _ = quickstart_dir
    row = load_kegg("test")[0]
    ref = row["ref_window"]
    var = ref[:40] + ("A" if ref[40] != "A" else "C") + ref[41:]  # the change 472 bp left of the centre
    with pytest.raises(ValueError, match="differ at index 40, before the centre 512"):
        explain_variant(row["question"], ref, var, model=out / "model", mode="score", attribution=True)
    # without attribution the same windows are answered as before (the check belongs to the map)
    assert explain_variant(row["question"], ref, var, model=out / "model", mode="score").label in KEGG_LABELS


# ---- the encoder's zero-shot score (dnallm.evidence.encoder_dll) -------------------------------------------------

def _hand_log_likelihood(lm, tokenizer, window: str) -> float:
    """Sum over the window's bases after the first of log p(base | bases before it), one position at a time."""
    ids = tokenizer(window, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(lm(ids).logits[0].double(), -1)
    return sum(float(logp[t - 1, ids[0, t]]) for t in range(1, ids.shape[1]))


def test_encoder_dll_is_the_causal_encoders_log_likelihood_difference(quickstart_dir):
    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    lm = MixtralForCausalLM.from_pretrained(out / "encoder").eval()  # the model's encoder, as a plain causal LM
    tokenizer = AutoTokenizer.from_pretrained(out / "encoder")
    ds = load_kegg("test")
    for row in (ds[0], _indel_row(ds)):
        ref, var = row["ref_window"], row["variant_window"]
        hand = _hand_log_likelihood(lm, tokenizer, var) - _hand_log_likelihood(lm, tokenizer, ref)
        assert abs(hand) > 1e-3  # the variant does change the encoder's likelihood: the comparison means something
        result = explain_variant(row["question"], ref, var, model=model, mode="score", encoder_dll=True)
        assert result.encoder_dll == pytest.approx(hand, abs=1e-4)
        assert result.to_dict()["encoder_dll"] == result.encoder_dll
    assert explain_variant(row["question"], ref, ref, model=model, mode="score", encoder_dll=True).encoder_dll == 0.0
    assert "encoder_dll" not in explain_variant(row["question"], ref, var, model=model, mode="score").to_dict()
    # batched pairs give each pair's own score
    pairs = [(ds[0]["ref_window"], ds[0]["variant_window"]), (ref, var), (ref, ref)]
    assert encoder_dll(model.dna_encoder, pairs, batch_size=2) == pytest.approx(
        [explain_variant(row["question"], *p, model=model, mode="score", encoder_dll=True).encoder_dll for p in pairs],
        abs=1e-6)


NT_VOCAB = nt_vocab()


@pytest.fixture(scope="module")
def tiny_nt(tmp_path_factory):
    """A tiny NT-layout masked LM (plain ESM, NT's 6-mer vocabulary, no EOS) on disk, and the model itself."""
    path = tmp_path_factory.mktemp("nt")
    torch.manual_seed(0)
    config = EsmConfig(vocab_size=len(NT_VOCAB), pad_token_id=1, mask_token_id=2, max_position_embeddings=1002,
                       position_embedding_type="absolute", emb_layer_norm_before=False, token_dropout=False,
                       tie_word_embeddings=False, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48)
    model = EsmForMaskedLM(config).eval()
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(NT_VOCAB))
    EsmTokenizer(str(path / "vocab.txt"), eos_token=None, model_max_length=2048).save_pretrained(path)
    return path, model


def test_nt_encoder_dll_is_the_masked_slot_log_odds(tiny_nt):
    path, model = tiny_nt
    encoder = build_encoder("nt", str(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    ref = load_kegg("test")[0]["ref_window"]
    snv = ref[:512] + ("A" if ref[512] != "A" else "G") + ref[513:]
    deletion = ref[:512] + ref[513:] + "A"
    scores = encoder_dll(encoder, [(ref, snv), (ref, deletion), (ref, ref)])
    for (r, v), score in zip([(ref, snv), (ref, deletion)], scores):
        r_ids = tokenizer(r, return_tensors="pt")["input_ids"]
        v_ids = tokenizer(v, return_tensors="pt")["input_ids"]
        slots = [t for t in range(r_ids.shape[1]) if r_ids[0, t] != v_ids[0, t]]
        masked = r_ids.clone()
        masked[0, slots] = tokenizer.mask_token_id
        with torch.no_grad():
            logp = torch.log_softmax(model(masked).logits[0].double(), -1)
        hand = sum(float(logp[t, v_ids[0, t]] - logp[t, r_ids[0, t]]) for t in slots)
        assert score == pytest.approx(hand, abs=1e-5) and abs(hand) > 1e-3
    # an SNV changes one 6-mer (the CLS is slot 0: index 512 is in 6-mer 85, slot 86); a deletion every slot after
    assert [t for t in range(175) if tokenizer(ref)["input_ids"][t] != tokenizer(snv)["input_ids"][t]] == [86]
    assert scores[2] == 0.0
    # an N breaks the 6-mer grid: 503 bases + N + 520 bases is 83 + 5 + 1 + 86 + 4 tokens
    with pytest.raises(ValueError, match="reference is 174 NT tokens, the variant 179"):
        encoder_dll(encoder, [(ref, ref[:503] + "N" + ref[504:])])


def test_an_encoder_without_lm_head_is_a_clear_error_for_encoder_dll(quickstart_dir, tmp_path):
    out, _ = quickstart_dir
    # the quickstart encoder saved as its base model only (no lm_head weights): it loads, for embeddings
    headless = tmp_path / "headless-encoder"
    MixtralForCausalLM.from_pretrained(out / "encoder").model.save_pretrained(headless)
    AutoTokenizer.from_pretrained(out / "encoder").save_pretrained(headless)
    encoder = build_encoder("genos", str(headless), layer=2)
    assert encoder.lm_head is None and encoder.encode(["ACGT" * 8])[0].shape[1] == 32
    with pytest.raises(NoLMHeadError, match=f"encoder '{headless}' .*without an LM head"):
        encoder_dll(encoder, [("ACGT" * 8, "ACGA" * 8)])
    # a checkpoint on that encoder: explain_variant and the CLI say so, and nothing else changes
    checkpoint = tmp_path / "model"
    shutil.copytree(out / "model", checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["dna_config"]["encoder_name_or_path"] = str(headless)
    for key in ("text_model_name_or_path", "text_tokenizer_name_or_path"):  # relative to the original folder
        config[key] = str((out / "model" / config[key]).resolve())
    (checkpoint / "config.json").write_text(json.dumps(config))
    row = load_kegg("test")[0]
    with pytest.raises(ValueError, match="without an LM head"):
        explain_variant(row["question"], row["ref_window"], row["variant_window"], model=checkpoint, mode="score",
                        encoder_dll=True)
    plain = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=checkpoint, mode="score")
    assert plain.label_probabilities == explain_variant(row["question"], row["ref_window"], row["variant_window"],
                                                        model=out / "model", mode="score").label_probabilities
    res = CliRunner().invoke(app, ["explain", "--model", str(checkpoint), "--mode", "score", "--encoder-dll",
                                   "--reference", row["ref_window"], "--variant", row["variant_window"]])
    assert res.exit_code == 2 and "without an LM head" in " ".join(res.output.split())
    # an encoder type whose scoring rule is not known (hf: causal or masked?) is refused by name
    with pytest.raises(NoLMHeadError, match="type 'hf'.*no zero-shot score for this encoder type"):
        encoder_dll(build_encoder("hf", str(out / "encoder")), [("ACGT" * 8, "ACGA" * 8)])


def test_cli_encoder_dll_matches_the_api(quickstart_dir):
    out, _ = quickstart_dir
    row = load_kegg("test")[3]
    res = CliRunner().invoke(app, ["explain", "--model", str(out / "model"), "--mode", "score", "--encoder-dll",
                                   "--question", row["question"], "--reference", row["ref_window"],
                                   "--variant", row["variant_window"]])
    assert res.exit_code == 0, res.output
    api = explain_variant(row["question"], row["ref_window"], row["variant_window"], model=out / "model",
                          mode="score", encoder_dll=True)
    assert json.loads(res.stdout)["encoder_dll"] == api.encoder_dll != 0.0
