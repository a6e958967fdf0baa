"""One command that verifies every GPU path of fasttrain in a short GPU window, from a plain source checkout
with nothing installed and no network:

    make gpu-check                                   # = PYTHONPATH=. python3 benchmarks/gpu_check.py
    PYTHONPATH=. python3 benchmarks/gpu_check.py --dry-run   # or GPU_CHECK_DRY_RUN=1: CPU, tiny sizes

Steps, in order, each in its own subprocess (process group) with its own time limit, all within an overall
budget (8 minutes on a GPU), so one failure or hang never eats the window; each step's result is recorded
even when it fails, and the JSON is rewritten after every step:

  1 versions   GPU, driver, torch, CUDA, Python; the CUDA extension build, timed (its own generous limit:
               a build is never killed half-way by a short limit; later steps reuse its cache)
  2 gpu_tests  every `-m gpu` test (`pytest -m gpu`; a missing optional backend skips, never errors)
  3 resnet9    convert CIFAR-10 from the carried JPEG copy (.data/cifar10-jpeg) and
               `fasttrain run resnet9 --epochs 24` as a user types it: test accuracy, img/s, epoch time,
               augmentation backend (must be cuda), compile (must be on), recompiles (must be 0)
  4 tta        time to accuracy: speed94 vs the airbench94 and airbench94_muon references, >= 3 seeds,
               warm-up outside the clock for all (benchmarks/time_to_accuracy.py)
  5 augment    fused augmentation kernel vs unfused torch ops vs a device-to-device copy, 16384 images at
               32 and 64 px, in GB/s (benchmarks/augment_throughput.py)
  6 crop_kernel the crop-resize kernel (GPU JPEG decoding) on a batch of decoded photos to 224 px, in GB/s
               against a device-to-device copy (benchmarks/gpu_decode.py --what kernel)
  7 nvjpeg     JPEG bytes -> decode_jpeg(device="cuda") -> crop-resize kernel -> (B, 224, 224, 3): img/s on
               the photo set (benchmarks/gpu_decode.py --what nvjpeg); DALI too where installed
  8 zoo        `fasttrain zoo --measure` on resnet9, resnet18, wrn16_8, mobilenetv2, densenet100_k12:
               img/s compiled bf16 channels_last vs eager fp32

Results: benchmarks/results/gpu/<date>-<gpu name>.{json,md} (a dry run: <date>-cpu-dry-run.*), and a
summary table on stdout. The exit status is 0 when every step passed. docs/gpu.md says what to carry to
the GPU machine and how long each step may take.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # fasttrain.outputs for the results, from a plain source checkout
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
JPEG_COPY = ROOT / ".data" / "cifar10-jpeg"  # git-ignored; docs/gpu.md says how to carry it along
ZOO_MODELS = "resnet9,resnet18,wrn16_8,mobilenetv2,densenet100_k12"
# the whole check. The dry run's limits are loose: on a shared 2-core CI machine a fresh checkout spends
# minutes in numba's first compile and in four systems' CPU training; on a GPU the limits are what fits.
BUDGET_S = {"gpu": 480.0, "dry": 2400.0}
MIN_STEP_S = 20.0  # a step with less time left than this is skipped, not started
# the steps' result files under .data/ are this script's own scratch, named by it, not by a user: a step
# replaces them even when an older fasttrain wrote them unsigned
SCRATCH_FORCE = ("--force",)


@dataclass
class Step:
    name: str
    title: str
    limit_s: float  # on a GPU
    dry_limit_s: float  # in the CPU dry run


STEPS = [
    Step("versions", "versions + CUDA extension build", 300, 120),
    Step("gpu_tests", "pytest -m gpu", 150, 300),
    Step("resnet9", "convert CIFAR-10 + fasttrain run resnet9 --epochs 24", 240, 400),
    Step("tta", "time to accuracy: speed94 vs airbench94 / airbench94_muon", 200, 700),
    Step("augment", "fused augmentation vs unfused vs copy (GB/s)", 90, 300),
    Step("crop_kernel", "crop-resize kernel vs copy (GB/s)", 45, 180),
    Step("nvjpeg", "nvJPEG decode + crop-resize kernel (img/s at 224 px)", 75, 180),
    Step("zoo", "fasttrain zoo --measure (compiled bf16 vs eager fp32)", 150, 300),
]


@dataclass
class StepResult:
    name: str
    title: str
    status: str = "not run"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    limit_s: float = 0.0
    data: dict = field(default_factory=dict)
    error: str | None = None
    output_tail: str = ""


# ============================================================================ helpers used by the steps
def env(dry: bool) -> dict[str, str]:
    """The steps' environment: this checkout's sources first on the path; a dry run sees no GPU."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH")) if p)
    if dry:
        e["CUDA_VISIBLE_DEVICES"] = ""
    return e


