"""Question: how fast does each zoo model train on this device, against the CIFAR model-zoo reference table's imgs/sec column and
against eager fp32 in the same run? Target: bf16 + channels_last + compile >= 1.5x eager fp32 for the
ResNet families.

    python benchmarks/zoo_measure.py --models resnetv2,resnet          # a GPU: ~1 min per model (compiles)
    python benchmarks/zoo_measure.py --device cpu --no-compile --models resnet18v2 --steps 2   # smoke test

Rows accumulate in benchmarks/results/zoo_<device>.json (re-running a model replaces its row), so a long
zoo can be measured in several calls; the Markdown page goes next to it (.md).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import fields
from pathlib import Path

import torch

from fasttrain import zoo_cmd
from fasttrain.outputs import claim_or_exit, write_json, write_markdown, written_by_fasttrain

RESNET_FAMILIES = ("resnet", "resnetv2", "resnext", "senet", "wrn", "resnet9")
TARGET = 1.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(RESNET_FAMILIES), help="names and/or families (comma-separated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--out", type=Path, default=None, help="JSON file [default: benchmarks/results/zoo_<device>.json]")
    ap.add_argument("--force", action="store_true", help="replace a file at --out (or its .md) fasttrain did not write")
    args = ap.parse_args()

    desc = zoo_cmd.device_description(args.device)
    slug = re.sub(r"[^a-z0-9]+", "-", desc.lower()).strip("-")
    out = args.out or Path(__file__).parent / "results" / f"zoo_{slug}.json"
    # before any work (fasttrain.outputs)
    json_target, md_target = claim_or_exit(out, out.with_suffix(".md"), option="--out", force=args.force)
    rows = zoo_cmd.zoo_rows(zoo_cmd.select(args.models), True, args.device, args.batch_size, args.steps,
                            args.warmup, args.compile, True, log=print)

    # Merge with earlier calls on the same device.
    known = {f.name for f in fields(zoo_cmd.ZooRow)}
    merged: dict[str, zoo_cmd.ZooRow] = {}
    if written_by_fasttrain(out):  # a user's file replaced with --force is not read as earlier rows
        for d in json.loads(out.read_text())["rows"]:
            merged[d["name"]] = zoo_cmd.ZooRow(**{k: v for k, v in d.items() if k in known})
    merged.update({r.name: r for r in rows})
    ordered = [merged[n] for n in zoo_cmd.table_order(merged)]
    note = (f"Measured on {desc}, batch {args.batch_size}, 32x32 random inputs, {args.steps} timed steps after "
            f"{args.warmup} warm-up steps, torch {torch.__version__}. Fast = bf16 autocast + channels_last "
            f"(+ torch.compile where faster); baseline = eager fp32 NCHW.")
    write_json(json_target, {"note": note, "rows": [zoo_cmd.row_dict(r) for r in ordered]})
    write_markdown(md_target, zoo_cmd.zoo_doc(ordered, note))

    print(zoo_cmd.reference_comparison(ordered))
    failed = []
    for r in ordered:
        if zoo_cmd.get_entry(r.name).family not in RESNET_FAMILIES:
            continue
        ok = r.speedup_vs_fp32 is not None and r.speedup_vs_fp32 >= TARGET
        failed += [] if ok else [r.name]
        speed = f"{r.speedup_vs_fp32:.2f}x" if r.speedup_vs_fp32 else r.error or "-"
        print(f"{'PASS' if ok else 'FAIL'} {r.name:16s} fast/eager-fp32 = {speed} (target >= {TARGET}x)")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    if failed:
        print(f"{len(failed)} ResNet-family model(s) below {TARGET}x: {', '.join(failed)}")


if __name__ == "__main__":
    main()
