"""Windows from coordinates + a genome FASTA (dnallm.genome), KEGG coordinates, questions (no model needed).

The genome is synthetic: KEGG rows placed on contigs (2000 bp flank + REF + 2000 bp flank, separated by N runs),
so windows rebuilt from coordinates can be compared with the dataset's own windows.
"""

import gzip
import random
import re
import shutil

import datasets
import pytest

from dnallm.data import HARD_QUESTION, load_kegg
from dnallm.genome import (CHR1_LENGTHS, Genome, GenomeBuildError, VariantError, build_named, check_allele,
                           contig_candidates, open_genome, parse_kegg_coordinates, write_kegg_contigs)
from dnallm.questions import build_question

CHRM = "GATCACAGGTCTATCACCCTATTAACCACTCACGGGAGCTCTCCATGCATTTGGTATTTTCGTCTGGGGGGTATGCACGCGATAGCATTGCGAGACGCTG" * 7


@pytest.fixture(scope="module")
def all_rows():
    return datasets.concatenate_datasets([load_kegg(s) for s in ("train", "val", "test")])


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    """Test rows 0-11 on chr1/chr2, a 700 bp chrM, a contig `3` without prefix holding IUPAC codes."""
    d = tmp_path_factory.mktemp("genome")
    rows = load_kegg("test").select(range(12))
    placed = write_kegg_contigs(rows, d / "genome.fa", rows_per_contig=6)
    with open(d / "genome.fa", "a") as f:
        f.write(f">chrM mitochondrion\n{CHRM}\n>3\n{'ACGT' * 200}RYACGTacgt{'ACGT' * 200}\n")
    return open_genome(d / "genome.fa"), placed, d


def other(base: str) -> str:
    return "C" if base == "A" else "A"


def windows_match(g: Genome, placed: list[dict], normalize: bool = True) -> list[dict]:
    """The placed rows whose rebuilt windows differ from the dataset's (or are padded)."""
    bad = []
    for p in placed:
        w = g.windows(p["chrom"], p["pos"], p["ref"], p["alt"], normalize=normalize)
        if (w.reference, w.variant) != (p["ref_window"], p["variant_window"]) or w.padded or w.warnings:
            bad.append(p)
    return bad


def test_windows_from_coordinates_equal_the_kegg_windows_for_every_row(all_rows, tmp_path):
    placed = write_kegg_contigs(all_rows, tmp_path / "kegg.fa", rows_per_contig=100)
    kinds = {(len(p["ref"]) == 1, len(p["alt"]) == 1) for p in placed}
    assert len(placed) == 1449 and kinds == {(True, True), (True, False), (False, True), (False, False)}
    assert windows_match(Genome(tmp_path / "kegg.fa"), placed) == []  # SNVs, indels, MNVs, empty ALT
    # KEGG's indels keep a padding base only where it is also the indel's last base (T>TT, CTCT>CT), i.e. they
    # are already left-aligned, so normalising them moves no window (and the alleles as given agree too)
    assert windows_match(Genome(tmp_path / "kegg.fa"), placed, normalize=False) == []