def sh(cmd: list[str], dry: bool) -> subprocess.CompletedProcess:
    """Run a command of a step; its output streams into the step's log as it comes (a step killed at its
    limit still shows how far it got)."""
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env(dry), stderr=subprocess.STDOUT, check=False)


def must(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited with {proc.returncode} (its output is in the step's log)")


def data_dirs(dry: bool) -> tuple[Path, Path]:
    """(JPEG source, converted dataset). A dry run converts into its own directory, so the small dataset
    it makes is never mistaken for the real one."""
    return JPEG_COPY, ROOT / ".data" / ("cifar10-dry-run" if dry else "cifar10")


# ============================================================================ the steps (run in a subprocess)
def step_versions(dry: bool) -> dict:
    import torch

    from fasttrain.cuda_ext import loader

    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cuda_home": loader.find_cuda_home(),
           "platform": platform.platform()}
    for module in ("numpy", "triton", "numba"):
        try:
            out[module] = __import__(module).__version__
        except ImportError:
            out[module] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                           text=True, check=False)
        out["driver"] = q.stdout.strip().splitlines()[0] if q.returncode == 0 and q.stdout.strip() else None
    nvcc = shutil.which("nvcc")
    if nvcc:
        v = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
        m = re.search(r"release ([\d.]+)", v)
        out["nvcc"] = m.group(1) if m else None
    if dry:  # compiling takes minutes on a CPU machine; tests/test_cuda_build.py covers it there
        out["extension_build"] = "not attempted in a dry run"
        return out
    t0 = time.perf_counter()
    build_dir = loader.build(verbose=False)
    out.update(extension_build_s=round(time.perf_counter() - t0, 1), extension_dir=str(build_dir),
               extension_cached=(time.perf_counter() - t0) < 10)
    return out


def step_gpu_tests(dry: bool) -> dict:
    junit = ROOT / ".data" / "gpu_check_pytest.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    proc = sh([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
               f"--junitxml={junit}", "tests"], dry)
    counts = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
    if junit.exists():
        text = junit.read_text()
        for k in counts:
            m = re.search(rf'<testsuite[^>]*\b{k}="(\d+)"', text)
            counts[k] = int(m.group(1)) if m else 0
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    # exit code 5: no tests collected (cannot happen: tests are marked); 0: all passed or skipped
    if proc.returncode != 0 or counts["errors"]:
        raise RuntimeError(f"pytest -m gpu exited with {proc.returncode}: {counts}")
    if not dry and counts["passed"] == 0:
        raise RuntimeError(f"no GPU test ran (all skipped?): {counts}")
    return counts


