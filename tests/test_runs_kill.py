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
            ["run", "resnet9", "--width", "0.25", "--data", str(data), "--out", str(out), "--epochs", "6",
             "--batch-size", "50", "--train-subset", "200", "--test-subset", "50", "--tta", "none",
             "--schedule", "constant", "--seed", "1", *common])
    return subprocess.Popen([sys.executable, "-m", "fasttrain", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_loop_leaves_a_whole_checkpoint_or_none_and_resume_finishes(cifar_tensor_slice, tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "run"
    for k in range(KILLS):
        proc = _run(cifar_tensor_slice, out, resume=(out / "checkpoint.pt").is_file())
        time.sleep(float(rng.uniform(4.0, 12.0)))  # start-up (imports, numba) or inside an epoch
        if proc.poll() is not None:  # finished before the kill: the loop has nothing more to prove
            break
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        time.sleep(0.2)
        assert not _alive(proc.pid), f"kill {k}: the run survived"
        if (out / "checkpoint.pt").is_file():
            state = ckpt_io.load(out / "checkpoint.pt")  # whole: an atomic rename, never half a file
            assert "model" in state
    if not (out / "summary.json").is_file():  # a kill can land after the summary, while the process exits
        proc = _run(cifar_tensor_slice, out, resume=(out / "checkpoint.pt").is_file())
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 6 and 0 <= summary["test_acc"] <= 1
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 7)), epochs  # every epoch once, in order, across the kills
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")], "a killed write's temp file stayed"
