"""A bounded kill loop for `fasttrain run`: `kill -9` at random moments (start-up, mid-epoch, between
epochs). After each kill no process of the run survives, `checkpoint.pt` is absent or loads whole, and the
next `--resume` (or, when the run died before its first checkpoint, a fresh start on the same --out) takes
the dead run's lock over; the last one finishes with a summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fasttrain import checkpoint as ckpt_io

KILLS = 4


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _run(data: Path, out: Path, resume: bool) -> subprocess.Popen:
    common = ["--device", "cpu", "--threads", "1", "--no-compile", "--amp", "off", "--no-tensorboard"]
    args = (["run", "--resume", str(out)] if resume else
            ["run", "resnet9", "--width", "0.25", "--data", str(data), "--out", str(out), "--epochs", "8",
             "--batch-size", "50", "--train-subset", "200", "--test-subset", "50", "--tta", "none",
             "--schedule", "constant", "--seed", "1", *common])
    return subprocess.Popen([sys.executable, "-m", "fasttrain", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_loop_leaves_a_whole_checkpoint_or_none_and_resume_finishes(cifar_tensor_slice, tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    ckpt = out / "checkpoint.pt"
    landed = after_a_save = 0  # kills that hit a live run; of those, kills after the run saved a checkpoint
    for k in range(KILLS):
        saved_before = ckpt.stat().st_mtime_ns if ckpt.is_file() else None
        proc = _run(cifar_tensor_slice, out, resume=ckpt.is_file())
        # Kill points follow the run's progress, not the clock (a fast machine would finish the run between
        # timed kills): even kills land in start-up (imports, numba) or the first epoch, at a random moment
        # but no later than this process's first checkpoint; odd kills come just after that checkpoint,
        # inside the next epoch. Each process gets at most about one epoch further.
        deadline = time.monotonic() + (float(rng.uniform(0.5, 4.0)) if k % 2 == 0 else 300)
        while proc.poll() is None and time.monotonic() < deadline and (
                not ckpt.is_file() or ckpt.stat().st_mtime_ns == saved_before):
            time.sleep(0.02)
        if k % 2 == 1:
            time.sleep(float(rng.uniform(0.0, 0.3)))
        if proc.poll() is not None:  # finished before the kill: nothing left to kill
            break
        saved = ckpt.is_file() and ckpt.stat().st_mtime_ns != saved_before
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.2)
        assert not _alive(proc.pid), f"kill {k}: the run survived"
        landed, after_a_save = landed + 1, after_a_save + saved
        if ckpt.is_file():
            state = ckpt_io.load(ckpt)  # whole: an atomic rename, never half a file
            assert "model" in state
    # the loop proved something: most kills hit a live run, and at least one came after a save, so a
    # --resume from a checkpoint written by a killed process is exercised below
    assert landed >= KILLS - 1 and after_a_save >= 1, (landed, after_a_save)
    if not (out / "summary.json").is_file():  # a kill can land after the summary, while the process exits
        proc = _run(cifar_tensor_slice, out, resume=(out / "checkpoint.pt").is_file())
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 8 and 0 <= summary["test_acc"] <= 1
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 9)), epochs  # every epoch once, in order, across the kills
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "a killed write's temp file stayed"