def step_resnet9(dry: bool) -> dict:
    source, data = data_dirs(dry)
    if not source.is_dir():
        raise RuntimeError(f"{source} is missing: copy the CIFAR-10 JPEGs there first (docs/gpu.md)")
    t0 = time.perf_counter()
    must(sh([sys.executable, "-m", "fasttrain", "convert", "cifar10", "--source", str(source), "--out", str(data)],
            dry), "fasttrain convert")
    convert_s = time.perf_counter() - t0
    run_dir = ROOT / "runs" / f"gpu-check-resnet9-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "fasttrain", "run", "resnet9", "--data", str(data), "--epochs", "24",
           "--out", str(run_dir)]
    if dry:  # the same command, CPU-sized
        cmd[cmd.index("24")] = "1"
        cmd += ["--device", "cpu", "--width", "0.125", "--batch-size", "64", "--train-subset", "256"]
    must(sh(cmd, dry), "fasttrain run resnet9")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epoch_s = [r["epoch_s"] for r in rows if r.get("epoch_s") is not None]
    out = {"command": " ".join(cmd[1:]).replace(str(ROOT) + "/", ""), "convert_s": round(convert_s, 1),
           "test_acc": summary["test_acc"], "test_acc_no_tta": summary.get("test_acc_no_tta"),
           "train_imgs_per_s": summary["train_imgs_per_s"], "train_s": summary["train_s"],
           "epoch_s_median": sorted(epoch_s)[len(epoch_s) // 2] if epoch_s else None,
           "augment_backend": summary["augment_backend"], "compile": summary["compile"],
           "compile_s": summary.get("compile_s"), "recompiles": summary.get("recompiles"),
           "amp": summary.get("amp"), "device": summary.get("device"), "run_dir": str(run_dir)}
    expected_backend = "numba" if dry else "cuda"
    checks = {f"augment backend is {expected_backend}": out["augment_backend"] == expected_backend,
              "no recompiles in the timed epochs": out["recompiles"] == 0}
    if not dry:
        checks["compile on by default"] = out["compile"] is True
    out["checks"] = checks
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        raise RuntimeError("checks failed: " + "; ".join(failed) + f" ({json.dumps(out)})")
    return out


def step_tta(dry: bool) -> dict:
    _, data = data_dirs(dry)
    out_dir = ROOT / ".data" / "gpu_check_tta"
    cmd = [sys.executable, "benchmarks/time_to_accuracy.py", "--data", str(data), "--out", str(out_dir),
           "--tag", "gpu_check", *SCRATCH_FORCE]
    if dry:
        cmd += ["--recipe", "speed94-cpu", "--seeds", "1", "--epochs", "1", "--ref-epochs", "1",
                "--ref-batch-size", "64", "--train-subset", "128", "--test-subset", "50", "--device", "cpu"]
    else:  # the references compile in torch's default mode, as ours does (max-autotune alone takes minutes)
        cmd += ["--recipe", "speed94", "--seeds", "3", "--ref-compile-mode", "default"]
    proc = sh(cmd, dry)
    reports = sorted(out_dir.glob("time_to_accuracy_*_gpu_check.json"))
    if not reports:
        must(proc, "time_to_accuracy")
        raise RuntimeError("time_to_accuracy wrote no report")
    report = json.loads(reports[-1].read_text())
    out = {"command": " ".join(cmd[1:]), "seeds": report["seeds"], "ours": report["ours"],
           "warmup_s": report["warmup_s"], "references": {
               name: {k: v for k, v in r.items() if k != "runs"} for name, r in report["references"].items()},
           "markdown": reports[-1].with_suffix(".md").read_text()}
    must(proc, "time_to_accuracy")  # a partial report (seeds cut short) is kept above
    return out


def step_augment(dry: bool) -> dict:
    out_file = ROOT / ".data" / "gpu_check_augment.json"
    cmd = [sys.executable, "benchmarks/augment_throughput.py", "--out", str(out_file), *SCRATCH_FORCE, "--iters",
           "20", "--repeats", "3"]
    if dry:
        cmd = cmd[:5] + ["--device", "cpu", "--batch-size", "256", "--size", "32", "--iters", "2", "--repeats", "1",
                         "--scenarios", "airbench"]
    must(sh(cmd, dry), "augment_throughput")
    return json.loads(out_file.read_text())


def step_gpu_decode(what: str, dry: bool) -> dict:
    out_file = ROOT / ".data" / f"gpu_check_{what}.json"
    cmd = [sys.executable, "benchmarks/gpu_decode.py", "--what", what, "--out", str(out_file), *SCRATCH_FORCE]
    must(sh(cmd + (["--dry-run"] if dry else []), dry), f"gpu_decode --what {what}")
    return json.loads(out_file.read_text())


def step_zoo(dry: bool) -> dict:
    out_file = ROOT / ".data" / "gpu_check_zoo.json"
    cmd = [sys.executable, "-m", "fasttrain", "zoo", "--measure", "--models", ZOO_MODELS, "--steps", "10",
           "--warmup", "3", "--out", str(out_file), *SCRATCH_FORCE]
    if dry:
        cmd = [sys.executable, "-m", "fasttrain", "zoo", "--measure", "--models", "resnet9", "--device", "cpu",
               "--batch-size", "8", "--steps", "1", "--warmup", "1", "--no-compile", "--out", str(out_file),
               *SCRATCH_FORCE]
    must(sh(cmd, dry), "fasttrain zoo --measure")
    return json.loads(out_file.read_text())


STEP_FUNCS: dict[str, Callable[[bool], dict]] = {
    "versions": step_versions, "gpu_tests": step_gpu_tests, "resnet9": step_resnet9, "tta": step_tta,
    "augment": step_augment, "crop_kernel": lambda dry: step_gpu_decode("kernel", dry),
    "nvjpeg": lambda dry: step_gpu_decode("nvjpeg", dry), "zoo": step_zoo,
}


# ============================================================================ the driver
def run_step(step: Step, dry: bool, limit_s: float, scratch: Path) -> StepResult:
    """The step in its own process group, killed as a whole at its limit; whatever happens, a result."""
    res = StepResult(step.name, step.title, limit_s=round(limit_s))
    result_file = scratch / f"{step.name}.json"
    result_file.unlink(missing_ok=True)
    log_file = scratch / f"{step.name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-step", step.name, "--step-out", str(result_file)]
    cmd += ["--dry-run"] if dry else []
    t0 = time.perf_counter()
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(dry), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and everything it started
            proc.wait()
            res.status, res.error = "timeout", f"did not finish within its {limit_s:.0f} s limit"
    res.seconds = round(time.perf_counter() - t0, 1)
    res.output_tail = log_file.read_text(errors="replace")[-3000:]
    if result_file.exists():
        payload = json.loads(result_file.read_text())
        res.data, error = payload.get("data") or {}, payload.get("error")
        if res.status != "timeout":
            res.status, res.error = ("failed", error) if error else ("ok", None)
    elif res.status != "timeout":
        res.status, res.error = "failed", f"exited with {proc.returncode} without a result"
    return res


