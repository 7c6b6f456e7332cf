import pytest

from dnallm.data import (HARD_QUESTION, KeggRecordError, WINDOW_SIZE, _raw_split, centred_windows, data_dir,
                         hard_view, load_kegg, load_views, split_kegg_sequences, validate_record)
from dnallm.labels import KEGG_LABELS


@pytest.mark.parametrize("split,n", [("train", 1159), ("val", 144), ("test", 146)])
def test_splits_load_validated_with_exact_windows(split, n):
    ds = load_kegg(split)
    assert len(ds) == n
    assert set(ds["label"]) <= set(KEGG_LABELS)
    assert all(len(w) == WINDOW_SIZE for w in list(ds["ref_window"]) + list(ds["variant_window"]))


def test_all_37_labels_occur():
    labels = set()
    for split in ("train", "val", "test"):
        labels |= set(load_kegg(split)["label"])
    assert labels == set(KEGG_LABELS)


def test_snv_window_is_centred():
    row = load_kegg("test")[0]  # a G>T substitution
    ref, var = row["ref_window"], row["variant_window"]
    assert (len(row["ref_allele"]), len(row["alt_allele"])) == (1, 1)
    diff = [i for i in range(WINDOW_SIZE) if ref[i] != var[i]]
    assert diff == [512]  # 512 bp upstream, the changed base, 511 bp downstream
    assert ref[512] == row["ref_allele"] and var[512] == row["alt_allele"]
    assert ref == row["reference_sequence"][2000 - 512:2000 + 512]


def test_indel_rule_shares_upstream_flank_and_fills_window():
    up, down = "A" * 600 + "C" * 1400, "G" * 2000
    ref, var = centred_windows(up, "T", "TTTTT", down)  # 4 bp insertion
    assert len(ref) == len(var) == WINDOW_SIZE
    assert ref[:512] == var[:512] == up[-512:]
    assert ref[512:513] == "T" and var[512:517] == "TTTTT"
    assert ref[513:] == down[:511] and var[517:] == down[:507]
    ref, var = centred_windows(up, "TTT", "", down)  # deletion with empty ALT, as in the KEGG files
    assert var[512:] == down[:512] and ref[512:515] == "TTT"


def test_kegg_indel_rows_split_into_flanks_and_alleles():
    ds = load_kegg("train")
    indels = [r for r in ds if len(r["ref_allele"]) != len(r["alt_allele"])]
    assert len(indels) > 50
    for r in indels[:20]:
        p = split_kegg_sequences(r["reference_sequence"], r["variant_sequence"])
        assert p.upstream + p.ref_allele + p.downstream == r["reference_sequence"]
        assert p.upstream + p.alt_allele + p.downstream == r["variant_sequence"]
        assert r["ref_window"][:512] == r["variant_window"][:512]


def _good():
    row = load_kegg("val")[0]
    return {k: row[k] for k in ("question", "answer", "reasoning", "reference_sequence", "variant_sequence")}


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.update(answer="the flu"), "unknown label 'the flu'"),
    (lambda r: r.update(reference_sequence=r["reference_sequence"][:100] + "X" + r["reference_sequence"][101:]),
     "invalid base 'X' at position 100"),
    (lambda r: r.update(variant_sequence=r["variant_sequence"][:3000]), "shorter than the 2 x 2000 bp flanks"),
    (lambda r: r.update(variant_sequence="T" + r["variant_sequence"][1:]), "differ inside the 2000 bp upstream flank"),
    (lambda r: r.update(question=""), "field 'question' is missing or empty"),
])
def test_bad_record_error_names_record_and_problem(mutate, message):
    record = _good()
    mutate(record)
    with pytest.raises(KeggRecordError) as e:
        validate_record(record, "kegg/val row 7")
    assert str(e.value).startswith("kegg/val row 7: ") and message in str(e.value)


def test_hard_view():
    for split in ("train", "val", "test"):
        hard, full = load_kegg(split, view="kegg_hard"), load_kegg(split)
        assert set(hard["question"]) == {HARD_QUESTION}
        assert list(hard["label"]) == list(full["label"]) and list(hard["ref_window"]) == list(full["ref_window"])


@pytest.mark.parametrize("split", ["val", "test"])
def test_hard_rule_rebuilds_the_shipped_hard_views(split):
    # The hard train view is built by `hard_view`; the same rule applied to the official val/test parquet must
    # give the shipped kegg_hard JSON exactly, field by field.
    built = hard_view(_raw_split(split, "kegg", data_dir())).to_list()
    shipped = _raw_split(split, "kegg_hard", data_dir()).to_list()
    assert built == shipped


def test_training_view_mix():
    mix = load_views("val", {"kegg": 1.0, "kegg_hard": 1.0})
    assert len(mix) == 2 * 144 and mix["view"].count("kegg_hard") == 144
    plain, hard = mix.filter(lambda r: r["view"] == "kegg"), mix.filter(lambda r: r["view"] == "kegg_hard")
    assert set(hard["question"]) == {HARD_QUESTION} and HARD_QUESTION not in set(plain["question"])
    # every variant is seen once with and once without its pathway context
    assert plain["row"] == hard["row"] == list(range(144)) and plain["label"] == hard["label"]
    half = load_views("val", {"kegg": 1.0, "kegg_hard": 0.5}, seed=1)
    assert half["view"].count("kegg_hard") == 72 and len(set(half.filter(lambda r: r["view"] == "kegg_hard")["row"])) == 72
    assert load_views("val", {"kegg": 1.0, "kegg_hard": 0.5}, seed=1)["row"] == half["row"]  # seeded
    assert load_views("val", {"kegg_hard": 2.0})["row"] == list(range(144)) * 2
    assert load_views("val")["view"] == ["kegg"] * 144
    with pytest.raises(ValueError, match="unknown view 'easy'"):
        load_views("val", {"easy": 1.0})
    with pytest.raises(ValueError, match="selects no records"):
        load_views("val", {"kegg": 0.0})


def test_unknown_split_and_view():
    with pytest.raises(ValueError, match="unknown split"):
        load_kegg("dev")
    with pytest.raises(ValueError, match="unknown view"):
        load_kegg("test", view="easy")


def test_window_size_is_honoured_by_the_training_data(tiny_dir):
    from dnallm.configuration import DNALLMConfig
    from dnallm.data import load_views
    from dnallm.modeling import DNALLMForConditionalGeneration
    from dnallm.training import encode_examples

    short, wide = load_kegg("val").select(range(3)), load_kegg("val", window=2048).select(range(3))
    for a, b in zip(short, wide):
        assert len(b["ref_window"]) == len(b["variant_window"]) == 2048
        # the same rule at another size: allele at index 1024, the 1024 bp windows are its centre
        assert b["ref_window"][512:1536] == a["ref_window"] and b["variant_window"][512:1536] == a["variant_window"]
    assert {len(w) for w in load_views("val", {"kegg": 1, "kegg_hard": 1}, limit=2, window=2048)["ref_window"]} == {2048}
    model = DNALLMForConditionalGeneration.build(DNALLMConfig(
        dna_config={"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder"), "window_size": 2048},
        text_model_name_or_path=str(tiny_dir / "text-model"), projector_stride=32))
    examples = encode_examples(model, wide, 8192)
    assert all((e["input_ids"] == model.processor.dna_pad_id).sum() == 2 * 2048 // 32 for e in examples)
    with pytest.raises(ValueError, match=r"row 0: windows of 1024/1024 bp, but the model reads 2048 bp"):
        encode_examples(model, short, 8192)
