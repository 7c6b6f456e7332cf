"""The grouped KEGG split: no locus shared across train/val/test (no two rows in different splits whose windows
overlap).

The official split leaks (94 of 146 test variant sequences also occur in training). The grouped split pools
all 1449 official rows and groups them: two rows belong to the same group when their 1024 bp reference windows
overlap - found from the sequences (identical windows, or a suffix of one window equal to a prefix of the other
over at least MIN_OVERLAP bp) or from the coordinates the reasoning text states (same chromosome, positions
less than a window apart) - or when they share the exact variant sequence (connected components: a group is one
stretch of genome with every variant whose window touches it). Groups are then assigned whole to splits:

1. order the groups by size (largest first), then by their key (SHA-256 of the group's smallest
   reference window), so the order depends on the data alone;
2. give each group to the split with the largest deficit against 80/10/10 within the group's label
   (the most common label among its rows): deficit = fraction x (rows of that label placed so far +
   the group's rows) - rows of that label already in the split; ties go to the split with the larger
   overall deficit, then train < val < test.

The result ships as data/kegg_grouped/assignments.csv (official split + row -> grouped split, no sequences);
`python -m dnallm.splits` rewrites it and the tests check that it reproduces the shipped file exactly.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from pathlib import Path

from dnallm.data import SPLITS, WINDOW_SIZE, assignments_path, load_kegg, read_assignments
from dnallm.genome import kegg_chromosome, parse_kegg_coordinates
from dnallm.labels import LABEL_TO_ID

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
COLUMNS = ("source_split", "row", "split", "group")
# Shortest shared stretch that counts as an overlap between sequences: an accidental >= 20 bp match among the 428
# distinct windows has p ~ 2e-7 (all 318 overlaps of rows stating coordinates agree); coordinates find shorter ones.
MIN_OVERLAP = 20


def _components(n: int, pairs) -> list[int]:
    """Rows joined by any (i, j) pair land in one component; returns a component id per row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = zip(*pairs) if pairs else ((), ())
    return list(connected_components(coo_matrix(([1] * len(i), (i, j)), shape=(n, n)), directed=False)[1])


def same_value_pairs(values: list[str]) -> list[tuple[int, int]]:
    """(i, first index with the same value) for every repeated value."""
    first: dict[str, int] = {}
    pairs = [(i, first.setdefault(v, i)) for i, v in enumerate(values)]
    return [(i, j) for i, j in pairs if i != j]


def overlapping_windows(windows: list[str], min_overlap: int = MIN_OVERLAP) -> list[tuple[int, int]]:
    """(i, j) for every two windows cut from overlapping stretches of one genome: the end of window i, from some
    offset on, is the start of window j, over at least `min_overlap` bp (identical windows are not listed)."""
    starts: dict[str, list[int]] = {}
    for j, w in enumerate(windows):
        starts.setdefault(w[:min_overlap], []).append(j)
    pairs = []
    for i, w in enumerate(windows):
        for offset in range(1, len(w) - min_overlap + 1):
            for j in starts.get(w[offset:offset + min_overlap], ()):
                if windows[j].startswith(w[offset:]):  # the seed matched; the whole rest of w must match too
                    pairs.append((i, j))
    return pairs


def nearby_coordinates(coordinates: list[tuple[str, int] | None],
                       window: int = WINDOW_SIZE) -> list[tuple[int, int]]:
    """(i, j) for rows on the same chromosome whose windows overlap (positions less than `window` apart);
    rows without coordinates (None) are left out."""
    by_chrom: dict[str, list[tuple[int, int]]] = {}
    for i, c in enumerate(coordinates):
        if c is not None:
            by_chrom.setdefault(c[0], []).append((c[1], i))
    pairs = []
    for placed in by_chrom.values():
        placed.sort()
        for a, (pos, i) in enumerate(placed):
            for other_pos, j in placed[a + 1:]:
                if other_pos - pos >= window:
                    break
                pairs.append((i, j))
    return pairs


def kegg_locus(reasoning: str) -> tuple[str, int] | None:
    """(chromosome, position) a KEGG row's reasoning states (chromosome 23 read as X), or None."""
    c = parse_kegg_coordinates(reasoning)
    return None if c is None else (kegg_chromosome(c.chrom), c.pos)


def grouped_assignments(root: str | Path | None = None) -> list[dict]:
    """One dict per official row (train, val, test order, then row): source_split, row, split, group."""
    records = [(split, r) for split in SPLITS for r in load_kegg(split, root=root)]
    rows = [(split, r["row"], r["label"], r["variant_sequence"], r["ref_window"]) for split, r in records]
    # overlaps are searched among distinct windows (428, not 1449), then mapped back to the first row of each
    windows = [ref for *_, ref in rows]
    first_row: dict[str, int] = {}
    for i, w in enumerate(windows):
        first_row.setdefault(w, i)
    distinct = list(first_row)
    pairs = (same_value_pairs([variant for *_, variant, _ in rows]) + same_value_pairs(windows)
             + [(first_row[distinct[i]], first_row[distinct[j]]) for i, j in overlapping_windows(distinct)]
             + nearby_coordinates([kegg_locus(r["reasoning"]) for _, r in records]))
    roots = _components(len(rows), pairs)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(roots):
        members.setdefault(g, []).append(i)
    groups = []
    for idx in members.values():
        key = hashlib.sha256(min(rows[i][4] for i in idx).encode()).hexdigest()[:16]
        counts = Counter(rows[i][2] for i in idx)
        label = min(counts, key=lambda lab: (-counts[lab], LABEL_TO_ID[lab]))
        groups.append((key, label, idx))
    groups.sort(key=lambda g: (-len(g[2]), g[0]))

    names = list(FRACTIONS)
    per_label: dict[str, Counter] = {}
    overall: Counter = Counter()
    split_of: dict[int, tuple[str, str]] = {}
    for key, label, idx in groups:
        placed = per_label.setdefault(label, Counter())
        size, label_total, total = len(idx), sum(placed.values()), sum(overall.values())

        def deficits(s: str) -> tuple[float, float, int]:
            return (FRACTIONS[s] * (label_total + size) - placed[s],
                    FRACTIONS[s] * (total + size) - overall[s], -names.index(s))

        chosen = max(names, key=deficits)
        placed[chosen] += size
        overall[chosen] += size
        for i in idx:
            split_of[i] = (chosen, key)
    return [{"source_split": split, "row": row, "split": split_of[i][0], "group": split_of[i][1]}
            for i, (split, row, *_) in enumerate(rows)]


def assignments_csv(assignments: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(assignments)
    return buf.getvalue()


def write_assignments(root: str | Path | None = None) -> Path:
    path = assignments_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(assignments_csv(grouped_assignments(root)))
    return path


if __name__ == "__main__":
    written = write_assignments()
    sizes = Counter(r["split"] for r in read_assignments())
    print(f"wrote {written}: " + ", ".join(f"{s} {sizes[s]}" for s in FRACTIONS))
