"""ISM maps of hard-test variants the model gets right vs wrong (issue 17, part 2's closing note).

    python benchmarks/ism_hard_test.py --model runs/quickstart/model --out runs/ism-hard-test [--n 5]

Score mode on the hard-test split (kegg_hard: no pathway context, so only the DNA can carry the label): the first
`n` rows whose top scored label is the gold label and the first `n` whose is not, by row order. For each, the ISM
map of the predicted label (±`--flank` bp) is written as OUT/row<N>-{right,wrong}.png and .tsv, and one summary
line per variant is printed (JSON lines, then a markdown table): the largest drop and rise of log p(label) and
where, the mean |change| at the variant position vs elsewhere, and the change when the variant base is mutated back
to the reference base (the ref-vs-alt contrast as a log-ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from dnallm.data import load_kegg
from dnallm.inference import explain_many, load_model
from dnallm.ism import ism_map, ism_png, ism_tsv


def summarise(m: dict, row: dict, right: bool) -> dict:
    cells = [(d, o, b) for o, r in zip(m["offsets"], m["delta"]) for d, b in zip(r, m["bases"]) if d is not None]
    drop, rise = min(cells), max(cells)
    at_variant = [abs(d) for d, o, _ in cells if o == 0]
    elsewhere = [abs(d) for d, o, _ in cells if o != 0]
    ref_base = m["reference_bases"][m["flank"]]
    back = m["delta"][m["flank"]][m["bases"].index(ref_base)] if m["variant_kind"] == "snv" else None
    per_offset = {o: statistics.mean(abs(d) for d in r if d is not None) for o, r in zip(m["offsets"], m["delta"])}
    return {"row": row["row"], "outcome": "right" if right else "wrong", "gold": row["label"], "label": m["label"],
            "p_label": round(2.718281828459045 ** m["log_p"], 4), "kind": m["variant_kind"],
            "change": f"{row['ref_allele'] or '-'}>{row['alt_allele'] or '-'}"[:15],
            "max_drop": drop[0], "max_drop_at": f"{drop[1]:+d}{drop[2]}", "max_rise": rise[0],
            "max_rise_at": f"{rise[1]:+d}{rise[2]}", "mean_abs_at_variant": statistics.mean(at_variant),
            "mean_abs_elsewhere": statistics.mean(elsewhere), "back_to_reference": back,
            "peak_offset": max(per_offset, key=per_offset.get),
            "share_negative": sum(d < 0 for d, _, _ in cells) / len(cells)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--flank", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    model = load_model(args.model)
    rows = load_kegg("test", view="kegg_hard", window=model.config.dna_config.window_size)
    windows = list(zip(rows["ref_window"], rows["variant_window"]))
    scored = explain_many(model, list(rows["question"]), windows, mode="score", batch_size=16)
    right = [i for i, ex in enumerate(scored) if ex.label == rows[i]["label"]][:args.n]
    wrong = [i for i, ex in enumerate(scored) if ex.label != rows[i]["label"]][:args.n]
    args.out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in right + wrong:
        m = ism_map(model, rows[i]["question"], windows[i], label=scored[i].label, flank=args.flank,
                    batch_size=args.batch_size)
        name = f"row{rows[i]['row']}-{'right' if i in right else 'wrong'}"
        (args.out / f"{name}.png").write_bytes(ism_png(m))
        (args.out / f"{name}.tsv").write_text(ism_tsv(m))
        line = summarise(m, rows[i], i in right)
        lines.append(line)
        print(json.dumps(line), flush=True)
    print("\n| row | outcome | gold -> predicted (p) | change | largest drop (at) | largest rise (at) | "
          "mean abs change at variant / elsewhere | back to ref base | peak offset |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in lines:
        back = "–" if s["back_to_reference"] is None else f"{s['back_to_reference']:+.2e}"
        print(f"| {s['row']} | {s['outcome']} | {s['gold']} -> {s['label']} ({s['p_label']:.3f}) | {s['change']} | "
              f"{s['max_drop']:+.2e} ({s['max_drop_at']}) | {s['max_rise']:+.2e} ({s['max_rise_at']}) | "
              f"{s['mean_abs_at_variant']:.2e} / {s['mean_abs_elsewhere']:.2e} | {back} | {s['peak_offset']:+d} |")


if __name__ == "__main__":
    main()
