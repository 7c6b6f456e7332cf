"""KEGG variant->disease data: loading with `datasets`, validation, and the 1024 bp window rule.

Every KEGG row holds a reference and a variant sequence: 2000 bp upstream flank + allele (REF / ALT, ALT may be
empty) + 2000 bp downstream flank.

Window rule (the same for KEGG rows and for coordinates + FASTA):
    window = (upstream[-512:] + allele + downstream)[:1024]
so the allele starts at index 512 in both windows (a SNV's changed base sits at the centre), the downstream
sequence fills each to exactly 1024 bp, and the two differ only from index 512 on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

from dnallm.labels import LABEL_TO_ID, normalize_label

WINDOW_SIZE = 1024
KEGG_FLANK = 2000
DNA_ALPHABET = frozenset("ACGTN")
HARD_QUESTION = "What disease does this contribute to?"
SPLITS = ("train", "val", "test")
GROUPED_SPLITS = ("grouped-train", "grouped-val", "grouped-test")  # see dnallm/splits.py
VIEWS = ("kegg", "kegg_hard")


class KeggRecordError(ValueError):
    """A data record that cannot be used; the message names the record and the problem."""


def data_dir() -> Path:
    """The shipped data folder (override with DNALLM_DATA_DIR)."""
    return Path(os.environ.get("DNALLM_DATA_DIR", Path(__file__).resolve().parents[1] / "data"))


def check_bases(seq: str, what: str) -> None:
    if bad := set(seq) - DNA_ALPHABET:
        pos = next(i for i, b in enumerate(seq) if b in bad)
        raise ValueError(f"{what}: invalid base {seq[pos]!r} at position {pos} "
                         f"(allowed: {''.join(sorted(DNA_ALPHABET))})")


def centred_windows(upstream: str, ref_allele: str, alt_allele: str, downstream: str,
                    window: int = WINDOW_SIZE) -> tuple[str, str]:
    """Cut the reference and variant windows by the module's window rule."""
    half = window // 2
    if len(upstream) < half:
        raise ValueError(f"upstream flank has {len(upstream)} bp, the window needs {half}")
    ref_window = (upstream[-half:] + ref_allele + downstream)[:window]
    variant_window = (upstream[-half:] + alt_allele + downstream)[:window]
    for name, w in (("reference", ref_window), ("variant", variant_window)):
        if len(w) != window:
            raise ValueError(f"{name} window has {len(w)} bp, expected {window}: downstream flank too short")
    return ref_window, variant_window


@dataclass(frozen=True)
class SplitVariant:
    upstream: str
    ref_allele: str
    alt_allele: str
    downstream: str


def split_kegg_sequences(reference: str, variant: str, flank: int = KEGG_FLANK) -> SplitVariant:
    """Recover flanks and alleles from a KEGG row's two sequences (see module docstring)."""
    if len(reference) < 2 * flank or len(variant) < 2 * flank:
        raise ValueError(f"sequence lengths {len(reference)}/{len(variant)} bp are shorter than the "
                         f"2 x {flank} bp flanks the KEGG layout needs")
    if reference[:flank] != variant[:flank]:
        raise ValueError(f"reference and variant differ inside the {flank} bp upstream flank")
    if reference[-flank:] != variant[-flank:]:
        raise ValueError(f"reference and variant differ inside the {flank} bp downstream flank")
    return SplitVariant(reference[:flank], reference[flank:-flank], variant[flank:-flank], reference[-flank:])


def validate_record(record: dict, where: str, window: int = WINDOW_SIZE) -> dict:
    """Check one raw KEGG row and derive its `window` bp windows; errors name `where` (split and row)."""
    try:
        for key in ("question", "answer", "reasoning", "reference_sequence", "variant_sequence"):
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise ValueError(f"field {key!r} is missing or empty")
        label = normalize_label(record["answer"])
        if label not in LABEL_TO_ID:
            raise ValueError(f"unknown label {record['answer']!r} (not one of the 37 KEGG labels)")
        check_bases(record["reference_sequence"], "reference_sequence")
        check_bases(record["variant_sequence"], "variant_sequence")
        parts = split_kegg_sequences(record["reference_sequence"], record["variant_sequence"])
        ref_window, variant_window = centred_windows(parts.upstream, parts.ref_allele, parts.alt_allele,
                                                     parts.downstream, window)
    except ValueError as e:
        raise KeggRecordError(f"{where}: {e}") from None
    return {"label": label, "label_id": LABEL_TO_ID[label], "ref_window": ref_window,
            "variant_window": variant_window, "ref_allele": parts.ref_allele, "alt_allele": parts.alt_allele}


