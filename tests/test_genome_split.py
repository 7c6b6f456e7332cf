"""The grouped split keeps whole loci together: no window in one grouped split overlaps a window in another
(issue 13, item 14). The overlap checks here are written independently of dnallm.splits (str.find and a
sorted sweep instead of its seed index), so a bug there is not repeated here."""

import random

import pytest

from dnallm.data import GROUPED_SPLITS, WINDOW_SIZE, load_kegg
from dnallm.genome import kegg_chromosome
from dnallm.splits import MIN_OVERLAP, kegg_locus, nearby_coordinates, overlapping_windows


def windows_overlap(a: str, b: str, min_overlap: int = MIN_OVERLAP) -> bool:
    """A suffix of `a` equals a prefix of `b` (or the other way round) over >= min_overlap bp, or a == b."""
    for x, y in ((a, b), (b, a)):
        at = x.find(y[:min_overlap])
        while at >= 0:
            if y.startswith(x[at:]):
                return True
            at = x.find(y[:min_overlap], at + 1)
    return False


@pytest.fixture(scope="module")
def grouped():
    return {s: load_kegg(s) for s in GROUPED_SPLITS}


def test_no_grouped_window_overlaps_a_window_of_another_grouped_split(grouped):
    # by sequence: the 1024 bp reference windows (the locus each row's windows are cut from)
    windows = {s: sorted(set(ds["ref_window"])) for s, ds in grouped.items()}
    names = list(windows)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = [(x[:12], y[:12]) for x in windows[a] for y in windows[b] if windows_overlap(x, y)]
            assert shared == [], (a, b, len(shared))
    # by the coordinates the reasoning states: same chromosome, windows overlap (positions < 1024 bp apart)
    loci = {s: [kegg_locus(text) for text in ds["reasoning"]] for s, ds in grouped.items()}
    assert sum(c is not None for v in loci.values() for c in v) > 1100
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            close = [(x, y) for x in loci[a] if x for y in loci[b] if y
                     if x[0] == y[0] and abs(x[1] - y[1]) < WINDOW_SIZE]
            assert close == [], (a, b, close[:3])
    # the grouping has teeth: official test windows overlap official train windows (the old, exact-window
    # grouping kept such rows apart), and the sizes stay near 80/10/10
    official = {s: sorted(set(load_kegg(s)["ref_window"])) for s in ("train", "test")}
    assert any(windows_overlap(x, y) for x in official["test"] for y in official["train"] if x != y)
    sizes = {s: len(ds) for s, ds in grouped.items()}
    assert sum(sizes.values()) == 1449 and all(0.08 <= sizes[s] / 1449 <= 0.12 for s in GROUPED_SPLITS[1:])


def test_overlapping_windows_finds_shifted_windows_not_shared_repeats():
    rng = random.Random(0)
    genome = "".join(rng.choice("ACGT") for _ in range(8000))
    repeat = "".join(rng.choice("ACGT") for _ in range(60))  # one repeat copy inside two unrelated windows
    windows = [genome[0:1024], genome[1000:2024], genome[2024 - 19:3029],
               genome[3100:3500] + repeat + genome[3500:4064], genome[5000:5300] + repeat + genome[5300:5964]]
    assert {len(w) for w in windows} == {1024}
    pairs = {tuple(sorted(p)) for p in overlapping_windows(windows)}
    # 0 and 1 share 24 bp; 1 and 2 share 19 bp (< MIN_OVERLAP); 3 and 4 share only an inner repeat
    assert pairs == {(0, 1)}
    assert {tuple(sorted(p)) for p in overlapping_windows(windows, min_overlap=10)} == {(0, 1), (1, 2)}
    assert all(windows_overlap(windows[i], windows[j]) for i, j in pairs)


def test_nearby_coordinates_read_kegg_23_as_x():
    loci = [("1", 1000), ("1", 2023), ("1", 3047), None, ("X", 500), (kegg_chromosome("23"), 900), ("2", 1000)]
    assert sorted(tuple(sorted(p)) for p in nearby_coordinates(loci)) == [(0, 1), (4, 5)]
    assert kegg_chromosome("chr23") == kegg_chromosome("X") == "X" and kegg_chromosome("chr7") == "7"
    assert kegg_locus("a G>T substitution at position 1,200 on chromosome 23 in ...") == ("X", 1200)
    assert kegg_locus("no coordinates here") is None
