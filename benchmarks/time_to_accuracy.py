"""Time-to-accuracy: a fasttrain recipe vs the airbench94 reference, same data, same device, one run.

For each seed it runs our recipe (evaluating every epoch outside the timed region, so the curve gives the
time at which the reference's accuracy is first reached) and then the reference (a faithful airbench94
re-implementation, benchmarks/airbench94_reference.py, fed the same converted dataset). Reports mean and
std of test accuracy (with and without TTA) and of time (training, and training + TTA eval). A first run
with torch.compile is reported separately as compile warm-up.

    python benchmarks/time_to_accuracy.py --recipe cpu-quick --seeds 2            # CPU
    python benchmarks/time_to_accuracy.py --recipe airbench94 --seeds 10 --compile  # GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       cwd=Path(__file__).parent).strip()
    except Exception:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description="fasttrain recipe vs airbench94, time to accuracy")
    ap.add_argument("--recipe", default="cpu-quick")
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
    args = ap.parse_args()

    from fasttrain.config import RECIPES

    model = args.model or RECIPES[args.recipe]["model"]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    run_root = Path(args.out) / "tta_runs"

    def our_cfg(seed: int, tag: str):
        return resolve(model, args.recipe, dict(
            data=args.data, device=str(device), seed=seed, epochs=args.epochs, eval_every=1,
            compile=args.compile or None, train_subset=args.train_subset, test_subset=args.test_subset,
            out=str(run_root / f"{args.recipe}-{tag}")))

    compile_s = None
    if args.compile:  # first compiled run: warm-up, reported separately
        t = time.perf_counter()
        cfg = our_cfg(12345, "warmup")
        cfg.epochs = 0.05
        train(cfg, quiet=True)
        compile_s = time.perf_counter() - t

    ours, refs = [], []
    ref_data = reference.load_tensor_dataset(args.data, args.train_subset, args.test_subset)
    for seed in range(args.seeds):
        cfg = our_cfg(seed, f"seed{seed}")
        summary = train(cfg, quiet=True)
        rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
        ours.append({"acc_tta": summary["test_acc"], "acc": summary["test_acc_no_tta"], "train_s": summary["train_s"],
                     "eval_s": summary["eval_s"], "curve": rows, "run_dir": cfg.out})
        print(f"[ours seed {seed}] acc_tta {summary['test_acc']:.4f} acc {summary['test_acc_no_tta']:.4f} "
              f"train {summary['train_s']:.1f}s eval {summary['eval_s']:.1f}s", flush=True)
        if not args.skip_reference:
            r = reference.run(*ref_data, device=device, seed=seed, dtype=args.ref_dtype, epochs=args.ref_epochs)
            refs.append(r)
            print(f"[airbench94 seed {seed}] acc_tta {r['acc_tta']:.4f} acc {r['acc']:.4f} "
                  f"train {r['train_s']:.1f}s eval {r['eval_s']:.1f}s", flush=True)

    def stats(runs: list[dict]) -> dict:
        out = {}
        for key in ("acc_tta", "acc", "train_s", "eval_s"):
            m, s = mean_std([r[key] for r in runs])
            out[key] = {"mean": m, "std": s}
        m, s = mean_std([r["train_s"] + r["eval_s"] for r in runs])
        out["total_s"] = {"mean": m, "std": s}
        return out

    result = {
        "recipe": args.recipe, "model": model, "device": device_name, "torch": torch.__version__, "commit": commit(),
        "seeds": args.seeds, "data": args.data, "train_subset": args.train_subset, "test_subset": args.test_subset,
        "compile_warmup_s": compile_s, "ours": stats(ours), "ours_runs": ours,
    }
    lines = [f"# Time to accuracy: `{args.recipe}` vs airbench94 reference", "",
             f"Device: {device_name}; torch {torch.__version__}; commit {result['commit']}; seeds {args.seeds}; "
             f"data {args.data}", "",
             "| system | acc (TTA) | acc (no TTA) | train s | train + TTA eval s |", "|---|---|---|---|---|"]

    def row(name: str, st: dict) -> str:
        return (f"| {name} | {100 * st['acc_tta']['mean']:.2f} ± {100 * st['acc_tta']['std']:.2f}% | "
                f"{100 * st['acc']['mean']:.2f} ± {100 * st['acc']['std']:.2f}% | "
                f"{st['train_s']['mean']:.1f} ± {st['train_s']['std']:.1f} | "
                f"{st['total_s']['mean']:.1f} ± {st['total_s']['std']:.1f} |")

    lines.append(row(f"fasttrain `{args.recipe}`", result["ours"]))
    if refs:
        result["reference"] = stats(refs)
        result["reference_runs"] = refs
        target = result["reference"]["acc"]["mean"]
        reach = [time_to_reach(r["curve"], target) for r in ours]
        result["time_to_reference_acc_s"] = reach
        lines.append(row("airbench94 (re-implementation)", result["reference"]))
        ratio = result["reference"]["total_s"]["mean"] / result["ours"]["total_s"]["mean"]
        result["speedup_total"] = ratio
        lines += ["", f"Speed-up of train + TTA eval (reference / ours): **{ratio:.2f}x**; accuracy delta (TTA): "
                  f"{100 * (result['ours']['acc_tta']['mean'] - result['reference']['acc_tta']['mean']):+.2f} points.",
                  f"Time for our runs to first reach the reference's mean no-TTA accuracy ({100 * target:.2f}%): "
                  f"{[None if t is None else round(t, 1) for t in reach]} s of training."]
    if compile_s is not None:
        lines.append(f"\nFirst compiled run (warm-up, excluded above): {compile_s:.1f} s.")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"time_to_accuracy_{args.recipe}_{device.type}"
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
