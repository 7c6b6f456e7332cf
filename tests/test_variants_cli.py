"""Variants from VCF/TSV files: the strict readers, `explain_variant` by coordinates, and the batch CLI
(`dnallm explain --vcf/--tsv`) with bad records, VCF output, generate mode and --resume after a real kill."""

import gzip
import json
import signal
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dnallm.cli import app
from dnallm.data import HARD_QUESTION, load_kegg
from dnallm.genome import write_kegg_contigs
from dnallm.inference import explain_variant, load_model
from dnallm.labels import KEGG_LABELS
from dnallm.questions import build_question
from dnallm.variants import (OUT_COLUMNS, VariantFileError, explain_file, parse_vcf_line, read_results, read_tsv, read_vcf,
                             read_vcf_header)

CHRM = "GATCACAGGTCTATCACCCTATTAACCACTCACGGGAGCTCTCCATGCATTTGGTATTTTCGTCTGGGGGGTATGCACGCGATAGCATTGCGAGACGCTG" * 7
HEADER = ("##fileformat=VCFv4.2\n" + "".join(f"##contig=<ID={c}>\n" for c in ("1", "chr1", "chr2", "chr22", "chrM"))
          + '##INFO=<ID=GENE,Number=1,Type=String,Description="Gene symbol">\n'
          + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")


def flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def vcf_line(*cols) -> str:
    return "\t".join(str(c) for c in cols) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A synthetic genome (test rows 0-11 on chr1/chr2 + a 700 bp chrM) and a VCF with good and bad records."""
    d = tmp_path_factory.mktemp("variants")
    placed = write_kegg_contigs(load_kegg("test").select(range(12)), d / "genome.fa", rows_per_contig=6)
    with open(d / "genome.fa", "a") as f:
        f.write(f">chrM\n{CHRM}\n")
    p = placed
    third = next(b for b in "ACGT" if b not in (p[8]["ref"], p[8]["alt"]))
    wrong = next(b for b in "ACGT" if b not in (p[2]["ref"], p[2]["alt"]))
    lines = [
        vcf_line("1", p[0]["pos"], "v0", p[0]["ref"], p[0]["alt"], ".", "PASS", "GENE=TARDBP"),   # 9 alias 1->chr1
        vcf_line("chr1", p[1]["pos"], "v1", p[1]["ref"], f"{p[1]['alt']},<DEL>", 50, ".", "."),  # 10 ALT 2 symbolic
        vcf_line("chr1", p[2]["pos"], "v2", wrong, p[2]["alt"], ".", ".", "."),                  # 11 REF mismatch
        vcf_line("chr22", 100, "v3", "A", "G", ".", ".", "."),                                  # 12 unknown contig
        vcf_line("chr1", p[3]["pos"], "v4", p[3]["ref"], "N[chr2:123[", ".", ".", "."),          # 13 breakend
        vcf_line("chr1", "abc", "v5", "A", "G", ".", ".", "."),                                 # 14 bad POS
        vcf_line("chr1", p[4]["pos"], "v6", p[4]["ref"], "R", ".", ".", "."),                    # 15 IUPAC code
        vcf_line("chr1", p[5]["pos"], "v7", p[5]["ref"], "*", ".", ".", "."),                    # 16 '*'
        vcf_line("chrM", 10, "v8", CHRM[9], "A", ".", ".", "."),                                # 17 padded
        vcf_line("chr2", p[8]["pos"], "v9", p[8]["ref"], f"{p[8]['alt']},{third}", ".", ".", "."),  # 18 2 ALTs
        "chr1\t5\tv10\tA\n",                                                                    # 19 short line
        vcf_line("chr2", p[7]["pos"], "v11", p[7]["ref"], p[7]["alt"], ".", ".", "."),           # 20 KEGG indel
    ]
    (d / "in.vcf").write_text(HEADER + "".join(lines))
    with gzip.open(d / "in.vcf.gz", "wt") as f:
        f.write(HEADER + "".join(lines))
    return d, placed


# ---- readers (no model) ---------------------------------------------------------------------------------------

def test_vcf_reader_splits_alts_and_names_bad_lines(files):
    d, p = files
    records = list(read_vcf(d / "in.vcf"))
    assert [r.key for r in records] == ["9:1", "10:1", "10:2", "11:1", "12:1", "13:1", "14:1", "15:1", "16:1", "17:1",
                                        "18:1", "18:2", "19:1", "20:1"]
    assert [(r.key, r.error) for r in records if r.error] == [
        ("14:1", "in.vcf line 14: malformed VCF line: POS 'abc' is not a 1-based position (an integer >= 1)"),
        ("19:1", "in.vcf line 19: malformed VCF line: 4 tab-separated column(s), a data line needs at least 8 "
                 "(CHROM POS ID REF ALT QUAL FILTER INFO)")]
    first = records[0]
    assert (first.chrom, first.pos, first.ref, first.alt, first.id, first.gene) == \
        ("1", p[0]["pos"], p[0]["ref"], p[0]["alt"], "v0", "TARDBP")
    assert records[2].alt == "<DEL>" and records[2].where.startswith("in.vcf line 10 ALT 2 (chr1:")
    assert [(r.key, r.chrom, r.pos, r.ref, r.alt) for r in read_vcf(d / "in.vcf.gz")] == \
        [(r.key, r.chrom, r.pos, r.ref, r.alt) for r in records]


def test_vcf_reader_agrees_with_pysam(files):
    pysam = pytest.importorskip("pysam")
    d, _ = files
    good = "".join(line + "\n" for line in (d / "in.vcf").read_text().splitlines()
                   if not line.startswith("chr1\tabc") and not line.startswith("chr1\t5\t"))
    (d / "good.vcf").write_text(good)
    ours = {}
    for r in read_vcf(d / "good.vcf"):
        ours.setdefault((r.chrom, r.pos, r.ref), []).append(r.alt)
    with pysam.VariantFile(str(d / "good.vcf")) as f:
        theirs = {(rec.chrom, rec.pos, rec.ref): list(rec.alts) for rec in f}
    assert ours == theirs and len(ours) == 10


def test_vcf_line_checks_and_file_level_errors(tmp_path):
    spaced = "chr1 100 . A G . . ."
    (rec,) = parse_vcf_line(spaced, 3, "x.vcf")
    assert "1 tab-separated column(s)" in rec.error and "looks space-separated" in rec.error
    assert "REF is empty" in parse_vcf_line("chr1\t100\t.\t\tG\t.\t.\t.", 4, "x.vcf")[0].error
    assert "ALT is empty" in parse_vcf_line("chr1\t100\t.\tA\t\t.\t.\t.", 4, "x.vcf")[0].error
    assert "POS '0'" in parse_vcf_line("chr1\t0\t.\tA\tG\t.\t.\t.", 4, "x.vcf")[0].error
    # QUAL: a number or '.'; pysam wrote 'abc' back as 0 in --vcf-out, a real quality
    assert "QUAL 'abc' is not a number or '.'" in parse_vcf_line("chr1\t9\t.\tA\tG\tabc\t.\t.", 4, "x.vcf")[0].error
    for qual in (".", "50", "3.5", "1e3"):
        assert parse_vcf_line(f"chr1\t9\t.\tA\tG\t{qual}\t.\t.", 4, "x.vcf")[0].error is None
    ann = "ANN=T|missense_variant|MODERATE|KRAS|ENSG1,C|synonymous_variant|LOW|OTHER|ENSG2"
    recs = parse_vcf_line(f"chr12\t100\t.\tG\tC,T\t.\t.\t{ann}", 9, "x.vcf")
    assert [r.gene for r in recs] == ["OTHER", "KRAS"]
    assert parse_vcf_line("1\t5\t.\tA\tG\t.\t.\tGENEINFO=BRCA2:675|X:1", 9, "x.vcf")[0].gene == "BRCA2"
    (tmp_path / "a.vcf").write_text("chr1\t5\t.\tA\tG\t.\t.\t.\n")
    with pytest.raises(VariantFileError, match=r"a\.vcf line 1: data before the #CHROM header line"):
        list(read_vcf(tmp_path / "a.vcf"))
    (tmp_path / "b.vcf").write_text("##fileformat=VCFv4.2\n#CHROM POS ID REF ALT\n")
    with pytest.raises(VariantFileError, match=r"b\.vcf line 2: the VCF header line must be the tab-separated"):
        list(read_vcf(tmp_path / "b.vcf"))
    (tmp_path / "c.vcf").write_text("##fileformat=VCFv4.2\n")
    with pytest.raises(VariantFileError, match="no #CHROM header line"):
        list(read_vcf(tmp_path / "c.vcf"))


def test_vcf_from_another_genome_build_stops_the_run_naming_the_contig_and_both_lengths(files, tmp_path):
    d, p = files
    n = sum(len(line.strip()) for line in (d / "genome.fa").read_text().split(">chr2")[0].splitlines()[1:])
    record = vcf_line("chr1", p[0]["pos"], "v0", p[0]["ref"], p[0]["alt"], ".", ".", ".")
    header = ("##fileformat=VCFv4.2\n##reference=file:///refs/GRCh38.fa\n"
              f'##contig=<ID=1,length={n + 310},assembly=B,species="Homo sapiens, test">\n'
              "##contig=<ID=chrM,length=700>\n##contig=<ID=chr9>\n##contig=<ID=chr2,length=x>\n"
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
    (tmp_path / "b37.vcf").write_text(header + record)
    assert read_vcf_header(tmp_path / "b37.vcf") == ({"1": (n + 310, 3), "chrM": (700, 4)},
                                                     ("file:///refs/GRCh38.fa", 2))
    args = ["explain", "--vcf", str(tmp_path / "b37.vcf"), "--fasta", str(d / "genome.fa"), "--model",
            str(tmp_path / "no-model"), "--out", str(tmp_path / "out.tsv")]
    res = CliRunner().invoke(app, args)  # refused before the model is loaded or any output is written
    assert res.exit_code == 2 and not (tmp_path / "out.tsv").exists(), res.output
    assert (f"b37.vcf line 3: ##contig 1 has length={n + 310}, but chr1 in the genome FASTA genome.fa has {n} bp "
            "- the VCF and the FASTA are from different genome builds") in flat(res.output)
    # with the FASTA's length the header passes (and the run goes on to load the model, missing here)
    (tmp_path / "ok.vcf").write_text(header.replace(str(n + 310), str(n)) + record)
    res = CliRunner().invoke(app, args[:2] + [str(tmp_path / "ok.vcf")] + args[3:])
    assert res.exit_code == 2 and "is not a dnallm checkpoint" in flat(res.output), res.output


def test_tsv_reader(tmp_path):
    (tmp_path / "v.tsv").write_text("#Chrom\tPosition\tref\talt\tgene\tnetwork\n"
                                    "chr1\t100\tA\t-\tPRKN\tPRKN* -| X\n"
                                    "chr1\t200\t-\tGG,T\t\t\n"
                                    "chr1\t300\tA\n"
                                    "chr1\tx\tA\tG\t\t\n")
    recs = list(read_tsv(tmp_path / "v.tsv"))
    assert [(r.key, r.ref, r.alt, r.gene, r.network) for r in recs[:3]] == [
        ("2:1", "A", "", "PRKN", "PRKN* -| X"), ("3:1", "", "GG", None, None), ("3:2", "", "T", None, None)]
    assert recs[3].error == "v.tsv line 4: malformed TSV line: 3 tab-separated cell(s), the header has 6"
    assert recs[4].error == "v.tsv line 5: malformed TSV line: pos 'x' is not a 1-based position"
    (tmp_path / "q.tsv").write_text("chrom\tpos\tref\talt\tquestion\n1\t2\tA\tG\tChromosome Number: 1\\nWhy?\n")
    assert [r.question for r in read_tsv(tmp_path / "q.tsv")] == ["Chromosome Number: 1\nWhy?"]
    (tmp_path / "w.tsv").write_text("chrom\tpos\tref\n1\t2\tA\n")
    with pytest.raises(VariantFileError, match=r"w\.tsv line 1: the TSV header lacks column\(s\) alt"):
        list(read_tsv(tmp_path / "w.tsv"))


def test_readers_take_a_byte_order_mark_and_name_a_truncated_or_corrupt_gzip(tmp_path):
    body = "chrom\tpos\tref\talt\n1\t2\tA\tG\n"
    (tmp_path / "bom.tsv").write_text("\ufeff" + body, encoding="utf-8")  # as Excel saves it
    assert [(r.chrom, r.pos, r.ref, r.alt, r.error) for r in read_tsv(tmp_path / "bom.tsv")] == [(
        "1", 2, "A", "G", None)]
    (tmp_path / "bom.vcf").write_text("\ufeff" + HEADER + vcf_line("chr1", 5, ".", "A", "G", ".", ".", "."))
    assert [(r.chrom, r.pos, r.error) for r in read_vcf(tmp_path / "bom.vcf")] == [("chr1", 5, None)]
    packed = gzip.compress((HEADER + vcf_line("chr1", 5, ".", "A", "G", ".", ".", ".") * 2000).encode())
    (tmp_path / "cut.vcf.gz").write_bytes(packed[:len(packed) // 2])
    with pytest.raises(VariantFileError, match=r"cut\.vcf\.gz after line \d+: the compressed file is truncated"):
        list(read_vcf(tmp_path / "cut.vcf.gz"))
    corrupt = bytearray(packed)
    corrupt[40:60] = b"\xff" * 20
    (tmp_path / "bad.vcf.gz").write_bytes(bytes(corrupt))
    with pytest.raises(VariantFileError, match=r"bad\.vcf\.gz after line \d+: the compressed file is truncated or "
                                               r"corrupt"):
        list(read_vcf(tmp_path / "bad.vcf.gz"))


def test_an_empty_alt_in_a_list_is_a_malformed_line_not_a_deletion(tmp_path):
    (rec,) = parse_vcf_line("chr1\t100\t.\tC\tT,\t.\t.\t.", 7, "x.vcf")
    assert rec.error == "x.vcf line 7: malformed VCF line: ALT 2 of 'T,' is empty"
    (tmp_path / "v.tsv").write_text("chrom\tpos\tref\talt\n1\t2\tA\t,G\n1\t3\tA\t\n")
    recs = list(read_tsv(tmp_path / "v.tsv"))
    assert recs[0].error == "v.tsv line 2: malformed TSV line: alt 1 of ',G' is empty"
    assert (recs[1].error, recs[1].alt) == (None, "")  # an empty cell alone is the documented deletion


def test_vcf_out_copies_a_line_with_padded_columns(tmp_path):
    pysam = pytest.importorskip("pysam")
    from dnallm.variants.vcf_out import write_vcf_out

    (tmp_path / "in.vcf").write_text(HEADER + "chr1 \t 300\t.\tA\tG\t.\t.\t.\n")
    (rec,) = read_vcf(tmp_path / "in.vcf")  # the reader accepts the spaces around CHROM and POS
    assert (rec.key, rec.chrom, rec.pos, rec.error) == ("9:1", "chr1", 300, None)
    row = dict.fromkeys(OUT_COLUMNS, "") | {"record": "9:1", "label": KEGG_LABELS[3], "probability": "0.5"}
    (tmp_path / "out.tsv").write_text("\t".join(OUT_COLUMNS) + "\n" + "\t".join(row[c] for c in OUT_COLUMNS) + "\n")
    assert write_vcf_out(tmp_path / "in.vcf", tmp_path / "out.tsv", tmp_path / "out.vcf") == 0
    with pysam.VariantFile(str(tmp_path / "out.vcf")) as f:
        (out,) = list(f)
    assert (out.chrom, out.pos, out.info["DNALLM_LABEL"]) == ("chr1", 300, (KEGG_LABELS[3].replace(" ", "_"),))


def test_a_second_run_on_an_output_being_written_is_refused(files, tmp_path):
    from dnallm.variants.batch import output_lock

    d, _ = files
    out = tmp_path / "out.tsv"
    with output_lock(out):  # as a run in another process holds it
        with pytest.raises(RuntimeError, match=r"out\.tsv is being written by another process \(it holds "
                                               r"out\.tsv\.lock\); wait for it to finish, or stop it"):
            explain_file(d / "in.vcf", d / "genome.fa", tmp_path / "no-model", out, resume=True, progress=False)
    assert not (tmp_path / "out.tsv.lock").exists() and not out.exists()


# ---- with the model -------------------------------------------------------------------------------------------

def test_explain_variant_by_coordinates_equals_by_sequences(quickstart_dir, files):
    out, _ = quickstart_dir
    d, p = files
    row = load_kegg("test")[0]
    kw = dict(model=out / "model", max_new_tokens=12)
    by_seq = explain_variant(row["question"], row["ref_window"], row["variant_window"], **kw)
    by_coords = explain_variant(row["question"], chrom="1", pos=p[0]["pos"], ref=row["ref_allele"],
                                alt=row["alt_allele"], fasta=d / "genome.fa", **kw)
    assert by_coords.raw_text == by_seq.raw_text and by_coords.label_probabilities == by_seq.label_probabilities
    assert by_coords.padded is False and by_coords.warnings == []
    assert "padded" not in by_seq.to_dict() and by_coords.to_dict()["padded"] is False
    # no question: the KEGG-style question built from gene + chromosome, else the kegg_hard question
    built = explain_variant(chrom="chr1", pos=p[0]["pos"], ref=row["ref_allele"], alt=row["alt_allele"],
                            fasta=d / "genome.fa", gene="TARDBP", mode="score", model=out / "model")
    asked = explain_variant(build_question("TARDBP", "1"), row["ref_window"], row["variant_window"], mode="score",
                            model=out / "model")
    hard = explain_variant(None, row["ref_window"], row["variant_window"], mode="score", model=out / "model")
    asked_hard = explain_variant(HARD_QUESTION, row["ref_window"], row["variant_window"], mode="score",
                                 model=out / "model")
    assert built.label_probabilities == asked.label_probabilities != hard.label_probabilities
    assert hard.label_probabilities == asked_hard.label_probabilities
    padded = explain_variant(chrom="MT", pos=10, ref=CHRM[9], alt="A", fasta=d / "genome.fa", mode="score",
                             model=out / "model")
    assert padded.padded and "runs off the start of chrM" in padded.warnings[0]
    with pytest.raises(ValueError, match="missing: fasta"):
        explain_variant(chrom="1", pos=5, ref="A", alt="G", model=out / "model")
    with pytest.raises(ValueError, match="explain one ALT per call"):
        explain_variant(chrom="1", pos=5, ref="A", alt="G,T", fasta=d / "genome.fa", model=out / "model")


def test_cli_single_variant_by_coordinates(quickstart_dir, files):
    out, _ = quickstart_dir
    d, p = files
    runner = CliRunner()
    args = ["explain", "--model", str(out / "model"), "--fasta", str(d / "genome.fa"), "--mode", "score"]
    res = runner.invoke(app, args + ["--chrom", "chr1", "--pos", str(p[0]["pos"]), "--ref", p[0]["ref"],
                                     "--alt", p[0]["alt"], "--gene", "TARDBP"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["label"] in KEGG_LABELS and result["padded"] is False and result["warnings"] == []
    wrong = next(b for b in "ACGT" if b != p[0]["ref"])
    res = runner.invoke(app, args + ["--chrom", "1", "--pos", str(p[0]["pos"]), "--ref", wrong, "--alt", "T"])
    assert res.exit_code == 2 and "does not match the genome FASTA" in flat(res.output)
    assert "different genome builds" in flat(res.output)
    res = runner.invoke(app, ["explain", "--model", str(out / "model")])
    assert res.exit_code == 2 and "give --reference and --variant, or --chrom" in flat(res.output)
    res = runner.invoke(app, args + ["--chrom", "1", "--pos", "5", "--ref", "A", "--alt", "G", "--out", "x.tsv"])
    assert res.exit_code == 2 and "--out need --vcf or --tsv" in flat(res.output)


def test_batch_cli_bad_records_vcf_output_and_agreement_with_explain_variant(quickstart_dir, files, tmp_path):
    pysam = pytest.importorskip("pysam")
    out, _ = quickstart_dir
    d, p = files
    model = out / "model"
    res = CliRunner().invoke(app, ["explain", "--vcf", str(d / "in.vcf.gz"), "--fasta", str(d / "genome.fa"),
                                   "--model", str(model), "--out", str(tmp_path / "out.tsv"),
                                   "--vcf-out", str(tmp_path / "out.vcf"), "--batch-size", "3", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "14 records written" in flat(res.output) and "8 with an error, 1 padded" in flat(res.output)
    lines = (tmp_path / "out.tsv").read_text().split("\n")
    assert lines[0] == "\t".join(OUT_COLUMNS) and lines[-1] == "" and len(lines) == 16
    rows = {r["record"]: r for r in read_results(tmp_path / "out.tsv")}
    errors = {key: r["error"] for key, r in rows.items() if r["error"]}
    expected = {
        "10:2": "in.vcf.gz line 10 ALT 2 (chr1:", "11:1": "does not match the genome FASTA",
        "12:1": "contig 'chr22' is not in the genome FASTA", "13:1": "breakend ALT 'N[chr2:123[' ",
        "14:1": "POS 'abc'", "15:1": "an IUPAC ambiguity code", "16:1": "ALT '*'", "19:1": "malformed VCF line",
    }
    assert errors.keys() == expected.keys()
    for key, text in expected.items():
        assert text in errors[key], (key, errors[key])
    assert "symbolic ALT <DEL>" in errors["10:2"] and "different genome builds" in errors["11:1"]
    good = [key for key in rows if key not in errors]
    assert good == ["9:1", "10:1", "17:1", "18:1", "18:2", "20:1"]
    assert rows["17:1"]["padded"] == "true" and "runs off the start of chrM" in rows["17:1"]["warnings"]
    assert rows["9:1"]["question"] == build_question("TARDBP", "1")
    assert rows["10:1"]["question"] == HARD_QUESTION
    # the batched run agrees with explain_variant one variant at a time (the same functions, other batches)
    records = {r.key: r for r in read_vcf(d / "in.vcf")}
    for key in good:
        r = records[key]
        single = explain_variant(chrom=r.chrom, pos=r.pos, ref=r.ref, alt=r.alt, fasta=d / "genome.fa",
                                 gene=r.gene, mode="score", model=model)
        assert rows[key]["label"] == single.label
        assert float(rows[key]["probability"]) == pytest.approx(single.label_probabilities[single.label], abs=1e-4)
        assert rows[key]["top3"].split("|")[0].split(":")[0] == single.top_k[0][0]
    # VCF output: INFO fields declared, one value per ALT, malformed lines left out
    assert "(2 malformed input lines left out)" in flat(res.output)
    with pysam.VariantFile(str(tmp_path / "out.vcf")) as f:
        assert {k: f.header.info[k].number for k in ("DNALLM_LABEL", "DNALLM_PROB", "DNALLM_TOP3")} == \
            {"DNALLM_LABEL": "A", "DNALLM_PROB": "A", "DNALLM_TOP3": "A"}
        vcf = {rec.id: rec for rec in f}
    assert sorted(vcf) == sorted(f"v{i}" for i in (0, 1, 2, 3, 4, 6, 7, 8, 9, 11))
    assert vcf["v1"].info["DNALLM_LABEL"] == (rows["10:1"]["label"].replace(" ", "_"), ".")  # ALT 2: missing
    assert vcf["v1"].info["DNALLM_PROB"][1] is None
    assert vcf["v9"].info["DNALLM_PROB"] == pytest.approx((float(rows["18:1"]["probability"]),
                                                           float(rows["18:2"]["probability"])))
    assert vcf["v0"].info["GENE"] == "TARDBP" and "DNALLM_LABEL" not in vcf["v2"].info
    top3 = vcf["v8"].info["DNALLM_TOP3"][0].split("|")
    assert len(top3) == 3 and top3[0].split(":")[0].replace("_", " ") == rows["17:1"]["label"]


def test_batch_cli_generate_mode_matches_explain_variant(quickstart_dir, files, tmp_path):
    out, _ = quickstart_dir
    d, p = files
    model = out / "model"
    (tmp_path / "v.tsv").write_text("chrom\tpos\tref\talt\tgene\n" + "".join(
        f"chr{1 + i // 6}\t{p[i]['pos']}\t{p[i]['ref'] or '-'}\t{p[i]['alt'] or '-'}\t{g}\n"
        for i, g in ((0, "TARDBP"), (7, ""), (9, "FGFR3"))))
    res = CliRunner().invoke(app, ["explain", "--tsv", str(tmp_path / "v.tsv"), "--fasta", str(d / "genome.fa"),
                                   "--model", str(model), "--out", str(tmp_path / "out.tsv"), "--mode", "generate",
                                   "--max-new-tokens", "8", "--batch-size", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = read_results(tmp_path / "out.tsv")
    assert [r["record"] for r in rows] == ["2:1", "3:1", "4:1"] and not any(r["error"] for r in rows)
    for r in rows:
        single = explain_variant(chrom=r["chrom"], pos=int(r["pos"]), ref=r["ref"], alt=r["alt"], gene=r["gene"],
                                 fasta=d / "genome.fa", model=model, max_new_tokens=8)
        assert r["reasoning"] == single.reasoning and r["label"] == (single.label or "")
    assert any(r["reasoning"] for r in rows)


# The CLI in a child process that SIGKILLs itself right after writing its Nth output row (the header excluded):
# a real, unclean death at a known point, with no test hook in the library.
KILLED_CLI = """
import os, signal, sys
import dnallm.variants.batch as batch
real_append, rows = batch._append, []
def append(f, text):
    real_append(f, text)
    if not text.startswith("record\t"):
        rows.append(text)
        if len(rows) == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
batch._append = append  # explain_file's module: the name it calls
from dnallm.cli import app
app(sys.argv[2:], prog_name="dnallm")
"""


def run_cli(args: list[str], kill_after_rows: int | None = None) -> subprocess.CompletedProcess:
    command = ["-c", KILLED_CLI, str(kill_after_rows)] if kill_after_rows else ["-m", "dnallm.cli"]
    return subprocess.run([sys.executable, *command, "explain", *args], capture_output=True, text=True, timeout=300)


def test_resume_after_a_real_kill_equals_an_uninterrupted_run(quickstart_dir, files, tmp_path):
    out, _ = quickstart_dir
    d, _ = files
    common = ["--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model", str(out / "model"),
              "--no-progress"]
    common, batch3 = common + ["--batch-size", "2"], common + ["--batch-size", "3"]
    full = run_cli(common + ["--out", str(tmp_path / "full.tsv"), "--vcf-out", str(tmp_path / "full.vcf")])
    assert full.returncode == 0, full.stderr
    # killed (SIGKILL) after 11 rows: between the two records of the sixth batch (18:1, 18:2, both asked)
    killed = run_cli(common + ["--out", str(tmp_path / "part.tsv")], kill_after_rows=11)
    assert killed.returncode == -signal.SIGKILL
    assert [line.split("\t")[0] for line in (tmp_path / "part.tsv").read_text().splitlines()][-2:] == ["17:1", "18:1"]
    # and as if killed in the middle of writing the next line: the partial line is dropped and written again
    full_lines = (tmp_path / "full.tsv").read_bytes().split(b"\n")
    with open(tmp_path / "part.tsv", "ab") as f:
        f.write(full_lines[12][:9])
    resumed = run_cli(common + ["--out", str(tmp_path / "part.tsv"), "--vcf-out", str(tmp_path / "part.vcf"),
                                "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert "3 records written" in flat(resumed.stdout) and "11 already there" in flat(resumed.stdout)
    assert (tmp_path / "part.tsv").read_bytes() == (tmp_path / "full.tsv").read_bytes()
    assert (tmp_path / "part.vcf").read_bytes() == (tmp_path / "full.vcf").read_bytes()
    runner = CliRunner()
    # an existing output without --resume, or a resume with other settings, is refused before any work
    res = runner.invoke(app, ["explain", *common, "--out", str(tmp_path / "full.tsv")])
    assert res.exit_code == 2 and "exists: pass --resume to continue it" in flat(res.output)
    res = runner.invoke(app, ["explain", *batch3, "--out", str(tmp_path / "full.tsv"), "--resume"])
    assert res.exit_code == 2 and "batch_size: 2 then, 3 now" in flat(res.output)


def test_batch_contrast_columns_equal_explain_variant_and_stay_empty_without_it(quickstart_dir, files, tmp_path):
    out, _ = quickstart_dir
    d, _ = files
    model = load_model(str(out / "model"))
    explain_file(d / "in.vcf", d / "genome.fa", model, tmp_path / "c.tsv", batch_size=4, progress=False,
                 contrast=True, vcf_out=tmp_path / "c.vcf")
    rows = {r["record"]: r for r in read_results(tmp_path / "c.tsv")}
    records = {r.key: r for r in read_vcf(d / "in.vcf")}
    good = [key for key, r in rows.items() if not r["error"]]
    assert len(good) == 6 and all(rows[key]["delta_p"] == "" for key in rows if key not in good)
    for key in good:
        r = records[key]
        single = explain_variant(chrom=r.chrom, pos=r.pos, ref=r.ref, alt=r.alt, fasta=d / "genome.fa", gene=r.gene,
                                 mode="score", model=model, contrast=True).contrast
        assert float(rows[key]["delta_p"]) == pytest.approx(single["delta_p"], abs=1e-5)
        assert rows[key]["reference_label"] == single["reference_label"]
    # --vcf-out: DNALLM_DELTA_P per ALT, as in the TSV; declared only for a contrast run
    pysam = pytest.importorskip("pysam")
    with pysam.VariantFile(str(tmp_path / "c.vcf")) as f:
        assert f.header.info["DNALLM_DELTA_P"].number == "A"
        vcf = {rec.id: rec for rec in f}
    assert vcf["v9"].info["DNALLM_DELTA_P"] == pytest.approx((float(rows["18:1"]["delta_p"]),
                                                              float(rows["18:2"]["delta_p"])), abs=1e-6)
    assert "DNALLM_DELTA_P" not in vcf["v2"].info  # REF mismatch: no result
    explain_file(d / "in.vcf", d / "genome.fa", model, tmp_path / "plain.tsv", batch_size=4, progress=False,
                 vcf_out=tmp_path / "plain.vcf")
    assert all(r["delta_p"] == "" == r["reference_label"] for r in read_results(tmp_path / "plain.tsv"))
    with pysam.VariantFile(str(tmp_path / "plain.vcf")) as f:
        assert "DNALLM_DELTA_P" not in f.header.info and "DNALLM_LABEL" in f.header.info


def test_batch_encoder_dll_column_and_vcf_info_equal_explain_variant(quickstart_dir, files, tmp_path):
    out, _ = quickstart_dir
    d, _ = files
    res = CliRunner().invoke(app, ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model",
                                   str(out / "model"), "--out", str(tmp_path / "d.tsv"), "--vcf-out",
                                   str(tmp_path / "d.vcf"), "--batch-size", "4", "--encoder-dll", "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = {r["record"]: r for r in read_results(tmp_path / "d.tsv")}
    records = {r.key: r for r in read_vcf(d / "in.vcf")}
    good = [key for key, r in rows.items() if not r["error"]]
    assert len(good) == 6 and all(rows[key]["encoder_dll"] == "" for key in rows if key not in good)
    model = load_model(str(out / "model"))
    for key in good:
        r = records[key]
        single = explain_variant(chrom=r.chrom, pos=r.pos, ref=r.ref, alt=r.alt, fasta=d / "genome.fa", gene=r.gene,
                                 mode="score", model=model, encoder_dll=True).encoder_dll
        # batches of 8 windows vs 2: float32 logits summed over ~2 x 1023 bases differ by up to ~1e-5
        assert float(rows[key]["encoder_dll"]) == pytest.approx(single, abs=1e-4) and single != 0.0
    pysam = pytest.importorskip("pysam")
    with pysam.VariantFile(str(tmp_path / "d.vcf")) as f:
        assert f.header.info["DNALLM_DLL"].number == "A" and "DNALLM_DELTA_P" not in f.header.info
        vcf = {rec.id: rec for rec in f}
    assert vcf["v9"].info["DNALLM_DLL"] == pytest.approx((float(rows["18:1"]["encoder_dll"]),
                                                          float(rows["18:2"]["encoder_dll"])), abs=1e-6)
    assert "DNALLM_DLL" not in vcf["v2"].info  # REF mismatch: no result
    # a run without --encoder-dll leaves the column empty and does not declare DNALLM_DLL
    explain_file(d / "in.vcf", d / "genome.fa", model, tmp_path / "plain.tsv", batch_size=4, progress=False,
                 vcf_out=tmp_path / "plain.vcf")
    assert all(r["encoder_dll"] == "" for r in read_results(tmp_path / "plain.tsv"))
    with pysam.VariantFile(str(tmp_path / "plain.vcf")) as f:
        assert "DNALLM_DLL" not in f.header.info
    # resuming with the other setting is refused, naming it
    res = CliRunner().invoke(app, ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"), "--model",
                                   str(out / "model"), "--out", str(tmp_path / "d.tsv"), "--batch-size", "4",
                                   "--resume", "--no-progress"])
    assert res.exit_code == 2 and "encoder_dll: True then, False now" in flat(res.output)


def test_a_bad_question_is_that_records_error_and_the_others_are_answered(quickstart_dir, files, tmp_path):
    """A control token in a record's question (or in the GENE it is built from), or a question too long for the
    model, stopped the whole batch (and every --resume again at that record); now it is that record's error."""
    out, _ = quickstart_dir
    d, p = files
    rows = [("chr1", p[0]["pos"], p[0]["ref"], p[0]["alt"], "TARDBP", ""),
            ("chr1", p[1]["pos"], p[1]["ref"], p[1]["alt"], "", "What is <think> this?"),
            ("chr1", p[3]["pos"], p[3]["ref"], p[3]["alt"], "<|im_end|>", ""),
            ("chr1", p[4]["pos"], p[4]["ref"], p[4]["alt"], "", "Why?" * 2_600),
            ("chr1", p[5]["pos"], p[5]["ref"], p[5]["alt"], "", "")]
    (tmp_path / "q.tsv").write_text("chrom\tpos\tref\talt\tgene\tquestion\n"
                                    + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    stats = explain_file(tmp_path / "q.tsv", d / "genome.fa", out / "model", tmp_path / "out.tsv", batch_size=2,
                         progress=False)
    assert (stats["written"], stats["errors"]) == (5, 3)
    errors = [r["error"] for r in read_results(tmp_path / "out.tsv")]
    assert errors[0] == errors[4] == ""
    assert errors[1] == (f"q.tsv line 3 (chr1:{p[1]['pos']} {p[1]['ref']}>{p[1]['alt']}): the question contains the "
                         "control token(s) ['<think>']; a question is plain text")
    assert errors[2].startswith("q.tsv line 4 (chr1:") and "control token(s) ['<|im_end|>']" in errors[2]
    assert errors[3].startswith("q.tsv line 5 (chr1:") and errors[3].endswith(
        "the question has 10,400 characters; at most 10,000")
    # bad settings fail before the output exists (an output left behind would only resume with them)
    with pytest.raises(ValueError, match="--max-new-tokens must be >= 1 in generate mode, got 0"):
        explain_file(tmp_path / "q.tsv", d / "genome.fa", out / "model", tmp_path / "gen.tsv", mode="generate",
                     max_new_tokens=0, progress=False)
    assert not (tmp_path / "gen.tsv").exists()


def test_explain_variant_refuses_prompts_beyond_the_context_and_a_bad_k(quickstart_dir):
    from dnallm.inference import check_prompt

    out, _ = quickstart_dir
    model = load_model(str(out / "model"))
    row = load_kegg("test")[0]
    windows = (row["ref_window"], row["variant_window"])
    limit = model.config.text_config.max_position_embeddings
    check_prompt(model, row["question"], windows)  # fits
    with pytest.raises(ValueError, match=rf"tokens \+ {limit} to generate, beyond the text model's {limit:,}-token"):
        check_prompt(model, row["question"], windows, new_tokens=limit)
    for k in (0, 38):
        with pytest.raises(ValueError, match=f"k must be between 1 and 37 .*, got {k}"):
            explain_variant(row["question"], *windows, model=model, mode="score", k=k)


def test_cli_reports_a_checkpoint_of_another_encoder_and_a_locked_output_as_errors(quickstart_dir, files, tmp_path):
    """LoadingError and the output lock are RuntimeErrors: the CLI printed a traceback of 50-90 lines for them."""
    import shutil

    from dnallm.variants.batch import output_lock

    out, _ = quickstart_dir
    d, p = files
    copy = tmp_path / "qs"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("eval", "checkpoint-*", "last", "best"))
    config = json.loads((copy / "model" / "config.json").read_text())
    config["dna_config"]["fingerprint"]["hidden_size"] += 1  # trained on another encoder than ../encoder
    (copy / "model" / "config.json").write_text(json.dumps(config))
    one = ["--chrom", "chr1", "--pos", str(p[0]["pos"]), "--ref", p[0]["ref"], "--alt", p[0]["alt"],
           "--fasta", str(d / "genome.fa")]
    res = CliRunner().invoke(app, ["explain", *one, "--model", str(copy / "model"), "--mode", "score"])
    assert res.exit_code == 2 and "error:" in res.output and "trained on" in flat(res.output), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    res = CliRunner().invoke(app, ["eval", "--model", str(copy / "model"), "--limit", "2", "--no-generate"])
    assert res.exit_code == 2 and "cannot load" in flat(res.output), res.output
    with output_lock(tmp_path / "o.tsv"):
        res = CliRunner().invoke(app, ["explain", "--vcf", str(d / "in.vcf"), "--fasta", str(d / "genome.fa"),
                                       "--model", str(out / "model"), "--out", str(tmp_path / "o.tsv")])
    assert res.exit_code == 2 and "is being written by another process" in flat(res.output), res.output


def test_an_output_without_records_resumes_with_any_settings(quickstart_dir, files, tmp_path):
    """A run stopped before its first batch left the header and its settings: --resume with other settings was
    refused, a run without --resume too ('exists'), so the files had to be removed by hand."""
    from dnallm.variants.batch import meta_file, write_meta

    out, _ = quickstart_dir
    d, _ = files
    target = tmp_path / "out.tsv"
    target.write_text("\t".join(OUT_COLUMNS) + "\n")
    write_meta(target, {"mode": "generate", "max_new_tokens": 0})
    stats = explain_file(d / "in.vcf", d / "genome.fa", out / "model", target, resume=True, progress=False)
    assert stats["skipped"] == 0 and stats["written"] == 14
    assert json.loads(meta_file(target).read_text())["mode"] == "score"
    finished = target.read_bytes()
    target.write_text("\t".join(OUT_COLUMNS) + "\n")  # and without --resume: a header alone is no output yet
    write_meta(target, {"mode": "generate", "max_new_tokens": 0})
    explain_file(d / "in.vcf", d / "genome.fa", out / "model", target, progress=False)
    assert target.read_bytes() == finished
    with pytest.raises(FileExistsError, match="exists: pass --resume"):  # records: never overwritten
        explain_file(d / "in.vcf", d / "genome.fa", out / "model", target, progress=False)
    with pytest.raises(ValueError, match=r"it was written with other settings \(batch_size: 8 then, 4 now\)"):
        explain_file(d / "in.vcf", d / "genome.fa", out / "model", target, resume=True, batch_size=4, progress=False)
