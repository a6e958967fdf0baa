"""Time-to-accuracy: a fasttrain recipe vs the airbench94 and airbench94_muon references, same data, same
device, one run.

For each seed it runs our recipe (evaluating every epoch outside the timed region, so the curve gives the
time at which a reference's accuracy is first reached) and then each reference, faithful re-implementations
fed the same converted dataset: benchmarks/airbench94_reference.py (airbench94, 3.83 s on an A100) and
benchmarks/airbench94_muon_reference.py (airbench94_muon, the record to beat: 2.59 s on an A100).

Equal treatment: every system gets a warm-up before any clock (ours: a short compiled run plus the
trainer's own compile warm-up; the references: a few steps and both evaluations, which compile them where
they compile and autotune cuDNN), and each runs in its fastest precision on the device (on CUDA: bf16 for
ours, fp16 for the references as published; on a CPU: bf16 only with AMX tiles, else fp32).

Reported per reference, mean ± std over seeds: accuracy with and without TTA, train and train + TTA eval
seconds, the ratio of train + TTA eval time (reference / ours, per seed), and the ratio at equal accuracy:
reference train + TTA eval over the time our run first reached the reference's mean no-TTA accuracy (from
our per-epoch curve) plus our TTA eval.

    python benchmarks/time_to_accuracy.py --recipe speed94-cpu --seeds 2          # CPU (hours on 2 cores)
    python benchmarks/time_to_accuracy.py --recipe speed94 --seeds 5              # GPU (compiles by default)

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
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # fasttrain, from a source checkout
import airbench94_muon_reference as muon_reference  # noqa: E402
import airbench94_reference as reference  # noqa: E402

from fasttrain.config import resolve  # noqa: E402
from fasttrain.outputs import claim_or_exit, write_json, write_markdown  # noqa: E402
from fasttrain.runtime import resolve_device, sync  # noqa: E402
from fasttrain.train import train  # noqa: E402

REFERENCES = {"airbench94": "airbench94 (re-implementation)", "airbench94_muon": "airbench94_muon (re-implementation)"}


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


def machine_probe_s(device: torch.device) -> float:
    """Seconds for a fixed fp32 workload (20 matmuls of 1024x1024), the median of 5 tries: a resumed report
    only mixes runs of machines this close in speed. Two cloud machines of the same CPU model (same name,
    same core count) were seen to differ by 45% in speed, so the name alone cannot tell."""
    a = torch.randn(1024, 1024, device=device, generator=torch.Generator(device).manual_seed(0))
    times = []
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


PROBE_TOLERANCE = 0.10  # a resumed report's machine may be this much slower or faster (noise), no more


def earlier_runs(report: Path, setup: dict, probe_s: float) -> dict | None:
    """The earlier report at `report` if it measured the same setup (recipe, device, torch, data, epochs,
    precision, subsets...) on a machine of the same speed, else None with the reason printed: runs of
    another setup or another machine are never mixed in."""
    if not report.exists():
        print(f"--resume: no earlier report at {report}; starting afresh", flush=True)
        return None
    earlier = json.loads(report.read_text())
    earlier["data"] = str(Path(earlier["data"]).resolve())
    differ = [k for k in setup if k in earlier and earlier[k] != setup[k]]
    if differ:
        what = ", ".join(f"{k}: {earlier[k]!r} there, {setup[k]!r} now" for k in differ)
        sys.exit(f"--resume: {report} measured another setup ({what}); use another --tag or drop --resume")
    unrecorded = [k for k in setup if k not in earlier]
    if unrecorded:  # reports written before these were recorded ran with the defaults unless told otherwise
        print(f"--resume: {report.name} does not record {', '.join(unrecorded)}; assuming they match", flush=True)
    if "probe_s" not in earlier:
        print(f"--resume: {report.name} does not record its machine's speed (probe_s); its runs are assumed to "
              "come from a machine as fast as this one", flush=True)
    elif abs(probe_s / earlier["probe_s"] - 1) > PROBE_TOLERANCE:
        sys.exit(f"--resume: {report} was measured on a machine {probe_s / earlier['probe_s']:.2f}x as fast as this "
                 f"one (speed probe {earlier['probe_s']:.3f} s there, {probe_s:.3f} s here): its times are not "
                 "comparable with this machine's; use another --tag, or --rerun the systems to measure again")
    return earlier


def print_progress(name: str, seed: int, device: torch.device):
    """A reference's per-epoch progress line, on a CPU only (a run takes an hour there; on CUDA reporting
    would need a sync inside the reference's clock)."""
    def progress(epoch: int, seconds: float) -> None:
        print(f"[{name} seed {seed}] epoch {epoch}: {seconds:.1f} s of training", flush=True)
    return progress if device.type == "cpu" else None