def test_bgzip_fasta_gives_the_same_windows_and_plain_gzip_is_refused(tmp_path):
    from Bio import bgzf

    placed = write_kegg_contigs(load_kegg("test"), tmp_path / "test.fa", rows_per_contig=20)
    with open(tmp_path / "test.fa", "rb") as src, bgzf.BgzfWriter(str(tmp_path / "test.fa.gz"), "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert windows_match(Genome(tmp_path / "test.fa.gz"), placed) == []
    with open(tmp_path / "test.fa", "rb") as src, gzip.open(tmp_path / "plain.fa.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    with pytest.raises(ValueError, match="gzip-compressed but not with bgzip; recompress it"):
        Genome(tmp_path / "plain.fa.gz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Genome(tmp_path / "missing.fa")


def test_contig_aliases(genome):
    g, placed, _ = genome
    p = placed[0]
    for name in ("chr1", "1", "CHR1"):
        w = g.windows(name, p["pos"], p["ref"], p["alt"])
        assert w.contig == "chr1" and w.reference == p["ref_window"]
    assert g.resolve("MT", "x") == g.resolve("M", "x") == g.resolve("chrMT", "x") == "chrM"
    assert g.resolve("chr3", "x") == "3"
    assert contig_candidates("chrM") == ["chrM", "M", "MT", "chrMT"]
    with pytest.raises(VariantError, match=r"chr22:100 A>G: contig 'chr22' is not in the genome FASTA genome\.fa "
                                           r"\(tried chr22, 22; the FASTA has chr1, chr2, chrM, 3\)"):
        g.windows("chr22", 100, "A", "G")


def test_kegg_chromosome_23_is_x(tmp_path):
    # KEGG (and the questions) number X as 23; a record or header saying 23 resolves to X / chrX
    (tmp_path / "x.fa").write_text(">chrX\n" + "ACGT" * 300 + "\n>Y\n" + "ACGT" * 300 + "\n")
    g = Genome(tmp_path / "x.fa")
    assert g.resolve("23", "x") == g.resolve("chr23", "x") == "chrX" and g.resolve("24", "x") == "Y"
    assert g.windows("23", 601, "A", "T").contig == "chrX"
    assert contig_candidates("23") == ["23", "chr23", "X", "chrX"]
    # a FASTA with a contig literally named 23 keeps it
    (tmp_path / "n.fa").write_text(">23\n" + "ACGT" * 300 + "\n>X\n" + "ACGT" * 300 + "\n")
    assert Genome(tmp_path / "n.fa").resolve("23", "x") == "23"


def test_vcf_header_from_another_build_is_an_error_naming_the_contig_and_both_lengths(genome, tmp_path):
    _, _, d = genome
    g = Genome(d / "genome.fa")  # not the cached one: its lengths are changed below
    n = g.lengths["chr1"]
    # equal lengths (after aliases) pass; contigs the FASTA lacks are left to their records
    g.check_build({"1": (n, 3), "chrM": (700, 4), "chr22": (50818468, 5)}, None, "in.vcf")
    with pytest.raises(GenomeBuildError, match=rf"in\.vcf line 3: ##contig 1 has length={n + 1}, but chr1 in the "
                                               rf"genome FASTA genome\.fa has {n} bp - the VCF and the FASTA are "
                                               r"from different genome builds"):
        g.check_build({"1": (n + 1, 3), "chrM": (700, 4)}, None, "in.vcf")
    with pytest.raises(GenomeBuildError, match=r"##contig MT has length=16569, but chrM .* has 700 bp \(and 1 more"):
        g.check_build({"MT": (16569, 6), "chr2": (1, 7)}, None, "in.vcf")
    (tmp_path / "x.fa").write_text(">chrX\n" + "ACGT" * 300 + "\n")
    with pytest.raises(GenomeBuildError, match=r"##contig 23 has length=156040895, but chrX .* has 1200 bp"):
        Genome(tmp_path / "x.fa").check_build({"23": (156040895, 2)}, None, "k.vcf")
    # ##reference: checked when it names a build and the FASTA's chromosome 1 has a known build's length
    assert [build_named(t) for t in ("GRCh38", "file:///ref/hs37d5.fa", "hg19", "human_g1k_v37.fasta",
                                     "Homo_sapiens_assembly38.fasta", "b37", "file:///data/genome.fa",
                                     "/runs/run38/ref.fa")] == \
        ["GRCh38", "GRCh37", "GRCh37", "GRCh37", "GRCh38", "GRCh37", None, None]
    assert g.build() is None
    g.check_build({}, ("file:///ref/hs37d5.fa", 2), "in.vcf")  # an unknown FASTA build cannot be compared
    g.lengths["chr1"] = CHR1_LENGTHS["GRCh38"]
    assert g.build() == "GRCh38"
    g.check_build({}, ("GRCh38.p14", 2), "in.vcf")
    with pytest.raises(GenomeBuildError, match=r"in\.vcf line 2: ##reference=file:///ref/hs37d5\.fa names GRCh37, but "
                                               r"the genome FASTA genome\.fa is GRCh38 \(its chromosome 1 has "
                                               r"248956422 bp, GRCh37's has 249250621\)"):
        g.check_build({}, ("file:///ref/hs37d5.fa", 2), "in.vcf")


def test_ref_must_match_the_fasta(genome):
    g, placed, _ = genome
    p = next(p for p in placed if len(p["ref"]) == 1)
    wrong = next(b for b in "ACGT" if b != p["ref"])
    with pytest.raises(VariantError) as e:
        g.windows("1", p["pos"], wrong, p["alt"], where="in.vcf line 7")
    msg = str(e.value)
    assert msg.startswith("in.vcf line 7: REF ") and f"which has {p['ref']} at chr1:{p['pos']}" in msg
    assert "different genome builds" in msg
    # one base off, as a 0-based position would give
    seq = p["ref_window"]
    assert seq[513:523] != seq[512:522]
    with pytest.raises(VariantError, match="does not match the genome FASTA"):
        g.windows("1", p["pos"] + 1, seq[512:522], p["alt"])
    # N in REF matches any base; lower-case input is upper-cased
    assert g.windows("1", p["pos"], "N", p["alt"].lower()).reference == p["ref_window"]


def test_allele_checks_name_the_problem():
    where = "x.vcf line 3"
    assert check_allele("acgtn", "ALT", where) == "ACGTN" and check_allele("-", "ALT", where) == ""
    cases = {
        "<DEL>": "symbolic ALT <DEL> (a structural variant) is not supported",
        "<INS:ME:ALU>": "symbolic ALT <INS:ME:ALU>",
        "N[chr2:123[": "breakend ALT 'N[chr2:123[' (a structural rearrangement) is not supported",
        "]13:123456]T": "breakend ALT",
        "A.": "breakend ALT 'A.'",
        ".A": "breakend ALT '.A'",
        "*": "ALT '*' (an allele removed by an overlapping deletion) is not supported",
        ".": "ALT is '.' (no allele): not supported",
        "ACR": "ALT 'ACR' has 'R' at allele position 3, an IUPAC ambiguity code",
        "AZ": "ALT 'AZ' has 'Z' at allele position 2, not an IUPAC nucleotide code",
        "A C": "has ' ' at allele position 2, not an IUPAC nucleotide code",
    }
    for allele, message in cases.items():
        with pytest.raises(VariantError) as e:
            check_allele(allele, "ALT", where)
        assert str(e.value).startswith(where + ": ") and message in str(e.value), (allele, str(e.value))


def test_positions_and_contig_ends(genome):
    g, _, _ = genome
    with pytest.raises(VariantError, match=r"POS 0 is not a 1-based position"):
        g.windows("chrM", 0, "G", "A")
    with pytest.raises(VariantError, match=r"REF at chrM:700-701 runs past the end of chrM \(700 bp\)"):
        g.windows("chrM", 700, CHRM[-1] + "A", "A")
    # near the start: 512 - 9 N before the contig, flagged
    w = g.windows("MT", 10, CHRM[9], other(CHRM[9]))
    assert w.padded and len(w.reference) == len(w.variant) == 1024
    assert w.reference == "N" * 503 + CHRM[:9] + CHRM[9] + CHRM[10:521]
    assert w.variant == "N" * 503 + CHRM[:9] + other(CHRM[9]) + CHRM[10:521]
    assert "runs off the start of chrM; 503 N added before it" in w.warnings[0]
    # near the end: the downstream flank is filled with N
    w = g.windows("chrM", 690, CHRM[689], other(CHRM[689]))
    assert w.padded and w.reference == CHRM[177:689] + CHRM[689] + CHRM[690:] + "N" * 501
    assert "runs off the end of chrM (700 bp); 501 N added after it" in w.warnings[-1]
    # a 700 bp contig pads both sides
    w = g.windows("chrM", 350, CHRM[349], other(CHRM[349]))
    assert w.reference == "N" * 163 + CHRM + "N" * 161 and len(w.warnings) == 2
    # an insertion (empty REF) after the last base is allowed
    w = g.windows("chrM", 701, "", "AA")
    assert w.variant == CHRM[-512:] + "AA" + "N" * 510 and w.reference == CHRM[-512:] + "N" * 512
    # ... and one that repeats the last base moves left (normalised): GG after ...CTG is GG before its G
    assert CHRM[-2:] == "TG" and g.windows("chrM", 701, "", "GG").pos == 700


def test_vcf_anchored_and_kegg_style_indels_give_the_same_windows(tmp_path):
    """One change, written with VCF's padding base, without it (KEGG style, `-` or empty), or at another place in
    a repeat, gives the same windows; its first changed base sits at index 512."""
    rng = random.Random(13)
    flank = "".join(rng.choice("ACGT") for _ in range(1200))
    # 1-based: 1201 C, 1202 A, 1203-1206 TTTT, 1207 G, 1208-1216 CAGCAGCAG, 1217 A; then a 1500 bp A run
    seq = flank + "CATTTTGCAGCAGCAGA" + flank + "G" + "A" * 1500 + "C" + flank
    (tmp_path / "g.fa").write_text(">chr1\n" + seq + "\n>chr2\nNTTTG" + flank + "\n>chr3\nTTTG" + flank + "\n")
    g = Genome(tmp_path / "g.fa")

    def same(forms, pos, ref, alt, chrom="chr1"):
        got = {(w.pos, w.ref, w.alt, w.reference, w.variant)
               for w in (g.windows(chrom, *form) for form in forms)}
        assert len(got) == 1, forms
        (w_pos, w_ref, w_alt, reference, variant), = got
        assert (w_pos, w_ref, w_alt) == (pos, ref, alt)
        up = g.fetch(chrom, pos - 1 - 512, pos - 1).rjust(512, "N")  # N before a contig start
        assert reference == (up + g.fetch(chrom, pos - 1, pos + 1024))[:1024]
        assert variant == (up + alt + g.fetch(chrom, pos - 1 + len(ref), pos + 1024))[:1024]
        return reference, variant

    # deletion of A (1202), no repeat: VCF-anchored 1201 CA>C, KEGG-style 1202 A>- / A>''
    reference, variant = same([(1201, "CA", "C"), (1202, "A", "-"), (1202, "A", "")], 1202, "A", "")
    assert reference[511:514] == "CAT" and variant[511:514] == "CTT"  # the change starts at index 512
    # insertion of GG after 1202
    same([(1202, "A", "AGG"), (1203, "", "GG"), (1203, "-", "GG")], 1203, "", "GG")
    # deletion of one T of TTTT: anchored at A, anchored inside the run, KEGG-style at its last T
    same([(1202, "AT", "A"), (1204, "TT", "T"), (1206, "T", ""), (1205, "TTG", "TG")], 1203, "T", "")
    # insertion of CAG into G|CAGCAGCAG, written at three places and as a duplication of the last CAG: left-aligned
    # it is GCA inserted before the G
    same([(1207, "G", "GCAG"), (1210, "G", "GCAG"), (1217, "", "CAG"), (1214, "CAG", "CAGCAG")], 1207, "", "GCA")
    # an MNV sharing its outer bases with REF is the SNV inside
    same([(1207, "GCA", "GTA"), (1208, "C", "T")], 1208, "C", "T")
    # a deletion in a 1500 bp run moves to its first base (read in several 512 bp chunks)
    run = 2 * 1200 + 17 + 2  # 1-based position of its first A
    same([(run + 1498, "AA", "A"), (run + 1499, "A", ""), (run, "A", "")], run, "A", "")
    # the shift stops at an N and at the contig start
    same([(4, "T", ""), (3, "TT", "T")], 2, "T", "", chrom="chr2")
    same([(3, "T", ""), (2, "TT", "T")], 1, "T", "", chrom="chr3")
    # normalize=False uses the alleles as given: the padding base stays at index 512 of both windows
    w = g.windows("chr1", 1201, "CA", "C", normalize=False)
    assert (w.pos, w.ref, w.alt) == (1201, "CA", "C") and w.reference[512:514] == "CA" and w.variant[512:514] == "CT"
    # REF is still checked as given, before normalising
    with pytest.raises(VariantError, match=r"chr1:1201 CG>C: REF CG does not match the genome FASTA, which has CA"):
        g.windows("chr1", 1201, "CG", "C")


def test_iupac_codes_in_the_fasta_become_n_with_a_warning(genome, tmp_path):
    g, _, _ = genome
    # contig 3: (ACGT)*200, R, Y, ACGT, acgt (soft-masked), (ACGT)*200
    w = g.windows("chr3", 807, "A", "G")
    assert w.reference[506:513] == "NNACGTA" and w.variant[512] == "G"
    assert any("2 IUPAC ambiguity code(s) in the genome window replaced by N" in m for m in w.warnings)
    assert w.reference[512 + 1:512 + 8] == "CGTACGT"  # soft-masked bases are upper-cased
    # REF matching an ambiguity code it stands for is accepted (R = A/G)
    assert g.windows("3", 801, "G", "T").reference[512] == "N"
    bad = tmp_path / "bad.fa"
    bad.write_text(">c\n" + "ACGT" * 300 + "X" + "ACGT" * 300 + "\n")
    with pytest.raises(VariantError, match=r"the genome FASTA has 'X' at c:1201, which is not an IUPAC nucleotide"):
        Genome(bad).windows("c", 997, "A", "G")


def test_parse_kegg_coordinates(all_rows):
    c = parse_kegg_coordinates("Step 1: The G>T substitution at position 11022300 on chromosome 1 occurs")
    assert (c.chrom, c.pos, c.ref, c.alt) == ("1", 11022300, "G", "T")
    c = parse_kegg_coordinates("a T to TT change (duplication) at position 179836493 on chromosome 5, in SQSTM1")
    assert (c.chrom, c.pos, c.ref, c.alt) == ("5", 179836493, "T", "TT")
    c = parse_kegg_coordinates("substitution (AC>CG) affecting chromosome X (23) at position 153,548,788.")
    assert (c.chrom, c.pos, c.ref, c.alt) == ("X", 153548788, "AC", "CG")
    assert parse_kegg_coordinates("The variant is a deletion in the PRNP gene.") is None

    parsed, snvs = 0, []
    for r in all_rows:
        c = parse_kegg_coordinates(r["reasoning"])
        if c is None:
            continue
        parsed += 1
        number = r["question"].split("\n")[0].removeprefix("Chromosome Number: ")
        assert {"X": "23"}.get(c.chrom, c.chrom) == number, (r["row"], c)
        assert (c.ref, c.alt) == (r["ref_allele"], r["alt_allele"]), (r["row"], c)
        if len(c.ref) == len(c.alt) == 1:
            snvs.append((c.chrom, c.pos, r["reference_sequence"]))
    assert parsed / len(all_rows) > 0.8  # 1202 of 1449 rows state chromosome, position and both alleles
    # The positions agree with the sequences: two SNV rows 1-1999 bp apart on one chromosome overlap, and the
    # overlap matches at exactly that offset (sequence[k] is position pos - 2000 + k) for nearly all pairs.
    snvs = list({(c, p): (c, p, s) for c, p, s in snvs}.values())
    agree = disagree = 0
    for c1, p1, s1 in snvs:
        for c2, p2, s2 in snvs:
            if c1 == c2 and 0 < p2 - p1 < 2000:
                if s1[p2 - p1:] == s2[:len(s1) - (p2 - p1)]:
                    agree += 1
                else:
                    disagree += 1
    assert agree > 300 and agree / (agree + disagree) > 0.9  # 314 agree; 18 pairs have a position 1 bp off


def test_build_question_reproduces_the_kegg_questions():
    test = load_kegg("test")
    for r in test:
        lines = r["question"].split("\n")
        gene = re.search(r"this (\S+) allele", lines[-1]).group(1)
        network = lines[1].removeprefix("Network Definition of the pathway: ")
        genes = lines[2].removeprefix("Genes in the pathway: ")
        chrom = {"23": "chrX"}.get(lines[0].split(": ")[1], "chr" + lines[0].split(": ")[1])
        assert build_question(gene, chrom, network, genes) == r["question"]
    assert build_question() == build_question(chrom="chr1") == HARD_QUESTION == load_kegg("test", "kegg_hard")[0][
        "question"]
    assert build_question("TARDBP", "1") == ("Chromosome Number: 1\n\nGiven this context, what is the biological "
                                             "effect of this TARDBP allele, specifically what disease does this "
                                             "contribute to?")
    assert build_question("MT-ND1", "chrM").startswith("Chromosome Number: MT\n\n")
    assert build_question("BRCA2").startswith("Given this context, what is the biological effect of this BRCA2")