def clear_killed_build_lock(dry: bool) -> str | None:
    """A build killed at its limit leaves torch's lock behind; later steps would wait on it forever."""
    proc = subprocess.run([sys.executable, "-c", "from fasttrain.cuda_ext import cache_dir; print(cache_dir())"],
                          cwd=ROOT, env=env(dry), capture_output=True, text=True, check=False)
    lock = Path(proc.stdout.strip() or "/nonexistent") / "lock"
    if lock.exists():
        lock.unlink()
        return f"removed the lock {lock} of the killed build"
    return None


def summary_line(r: StepResult) -> str:
    d = r.data
    if r.status != "ok":
        return (r.error or "")[:150]
    if r.name == "versions":
        build = d.get("extension_build_s", d.get("extension_build"))
        return (f"{d.get('gpu', 'no GPU')}, driver {d.get('driver')}, torch {d['torch']} (CUDA {d['torch_cuda']}), "
                f"Python {d['python']}; extension build {build}{' s' if isinstance(build, float) else ''}")
    if r.name == "gpu_tests":
        return f"{d['passed']} passed, {d['skipped']} skipped, {d['failures']} failed, {d['errors']} errors"
    if r.name == "resnet9":
        return (f"{100 * d['test_acc']:.2f}% test acc (TTA), {d['train_imgs_per_s']:,.0f} img/s, epoch "
                f"{d['epoch_s_median']:.2f} s, augment {d['augment_backend']}, compile {d['compile']}, "
                f"recompiles {d['recompiles']}")
    if r.name == "tta":
        parts = [f"speed94 {100 * d['ours']['acc_tta']['mean']:.2f}% in {d['ours']['total_s']['mean']:.2f} s"]
        for name, ref in d["references"].items():
            eq = ref.get("equal_accuracy")
            parts.append(f"vs {name}: {ref['total']['mean']:.2f}x total"
                         + (f", {eq['mean']:.2f}x at equal acc" if eq else ""))
        return "; ".join(parts)
    if r.name == "augment":
        best = max(d["rows"], key=lambda row: row["fused_gb_s"])
        return (f"fused up to {best['fused_gb_s']} GB/s ({best['scenario']} {best['size']}), "
                f"{best['speedup']}x the unfused ops" + (f", {best['fused_vs_copy']:.0%} of a copy"
                                                         if "fused_vs_copy" in best else ""))
    if r.name == "crop_kernel":
        return (f"{d['kernel_gb_s']} GB/s ({d['kernel_vs_copy']:.0%} of a copy's {d['copy_gb_s']} GB/s), "
                f"{d['kernel_imgs_per_s']:,} img/s at {d['res']} px ({d['what']})")
    if r.name == "nvjpeg":
        return (f"{d['imgs_per_s']:,} img/s bytes -> {d['res']} px batch (decode alone {d['decode_imgs_per_s']:,}; "
                f"{d['what']}; {d['photos']})" + (f"; DALI {d['dali_imgs_per_s']:,} img/s" if "dali_imgs_per_s" in d
                                                  else ""))
    if r.name == "zoo":
        rows = d.get("rows", [])
        speed = [f"{row['name']} " + (f"{row['speedup_vs_fp32']:.2f}x" if row.get("speedup_vs_fp32") else "-")
                 for row in rows]
        return "fast / eager fp32: " + ", ".join(speed)
    return ""