def per_seed_ratios(ref_runs: list[dict], ours: list[dict], reach: list[float | None]) -> dict:
    """Per seed: reference total / our total, and reference total / our time to its accuracy + TTA eval."""
    total = [(r["train_s"] + r["eval_s"]) / (o["train_s"] + o["eval_s"]) for r, o in zip(ref_runs, ours)]
    equal = [None if t is None else (r["train_s"] + r["eval_s"]) / (t + o["eval_s"])
             for r, o, t in zip(ref_runs, ours, reach)]
    out = {"total": dict(zip(("mean", "std"), mean_std(total))), "total_per_seed": total,
           "equal_accuracy_per_seed": equal}
    out["equal_accuracy"] = (dict(zip(("mean", "std"), mean_std(equal))) if equal and None not in equal
                             else None)
    return out


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
    ap = argparse.ArgumentParser(description="fasttrain recipe vs airbench94 and airbench94_muon, time to accuracy")
    ap.add_argument("--recipe", default="speed94-cpu")
    ap.add_argument("--model", default=None, help="default: the recipe's model")
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=None, help="override our recipe's epochs")
    ap.add_argument("--ref-epochs", type=float, default=None, help="override the references' epochs (9.9 and 8)")
    ap.add_argument("--ref-dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"],
                    help="airbench94's precision (auto: fastest on the device)")
    ap.add_argument("--ref-compile-mode", default="max-autotune",
                    help="airbench94_muon's torch.compile mode on CUDA, as published ('none': eager)")
    ap.add_argument("--references", default=",".join(REFERENCES), help="comma-separated, or 'none'")
    ap.add_argument("--ref-batch-size", type=int, default=None,
                    help="override the references' published batch sizes (smoke runs on a few hundred images)")
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None)
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="compile ours (default: the recipe's, and on CUDA always)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--tag", default="", help="suffix for the result files (e.g. smoke)")
    ap.add_argument("--force", action="store_true", help="replace result files in --out fasttrain did not write")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the runs an earlier report of the same setup (same --out and --tag) holds and run "
                         "only the missing ones (a CPU benchmark takes hours)")
    ap.add_argument("--rerun", default="", metavar="SYSTEMS",
                    help="with --resume: comma-separated systems (ours, airbench94, airbench94_muon) whose earlier "
                         "runs are discarded and measured again")
    ap.add_argument("--export-airbench-data", default=None, metavar="DIR",
                    help="also write DIR/train.pt, DIR/test.pt for the PyPI airbench package")
    args = ap.parse_args()
    if args.export_airbench_data:
        export_airbench_data(args.data, args.export_airbench_data)
    refs_wanted = [] if args.references == "none" else args.references.split(",")
    unknown = sorted(set(refs_wanted) - set(REFERENCES))
    if unknown:
        sys.exit(f"--references: unknown {', '.join(unknown)}; choose from {', '.join(REFERENCES)} or none")
    rerun = set(filter(None, args.rerun.split(",")))
    if unknown := sorted(rerun - {"ours", *REFERENCES}):
        sys.exit(f"--rerun: unknown {', '.join(unknown)}; choose from ours, {', '.join(REFERENCES)}")

    from fasttrain.config import RECIPES

    model = args.model or RECIPES[args.recipe]["model"]
    device = resolve_device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads)"
    # run directories (checkpoints, curves) go to the git-ignored runs/, results to --out
    run_root = Path("runs") / f"time_to_accuracy-{time.strftime('%Y%m%d-%H%M%S')}"

    def our_cfg(seed: int, tag: str):
        return resolve(model, args.recipe, dict(
            data=args.data, device=str(device), seed=seed, epochs=args.epochs, eval_every=1,
            compile=args.compile, train_subset=args.train_subset, test_subset=args.test_subset,
            out=str(run_root / f"{args.recipe}-{tag}")))

    stem = f"time_to_accuracy_{args.recipe}_{device.type}{'_' + args.tag if args.tag else ''}"
    setup = {"recipe": args.recipe, "model": model, "device": device_name, "torch": torch.__version__,
             "data": str(Path(args.data).resolve()), "epochs": args.epochs, "ref_epochs": args.ref_epochs,
             "ref_dtype": args.ref_dtype, "ref_batch_size": args.ref_batch_size, "train_subset": args.train_subset,
             "test_subset": args.test_subset, "compile": args.compile, "ref_compile_mode": args.ref_compile_mode}
    out_dir = Path(args.out)
    claim_or_exit(*(out_dir / f"{stem}{suffix}" for suffix in (".json", ".md")), option="--out",
                  force=args.force)  # before any work (fasttrain.outputs); write_report claims them again
    probe_s = machine_probe_s(device)
    earlier = earlier_runs(out_dir / f"{stem}.json", setup, probe_s) if args.resume else None
    ours: list[dict] = list(earlier["ours_runs"]) if earlier and "ours" not in rerun else []
    refs: dict[str, list[dict]] = {name: list(earlier["references"].get(name, {}).get("runs", []))
                                   if earlier and name not in rerun else [] for name in refs_wanted}
    if earlier:
        print(f"--resume: reusing {len(ours)} run(s) of ours and "
              + ", ".join(f"{len(runs)} of {name}" for name, runs in refs.items()) + f" from {stem}.json", flush=True)

    # --- warm-up of every system that still has a run to do, outside every clock
    warmup_s = dict(earlier["warmup_s"]) if earlier else {}
    if len(ours) < args.seeds:
        t = time.perf_counter()
        cfg = our_cfg(12345, "warmup")
        cfg.epochs = 0.05  # a few batches: fills the compile caches, autotunes cuDNN, pays first calls
        train(cfg, quiet=True)
        warmup_s["ours"] = time.perf_counter() - t
    ref_data = reference.load_tensor_dataset(args.data, args.train_subset, args.test_subset)
    runners = {}
    for name in refs_wanted:
        if len(refs[name]) >= args.seeds:
            continue
        if name == "airbench94":
            warmup_s[name] = reference.warmup(*ref_data, device=device, dtype=args.ref_dtype,
                                              batch_size=args.ref_batch_size)
            runners[name] = lambda seed: reference.run(*ref_data, device=device, seed=seed, dtype=args.ref_dtype,
                                                       epochs=args.ref_epochs, batch_size=args.ref_batch_size,
                                                       progress=print_progress("airbench94", seed, device))
        else:
            muon_ref = muon_reference.Reference(device, compile_mode=None if args.ref_compile_mode == "none"
                                                else args.ref_compile_mode, batch_size=args.ref_batch_size)
            warmup_s[name] = muon_ref.warmup(*ref_data)
            runners[name] = lambda seed, ref=muon_ref, name=name: ref.run(
                *ref_data, seed=seed, epochs=args.ref_epochs, progress=print_progress(name, seed, device))
    print(f"warm-up (outside the clock): {', '.join(f'{k} {v:.1f} s' for k, v in warmup_s.items())}", flush=True)

    meta = dict(setup, probe_s=probe_s, warmup_s=warmup_s, commit=commit(),
                earlier_commits=sorted({earlier["commit"], *earlier.get("earlier_commits", [])}) if earlier else [])
    lines = write_report(out_dir, stem, meta, ours, refs, args.force) if ours else []
    for seed in range(args.seeds):
        if len(ours) <= seed:
            cfg = our_cfg(seed, f"seed{seed}")
            summary = train(cfg, quiet=True)
            rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
            ours.append({"acc_tta": summary["test_acc"], "acc": summary["test_acc_no_tta"],
                         "train_s": summary["train_s"], "eval_s": summary["eval_s"], "amp": summary["amp"],
                         "compile": summary["compile"], "compile_s": summary["compile_s"],
                         "recompiles": summary.get("recompiles"), "curve": rows, "run_dir": cfg.out})
            print(f"[ours seed {seed}] acc_tta {ours[-1]['acc_tta']:.4f} acc {ours[-1]['acc']:.4f} "
                  f"train {ours[-1]['train_s']:.1f}s eval {ours[-1]['eval_s']:.1f}s", flush=True)
            # written after every run, so a benchmark cut short (hours on a CPU) keeps what it measured
            lines = write_report(out_dir, stem, meta, ours, refs, args.force)
        for name, run_reference in runners.items():
            if len(refs[name]) > seed:
                continue
            r = run_reference(seed)
            refs[name].append(r)
            print(f"[{name} seed {seed}] acc_tta {r['acc_tta']:.4f} acc {r['acc']:.4f} "
                  f"train {r['train_s']:.1f}s eval {r['eval_s']:.1f}s ({r['dtype']})", flush=True)
            lines = write_report(out_dir, stem, meta, ours, refs, args.force)
    print("\n".join(lines))


