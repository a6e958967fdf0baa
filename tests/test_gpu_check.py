"""`make gpu-check` cannot fail for an environment reason: its CPU dry run, from a fresh copy of the source
tree (what `git ls-files` lists, nothing installed) with ffcv and NVIDIA DALI unimportable, runs every step
and writes the results JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BLOCKER = REPO / "tests" / "hide_backends"  # a sitecustomize that makes ffcv and nvidia.dali unimportable
STEPS = ["versions", "gpu_tests", "resnet9", "tta", "augment", "crop_kernel", "nvjpeg", "zoo"]


def source_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = REPO / name
        if src.is_file():  # a file deleted in the working tree but not yet in the index is skipped
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_hidden_backends_are_unimportable_and_torch_is_not():
    code = ("import importlib\nfor m in ('ffcv', 'nvidia.dali'):\n    try:\n        importlib.import_module(m)\n"
            "        raise SystemExit(m + ' imported')\n    except ImportError:\n        pass\nimport torch, numpy\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(BLOCKER)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.slow
def test_dry_run_runs_every_step_from_a_fresh_copy_without_optional_backends(cifar_jpeg_slice, tmp_path):
    root = source_copy(tmp_path / "checkout")
    assert not (root / ".data").exists() and (root / "benchmarks" / "gpu_check.py").is_file()
    shutil.copytree(cifar_jpeg_slice, root / ".data" / "cifar10-jpeg")  # the carried JPEG copy, a real slice
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPU_CHECK_DRY_RUN")}
    env.update(PYTHONPATH=f"{BLOCKER}{os.pathsep}.", GPU_CHECK_DRY_RUN="1")  # as `make gpu-check` sets it
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(out)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=2700)
    reports = list(out.glob("*-cpu-dry-run.json"))
    assert len(reports) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(reports[0].read_text())
    assert report["dry_run"] and [s["name"] for s in report["steps"]] == STEPS
    failed = {s["name"]: (s["status"], s["error"], s["output_tail"][-1500:]) for s in report["steps"]
              if s["status"] != "ok"}
    assert not failed, json.dumps(failed, indent=1)
    assert proc.returncode == 0
    steps = {s["name"]: s["data"] for s in report["steps"]}
    assert steps["versions"]["torch"] and steps["versions"]["python"]
    assert steps["gpu_tests"]["errors"] == 0 and steps["gpu_tests"]["tests"] > 0
    run = steps["resnet9"]
    assert run["augment_backend"] == "numba" and run["recompiles"] == 0 and 0 <= run["test_acc"] <= 1
    assert set(steps["tta"]["references"]) == {"airbench94", "airbench94_muon"}
    assert steps["augment"]["rows"] and steps["augment"]["rows"][0]["fused_gb_s"] > 0
    assert steps["crop_kernel"]["kernel_gb_s"] > 0 and steps["crop_kernel"]["images"] > 0
    assert steps["nvjpeg"]["imgs_per_s"] > 0 and steps["nvjpeg"]["res"] == 32
    assert [r["name"] for r in steps["zoo"]["rows"]] == ["resnet9"]
    md = reports[0].with_suffix(".md").read_text()
    assert all(f"| {name} | ok |" in md for name in STEPS)
