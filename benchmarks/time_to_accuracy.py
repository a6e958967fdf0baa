"""Time-to-accuracy: a fasttrain recipe vs the airbench94 reference, same data, same device, one run.

For each seed it runs our recipe (evaluating every epoch outside the timed region, so the curve gives the
time at which the reference's accuracy is first reached) and then the reference (a faithful airbench94
re-implementation, benchmarks/airbench94_reference.py, fed the same converted dataset). Reports mean and
std of test accuracy (with and without TTA) and of time (training, and training + TTA eval). A first run
with torch.compile is reported separately as compile warm-up.

    python benchmarks/time_to_accuracy.py --recipe speed94-cpu --seeds 1          # CPU (about 1 hour)
    python benchmarks/time_to_accuracy.py --recipe speed94 --seeds 10 --compile   # GPU

`--export-airbench-data DIR` also writes DIR/train.pt and DIR/test.pt in the layout the PyPI `airbench`
package reads instead of downloading, so the published (CUDA-only) package can be timed on the same data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench94_reference as reference  # noqa: E402

from fasttrain.config import resolve  # noqa: E402
from fasttrain.train import train  # noqa: E402


def mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def time_to_reach(rows: list[dict], target: float) -> float | None:
    """Cumulative training seconds at the first epoch whose test accuracy (no TTA) reaches `target`."""
    elapsed = 0.0
    for r in rows:
        elapsed += r["epoch_s"]
        if r["test_acc"] is not None and r["test_acc"] >= target:
            return elapsed
    return None


def export_airbench_data(data_dir: str, out_dir: str) -> None:
    """The converted dataset as airbench's train.pt / test.pt ({'images': uint8 NHWC, 'labels': int64,
    'classes': list}), written to temp names then renamed."""
    from fasttrain.data.tensor_format import load_split, read_meta

    classes = list(read_meta(data_dir)["classes"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        s = load_split(data_dir, split)
        tmp = out / f".{split}.pt.tmp"
        labels = torch.from_numpy(np.asarray(s.labels, dtype=np.int64))
        torch.save({"images": torch.from_numpy(np.ascontiguousarray(s.images)), "labels": labels,
                    "classes": classes}, tmp)
        tmp.replace(out / f"{split}.pt")


def speedup_at_equal_accuracy(ref_total_s: float, reach_s: list[float | None],
                              eval_s: list[float]) -> float | None:
    """Reference train + TTA eval time over ours to first reach the reference's accuracy (+ our TTA eval);
    None when some run of ours never reached it."""
    if not reach_s or any(t is None for t in reach_s):
        return None
    return ref_total_s / statistics.fmean(t + e for t, e in zip(reach_s, eval_s))


def commit() -> str:
    try:
        here = Path(__file__).parent
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=here).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], text=True,
                                        cwd=here).strip()
        return head + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description="fasttrain recipe vs airbench94, time to accuracy")
    ap.add_argument("--recipe", default="speed94-cpu")
    ap.add_argument("--model", default=None, help="default: the recipe's model")
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=None, help="override our recipe's epochs")
    ap.add_argument("--ref-epochs", type=float, default=None, help="override the reference's 9.9 epochs")
    ap.add_argument("--ref-dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--export-airbench-data", default=None, metavar="DIR",
                    help="also write DIR/train.pt, DIR/test.pt for the PyPI airbench package")
    args = ap.parse_args()
    if args.export_airbench_data:
        export_airbench_data(args.data, args.export_airbench_data)

    from fasttrain.config import RECIPES

    model = args.model or RECIPES[args.recipe]["model"]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    # run directories (checkpoints, curves) go to the git-ignored runs/, results to --out
    run_root = Path("runs") / f"time_to_accuracy-{time.strftime('%Y%m%d-%H%M%S')}"

    def our_cfg(seed: int, tag: str):
        return resolve(model, args.recipe, dict(
            data=args.data, device=str(device), seed=seed, epochs=args.epochs, eval_every=1,
            compile=args.compile or None, train_subset=args.train_subset, test_subset=args.test_subset,
            out=str(run_root / f"{args.recipe}-{tag}")))

    compile_s = None
    if our_cfg(0, "probe").compile:  # first compiled run: warm-up (fills the compile caches), reported apart
        t = time.perf_counter()
        cfg = our_cfg(12345, "warmup")
        cfg.epochs = 0.05
        train(cfg, quiet=True)
        compile_s = time.perf_counter() - t

    meta = {"recipe": args.recipe, "model": model, "device": device_name, "torch": torch.__version__,
            "commit": commit(), "data": args.data, "train_subset": args.train_subset,
            "test_subset": args.test_subset, "compile_warmup_s": compile_s}
    ours, refs = [], []
    ref_data = reference.load_tensor_dataset(args.data, args.train_subset, args.test_subset)
    for seed in range(args.seeds):
        cfg = our_cfg(seed, f"seed{seed}")
        summary = train(cfg, quiet=True)
        rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        ours.append({"acc_tta": summary["test_acc"], "acc": summary["test_acc_no_tta"],
                     "train_s": summary["train_s"], "eval_s": summary["eval_s"],
                     "compile_s": summary["compile_s"], "curve": rows, "run_dir": cfg.out})
        print(f"[ours seed {seed}] acc_tta {ours[-1]['acc_tta']:.4f} acc {ours[-1]['acc']:.4f} "
              f"train {ours[-1]['train_s']:.1f}s eval {ours[-1]['eval_s']:.1f}s", flush=True)
        if not args.skip_reference:
            r = reference.run(*ref_data, device=device, seed=seed, dtype=args.ref_dtype, epochs=args.ref_epochs)
            refs.append(r)
            print(f"[airbench94 seed {seed}] acc_tta {r['acc_tta']:.4f} acc {r['acc']:.4f} "
                  f"train {r['train_s']:.1f}s eval {r['eval_s']:.1f}s", flush=True)
        # written after every seed, so a run cut short keeps what it measured
        lines = write_report(Path(args.out), f"time_to_accuracy_{args.recipe}_{device.type}", meta, ours, refs)
    print("\n".join(lines))


def stats(runs: list[dict]) -> dict:
    out = {}
    for key in ("acc_tta", "acc", "train_s", "eval_s"):
        m, s = mean_std([r[key] for r in runs])
        out[key] = {"mean": m, "std": s}
    m, s = mean_std([r["train_s"] + r["eval_s"] for r in runs])
    out["total_s"] = {"mean": m, "std": s}
    return out


def table_row(name: str, st: dict) -> str:
    return (f"| {name} | {100 * st['acc_tta']['mean']:.2f} ± {100 * st['acc_tta']['std']:.2f}% | "
            f"{100 * st['acc']['mean']:.2f} ± {100 * st['acc']['std']:.2f}% | "
            f"{st['train_s']['mean']:.1f} ± {st['train_s']['std']:.1f} | "
            f"{st['total_s']['mean']:.1f} ± {st['total_s']['std']:.1f} |")


def write_report(out_dir: Path, stem: str, meta: dict, ours: list[dict], refs: list[dict]) -> list[str]:
    """JSON + Markdown: mean ± std of each system, the total-time ratio and the ratio at equal accuracy."""
    result = dict(meta, seeds=len(ours), ours=stats(ours), ours_runs=ours)
    lines = [f"# Time to accuracy: `{meta['recipe']}` vs airbench94 reference", "",
             f"Device: {meta['device']}; torch {meta['torch']}; commit {meta['commit']}; seeds {len(ours)}; "
             f"data {meta['data']}", "",
             "| system | acc (TTA) | acc (no TTA) | train s | train + TTA eval s |", "|---|---|---|---|---|",
             table_row(f"fasttrain `{meta['recipe']}`", result["ours"])]
    if refs:
        result["reference"] = ref = stats(refs)
        result["reference_runs"] = refs
        target = ref["acc"]["mean"]
        reach = [time_to_reach(r["curve"], target) for r in ours]
        ratio = ref["total_s"]["mean"] / result["ours"]["total_s"]["mean"]
        equal = speedup_at_equal_accuracy(ref["total_s"]["mean"], reach, [r["eval_s"] for r in ours])
        result.update(time_to_reference_acc_s=reach, speedup_total=ratio, speedup_at_equal_accuracy=equal)
        delta = 100 * (result["ours"]["acc_tta"]["mean"] - ref["acc_tta"]["mean"])
        lines += [table_row("airbench94 (re-implementation)", ref), "",
                  f"Speed-up of train + TTA eval (reference / ours): **{ratio:.2f}x**; accuracy delta (TTA): "
                  f"{delta:+.2f} points.",
                  f"Time for our runs to first reach the reference's mean no-TTA accuracy ({100 * target:.2f}%): "
                  f"{[None if t is None else round(t, 1) for t in reach]} s of training; speed-up at equal "
                  f"accuracy (reference train + TTA eval / ours to that accuracy + TTA eval): "
                  + ("not reached" if equal is None else f"**{equal:.2f}x**") + "."]
    if meta["compile_warmup_s"] is not None:
        lines.append(f"\nFirst compiled run (warm-up, excluded above): {meta['compile_warmup_s']:.1f} s.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".json", json.dumps(result, indent=2)), (".md", "\n".join(lines) + "\n")):
        tmp = out_dir / f"{stem}{suffix}.tmp"
        tmp.write_text(text)
        tmp.replace(out_dir / f"{stem}{suffix}")
    return lines


if __name__ == "__main__":
    main()