def write_results(stem: Path, meta: dict, results: list[StepResult], force: bool = False) -> None:
    """The results JSON and Markdown under the output rule (fasttrain.outputs): after the first call they are
    ours and replaced by the next."""
    from fasttrain.outputs import claim_or_exit, write_json, write_markdown

    json_target, md_target = claim_or_exit(stem.with_suffix(".json"), stem.with_suffix(".md"), option="--out",
                                           force=force)
    write_json(json_target, dict(meta, steps=[asdict(r) for r in results]))
    lines = [f"# gpu-check {meta['started']}: {meta['device']}", "",
             f"Mode: {'CPU dry run' if meta['dry_run'] else 'GPU'}; commit {meta['commit']}; total "
             f"{meta.get('total_s', '?')} s of a {meta['budget_s']:.0f} s budget.", "",
             "| step | status | seconds | limit s | result |", "|---|---|---:|---:|---|"]
    lines += [f"| {r.name} | {r.status} | {r.seconds} | {r.limit_s} | {summary_line(r).replace('|', '/')} |"
              for r in results]
    for r in results:
        if r.name == "tta" and r.status == "ok":
            lines += ["", "## Time to accuracy", "", r.data["markdown"].split("\n", 2)[-1].strip()]
    write_markdown(md_target, "\n".join(lines) + "\n")


def commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_label(dry: bool) -> str:
    if dry:
        return "cpu-dry-run"
    q = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(0) "
                        "if torch.cuda.is_available() else 'no-gpu')"], cwd=ROOT, env=env(dry),
                       capture_output=True, text=True, check=False)
    return q.stdout.strip() or "unknown-device"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN") == "1",
                    help="CPU device, tiny sizes, seconds per step (also GPU_CHECK_DRY_RUN=1)")
    ap.add_argument("--only", default=None, help=f"comma-separated steps (default: all of {[s.name for s in STEPS]})")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    ap.add_argument("--budget-s", type=float, default=None, help="the whole check's time limit (GPU: 480)")
    ap.add_argument("--force", action="store_true", help="replace result files in --out fasttrain did not write")
    ap.add_argument("--run-step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--step-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.run_step:  # inside a step's own process
        try:
            payload = {"data": STEP_FUNCS[args.run_step](args.dry_run), "error": None}
        except Exception as e:  # recorded as the step's failure; the traceback is in its log
            import traceback

            traceback.print_exc()
            payload = {"data": {}, "error": f"{type(e).__name__}: {e}"}
        args.step_out.write_text(json.dumps(payload, indent=2, default=str))
        return 0 if payload["error"] is None else 1

    dry = args.dry_run
    steps = STEPS if not args.only else [s for s in STEPS if s.name in args.only.split(",")]
    if args.only and len(steps) != len(args.only.split(",")):
        sys.exit(f"--only: unknown step in {args.only!r}; steps are {', '.join(s.name for s in STEPS)}")
    budget = args.budget_s or BUDGET_S["dry" if dry else "gpu"]
    t_start = time.perf_counter()
    started = time.strftime("%Y-%m-%d-%H%M%S")
    device = device_label(dry)
    stem = args.out / f"{started}-{re.sub(r'[^A-Za-z0-9]+', '-', device).strip('-').lower()}"
    scratch = ROOT / ".data" / "gpu_check_logs"
    scratch.mkdir(parents=True, exist_ok=True)
    meta = {"started": started, "device": device, "dry_run": dry, "budget_s": budget, "commit": commit(),
            "command": "PYTHONPATH=. python3 benchmarks/gpu_check.py" + (" --dry-run" if dry else "")}
    results = [StepResult(s.name, s.title) for s in steps]
    write_results(stem, meta, results, args.force)  # claims the paths (exit 2 if refused) before any step
    print(f"gpu-check ({'CPU dry run' if dry else device}): {len(steps)} steps, budget {budget:.0f} s; "
          f"results -> {stem}.json / .md; logs -> {scratch}", flush=True)
    for i, step in enumerate(steps):
        left = budget - (time.perf_counter() - t_start)
        limit = min(step.dry_limit_s if dry else step.limit_s, left)
        if limit < MIN_STEP_S:
            results[i].status, results[i].error = "skipped", f"only {left:.0f} s of the budget left"
        else:
            print(f"[{i + 1}/{len(steps)}] {step.title} (limit {limit:.0f} s) ...", flush=True)
            results[i] = run_step(step, dry, limit, scratch)
            if step.name == "versions" and results[i].status == "timeout" and not dry:
                results[i].error += "; " + (clear_killed_build_lock(dry) or "no lock left behind")
        print(f"    {results[i].status} in {results[i].seconds} s: {summary_line(results[i])}", flush=True)
        meta["total_s"] = round(time.perf_counter() - t_start, 1)
        write_results(stem, meta, results, args.force)  # after every step: a check cut short keeps what it measured
    print()
    print(stem.with_suffix(".md").read_text())
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
