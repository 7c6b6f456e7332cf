"""The grouped KEGG split: no variant sequence (and no reference window) shared across train/val/test.

The official split leaks (94 of 146 test variant sequences also occur in training). The grouped split pools
all 1449 official rows and groups them: two rows belong to the same group when they share the exact variant
sequence or the exact 1024 bp reference window (connected components; in the shipped data every group is
one reference window, i.e. one locus with all its alleles). Groups are then assigned whole to splits:

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

from dnallm.data import SPLITS, data_dir, load_kegg
from dnallm.labels import LABEL_TO_ID

GROUPED_DIR = "kegg_grouped"
ASSIGNMENTS_FILE = "assignments.csv"
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
COLUMNS = ("source_split", "row", "split", "group")


def _components(keys: list[tuple[str, ...]]) -> list[int]:
    """Union-find: rows sharing any key value land in one component; returns a root index per row."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for field in range(len(keys[0]) if keys else 0):
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k[field] in first:
                parent[find(i)] = find(first[k[field]])
            else:
                first[k[field]] = i
    return [find(i) for i in range(len(keys))]


def grouped_assignments(root: str | Path | None = None) -> list[dict]:
    """One dict per official row (train, val, test order, then row): source_split, row, split, group."""
    rows = [(split, r["row"], r["label"], r["variant_sequence"], r["ref_window"])
            for split in SPLITS for r in load_kegg(split, root=root)]
    roots = _components([(variant, ref) for *_, variant, ref in rows])
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


def assignments_path(root: str | Path | None = None) -> Path:
    return Path(root or data_dir()) / GROUPED_DIR / ASSIGNMENTS_FILE


def read_assignments(root: str | Path | None = None) -> list[dict]:
    """The shipped assignments (row as int)."""
    with open(assignments_path(root), newline="") as f:
        return [{**r, "row": int(r["row"])} for r in csv.DictReader(f)]


def write_assignments(root: str | Path | None = None) -> Path:
    path = assignments_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(assignments_csv(grouped_assignments(root)))
    return path


if __name__ == "__main__":
    written = write_assignments()
    sizes = Counter(r["split"] for r in read_assignments())
    print(f"wrote {written}: " + ", ".join(f"{s} {sizes[s]}" for s in FRACTIONS))