def stats(runs: list[dict]) -> dict:
    out = {}
    for key in ("acc_tta", "acc", "train_s", "eval_s"):
        m, s = mean_std([r[key] for r in runs])
        out[key] = {"mean": m, "std": s}
    m, s = mean_std([r["train_s"] + r["eval_s"] for r in runs])
    out["total_s"] = {"mean": m, "std": s}
    out["n"] = len(runs)
    return out


def table_row(name: str, st: dict) -> str:
    """Mean ± std over seeds; one seed has no spread to show, so its row says n=1 instead of '± 0.00'."""
    def cell(key: str, scale: float, digits: int, unit: str = "") -> str:
        mean = f"{scale * st[key]['mean']:.{digits}f}{unit}"
        return mean + (f" ± {scale * st[key]['std']:.{digits}f}{unit}" if st["n"] > 1 else " (n=1)")
    return (f"| {name} | {cell('acc_tta', 100, 2, '%')} | {cell('acc', 100, 2, '%')} | "
            f"{cell('train_s', 1, 1)} | {cell('total_s', 1, 1)} |")


def spread(ratio: dict, n: int) -> str:
    return f" ± {ratio['std']:.2f}" if n > 1 else ""


def write_report(out_dir: Path, stem: str, meta: dict, ours: list[dict], refs: dict[str, list[dict]],
                 force: bool = False) -> list[str]:
    """JSON + Markdown: mean ± std of each system, and against each reference the total-time ratio and the
    ratio at equal accuracy (both per seed, then mean ± std). Both under the output rule (fasttrain.outputs):
    written after every run, each call replaces the previous call's files (ours, signed)."""
    result = dict(meta, seeds=len(ours), ours=stats(ours), ours_runs=ours, references={})
    names = ", ".join(REFERENCES[n].split(" ")[0] for n in refs) or "no reference"
    lines = [f"# Time to accuracy: `{meta['recipe']}` vs {names}", "",
             f"Device: {meta['device']}; torch {meta['torch']}; commit {meta['commit']}; seeds {len(ours)}; "
             f"data {meta['data']}" + (f" (train subset {meta['train_subset']})" if meta["train_subset"] else ""),
             "", "| system | acc (TTA) | acc (no TTA) | train s | train + TTA eval s |", "|---|---|---|---|---|",
             table_row(f"fasttrain `{meta['recipe']}`", result["ours"])]
    notes = []
    for name, runs in refs.items():
        if not runs:
            continue
        st = stats(runs)
        target = st["acc"]["mean"]
        reach = [time_to_reach(r["curve"], target) for r in ours]
        ratios = per_seed_ratios(runs, ours, reach)
        result["references"][name] = dict(stats=st, runs=runs, time_to_reference_acc_s=reach, **ratios)
        lines.append(table_row(REFERENCES[name] + f" ({runs[0]['dtype']})", st))
        delta_tta = 100 * (result["ours"]["acc_tta"]["mean"] - st["acc_tta"]["mean"])
        delta = 100 * (result["ours"]["acc"]["mean"] - target)
        eq = ratios["equal_accuracy"]
        notes.append(
            f"- vs {name} ({len(runs)} seed{'s' * (len(runs) > 1)}): train + TTA eval "
            f"**{ratios['total']['mean']:.2f}x{spread(ratios['total'], len(runs))}** "
            f"(reference / ours); accuracy delta {delta_tta:+.2f} points with TTA, {delta:+.2f} without. "
            f"At equal accuracy (our curve first reaching its mean no-TTA {100 * target:.2f}%, + our TTA eval): "
            + ("not reached by every seed" if eq is None else f"**{eq['mean']:.2f}x{spread(eq, len(runs))}**") + ".")
    lines += [""] + notes
    lines.append("\nWarm-up before any clock (compile, cuDNN autotune, first calls): "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in meta["warmup_s"].items()
                             if k == "ours" or refs.get(k)) + ".")  # a resumed report may hold others
    json_target, md_target = claim_or_exit(out_dir / f"{stem}.json", out_dir / f"{stem}.md", option="--out",
                                           force=force)
    write_json(json_target, result)
    write_markdown(md_target, "\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