def hard_view(ds: datasets.Dataset) -> datasets.Dataset:
    """The kegg_hard rule: the question replaced by HARD_QUESTION, all else unchanged (the shipped hard val/test
    follow it, tested; the hard train view, which does not ship, is built with it)."""
    return ds.map(lambda r: {"question": HARD_QUESTION})


def _raw_split(split: str, view: str, root: Path) -> datasets.Dataset:
    if view == "kegg_hard" and split != "train":
        # val/test of the hard view ship as JSON Lines (Genos release); train is derived below.
        rows = [json.loads(line) for line in open(root / "kegg_hard" / f"{split}.json")]
        return datasets.Dataset.from_list(rows)
    ds = datasets.load_dataset("parquet", data_files=str(root / "kegg" / f"{split}-00000-of-00001.parquet"),
                               split="train")
    return hard_view(ds) if view == "kegg_hard" else ds


def assignments_path(root: str | Path | None = None) -> Path:
    """The grouped split's row assignments (built by `dnallm.splits`, shipped in data/kegg_grouped)."""
    return Path(root or data_dir()) / "kegg_grouped" / "assignments.csv"


def read_assignments(root: str | Path | None = None) -> list[dict]:
    """The shipped assignments (row as int)."""
    import csv

    with open(assignments_path(root), newline="") as f:
        return [{**r, "row": int(r["row"])} for r in csv.DictReader(f)]


def load_kegg(split: str, view: str = "kegg", root: str | Path | None = None,
              window: int = WINDOW_SIZE) -> datasets.Dataset:
    """Load one split of the KEGG set as a validated `datasets.Dataset`.

    Added columns: row, label, label_id, ref_window, variant_window (`window` bp each, by the window rule;
    a model's `config.dna_config.window_size`), ref_allele, alt_allele.
    The grouped splits (`grouped-train|val|test`) take validated official rows listed in
    data/kegg_grouped/assignments.csv; their `row` is the official row and `source_split` the official split.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {VIEWS}")
    if split in GROUPED_SPLITS:
        assigned = [a for a in read_assignments(root) if a["split"] == split.removeprefix("grouped-")]
        rows = {s: [a["row"] for a in assigned if a["source_split"] == s] for s in SPLITS}
        return datasets.concatenate_datasets([
            load_kegg(s, view, root, window).select(rows[s]).add_column("source_split", [s] * len(rows[s]))
            for s in SPLITS if rows[s]])
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS + GROUPED_SPLITS}")
    ds = _raw_split(split, view, Path(root) if root else data_dir())
    return ds.map(lambda r, i: {"row": i, **validate_record(r, f"{view}/{split} row {i}", window)}, with_indices=True)


def load_views(split: str, views: dict[str, float] | None = None, seed: int = 0,
               root: str | Path | None = None, limit: int | None = None,
               window: int = WINDOW_SIZE) -> datasets.Dataset:
    """A training mix of views of one split: `views` maps a view to how often each record appears in it.

    {"kegg": 1.0, "kegg_hard": 1.0} shows every variant with its pathway context and without, so the model has to
    use the DNA. A weight w keeps round(w * n) records (whole copies, then a seeded sample). Adds a `view` column.
    None or {} means {"kegg": 1.0}. `limit` keeps the first rows of the split (smoke runs).
    """
    import random

    views = dict(views or {"kegg": 1.0})
    for view, weight in views.items():
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r} in the training mix; expected one of {VIEWS}")
        if not (isinstance(weight, (int, float)) and weight >= 0):
            raise ValueError(f"view {view!r}: weight {weight!r} must be a number >= 0")
    if not any(views.values()):
        raise ValueError(f"the training mix {views} selects no records")
    parts = []
    for view, weight in views.items():
        ds = load_kegg(split, view=view, root=root, window=window)
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        whole, fraction = divmod(round(weight * len(ds)), len(ds))
        rows = [i for _ in range(whole) for i in range(len(ds))]
        rows += sorted(random.Random(f"{seed}/{view}").sample(range(len(ds)), fraction))
        if rows:
            parts.append(ds.select(rows).add_column("view", [view] * len(rows)))
    return datasets.concatenate_datasets(parts)


def training_views(preset: dict) -> dict[str, float]:
    """The training mix a preset names under `data: views:` (default: the kegg view alone)."""
    data = preset.get("data") or {}
    if "view" in data:
        raise ValueError("the preset's data section uses 'view'; name a mix instead, e.g. "
                         "views: {kegg: 1.0, kegg_hard: 1.0}")
    return dict(data.get("views") or {"kegg": 1.0})
