"""Run folders are the user's: a lock makes a second run on the same folder fail at once (a dead holder's lock
is taken over), finished and interrupted runs are refused without --resume / --force, --force replaces only
what fasttrain wrote, files fasttrain did not write are never touched, and a failed start leaves nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fasttrain.config import ConfigError, RunConfig
from fasttrain.rundisk import RunDirError
from fasttrain.rundir import LOCK_NAME, new_run_path
from fasttrain.train import train


def tiny_cfg(data: Path, out: Path, **kw) -> RunConfig:
    """2 steps per epoch on 100 images: seconds per run on one thread."""
    base = dict(model="resnet9", model_kwargs={"width": 0.25}, data=str(data), out=str(out), epochs=2,
                batch_size=50, train_subset=100, test_subset=50, schedule="constant", warmup_frac=0.0, amp="off",
                compile=False, device="cpu", threads=1, tta="none", tensorboard=False, seed=1)
    base.update(kw)
    return RunConfig(**base)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (the lock of a live run excluded)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


def user_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "plots").mkdir(exist_ok=True)
    (folder / "plots" / "mine.png").write_bytes(os.urandom(256))


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_second_run_on_a_running_folder_fails_at_once(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(summary=train(tiny_cfg(cifar_tensor_slice, out, epochs=3),
                                                                        quiet=True)))
    worker.start()
    deadline = time.monotonic() + 60
    while not (out / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(RunDirError, match=rf"another fasttrain run is using this folder \(pid {os.getpid()} on host"):
        train(tiny_cfg(cifar_tensor_slice, out), quiet=True)
    assert time.monotonic() - t0 < 5, "the second run did work before noticing the lock"
    worker.join(timeout=300)
    # the first run is whole: its own epochs in order, its summary, its checkpoint; the lock is gone
    assert first["summary"]["steps"] == 6 and epochs_logged(out) == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["steps"] == 6
    assert (out / "checkpoint.pt").is_file() and not (out / LOCK_NAME).exists()


HOLDER = """
import sys, time
from fasttrain.rundir import claim
claim(sys.argv[1])
print("claimed", flush=True)
time.sleep(600)
"""


def test_lock_of_another_process_refuses_then_is_taken_over_once_it_is_killed(cifar_tensor_slice, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "claimed"
        with pytest.raises(RunDirError, match=rf"pid {holder.pid} on host"):
            train(tiny_cfg(cifar_tensor_slice, out), quiet=True)
        assert not (out / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # kill -9 left its lock file behind: stale, its flock died with it
    summary = train(tiny_cfg(cifar_tensor_slice, out, epochs=1), quiet=False)
    assert summary["steps"] == 2
    printed = capsys.readouterr().out
    assert f"taking over a stale lock (pid {holder.pid} on host" in printed
    assert f"run folder: {out}" in printed  # printed at the start and in the end
    assert not (out / LOCK_NAME).exists()


def test_finished_and_interrupted_runs_are_refused_without_force(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1), quiet=True)
    before = snapshot(out)
    with pytest.raises(RunDirError, match="holds a finished run .* pass --force"):
        train(tiny_cfg(cifar_tensor_slice, out, lr=0.1), quiet=True)
    assert snapshot(out) == before
    (out / "summary.json").unlink()  # now it looks interrupted: checkpoint, no summary
    before = snapshot(out)
    with pytest.raises(RunDirError, match=f"holds an interrupted run .* --resume {out}"):
        train(tiny_cfg(cifar_tensor_slice, out, lr=0.1), quiet=True)
    assert snapshot(out) == before


def test_force_replaces_only_what_fasttrain_wrote(cifar_tensor_slice, tmp_path):
    out = tmp_path / "run"
    user_files(out)
    mine = snapshot(out)
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1, val_split=20), quiet=True)  # writes best.pt too
    assert (out / "best.pt").is_file()
    assert {k: v for k, v in snapshot(out).items() if k in mine} == mine
    summary = train(tiny_cfg(cifar_tensor_slice, out, epochs=1, force=True), quiet=True)  # no val split
    assert summary["val_samples"] == 0
    assert not (out / "best.pt").exists(), "an output of the replaced run survived --force"
    assert {k: v for k, v in snapshot(out).items() if k in mine} == mine
    assert json.loads((out / "config.json").read_text())["force"] is False  # an action, not a setting


def test_files_named_like_ours_in_a_foreign_folder_are_never_overwritten(cifar_tensor_slice, tmp_path):
    out = tmp_path / "project"
    user_files(out)
    (out / "config.json").write_text('{"learning_rate": 3}\n')  # the user's own config, not a run's
    (out / "metrics.csv").write_text("a,b\n1,2\n")
    before = snapshot(out)
    for force in (False, True):
        with pytest.raises(RunDirError, match="holds config.json, metrics.csv but no fasttrain run config"):
            train(tiny_cfg(cifar_tensor_slice, out, force=force), quiet=True)
        assert snapshot(out) == before
    with pytest.raises(RunDirError, match="converted dataset"):
        train(tiny_cfg(cifar_tensor_slice, cifar_tensor_slice), quiet=True)


def test_failed_start_leaves_no_folder(cifar_tensor_slice, tmp_path):
    out = tmp_path / "runs" / "new"
    with pytest.raises(Exception, match="no such directory"):  # no dataset there: fails after the claim
        train(tiny_cfg(tmp_path / "no-such-data", out), quiet=True)
    assert not (tmp_path / "runs").exists(), "a failed start left a folder behind"
    # in a folder of the user's: only what the run wrote goes, the folder and the user's files stay
    existing = tmp_path / "mine"
    user_files(existing)
    before = snapshot(existing)
    with pytest.raises(Exception, match="no such directory"):
        train(tiny_cfg(tmp_path / "no-such-data", existing), quiet=True)
    assert snapshot(existing) == before and not (existing / LOCK_NAME).exists()
    # a refused option (fp16 on a CPU: emulated, ~1000x slower) also starts nothing
    with pytest.raises(ConfigError, match="--amp: fp16 on a CPU"):
        train(tiny_cfg(cifar_tensor_slice, out, amp="fp16"), quiet=True)
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_finished_out_and_sigterm_during_setup_cleans_up(cifar_tensor_slice, tmp_path):
    """Through the command line: a finished --out is refused with exit 2 and one line; SIGTERM before the
    first checkpoint ends the run (exit 143) without leaving a folder."""
    out = tmp_path / "run"
    train(tiny_cfg(cifar_tensor_slice, out, epochs=1), quiet=True)
    args = [sys.executable, "-m", "fasttrain", "run", "resnet9", "--width", "0.25", "--data", str(cifar_tensor_slice),
            "--device", "cpu", "--amp", "off", "--no-compile", "--threads", "1", "--train-subset", "100",
            "--batch-size", "50", "--epochs", "50", "--tta", "none", "--no-tensorboard"]
    done = subprocess.run([*args, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds a finished run" in done.stderr and "Traceback" not in done.stderr
    fresh = tmp_path / "fresh"
    proc = subprocess.Popen([*args, "--out", str(fresh)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("run folder: ")  # claimed; the first epoch has not ended
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert time.monotonic() - t0 < 10, "SIGTERM was not honoured within seconds"
    assert not fresh.exists(), f"the stopped start left {sorted(p.name for p in fresh.iterdir())}"


def test_default_run_folders_of_the_same_second_differ(tmp_path):
    first = new_run_path("resnet9", tmp_path)
    first.mkdir()
    second = new_run_path("resnet9", tmp_path)
    assert second != first and not second.exists()
