"""A bounded kill loop: `kill -9` of a real `fasttrain convert` subprocess, during start-up and while its
decode workers run. After each kill no process of its group survives, and the output directory is
complete or absent; the next convert removes the dead one's temp directory and writes a complete dataset."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttrain.data.verify import check_dataset, is_complete

KILLS = 5


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _wait_for_workers(proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if [p for p in _group(proc.pid) if p != proc.pid]:
            return
        time.sleep(0.02)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_loop_leaves_no_orphans_and_complete_or_absent_output(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for split, n in (("train", 300), ("test", 30)):  # > 512 train images: decoded by the worker pool
        for cls in ("a", "b"):
            folder = src / split / cls
            folder.mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{k}.jpg")
    parent = tmp_path / "datasets"
    parent.mkdir()
    out = parent / "ds"
    cmd = [sys.executable, "-m", "fasttrain", "convert", "imagefolder", "--source", str(src), "--name", "t",
           "--size", "32", "--out", str(out), "--force"]
    killed_while_decoding = 0
    for i in range(KILLS):
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 3 == 0:
            time.sleep(rng.uniform(0.2, 2.0))  # during start-up (imports, scanning)
        else:
            _wait_for_workers(proc)
            killed_while_decoding += len(_group(proc.pid)) > 1
            time.sleep(rng.uniform(0.0, 0.8))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _group(proc.pid) == [], f"kill {i}: processes of the killed convert survived"
        assert not out.exists() or is_complete(out), f"kill {i}: an incomplete dataset is in place"
        assert all(f"-{proc.pid}-" in name for name in _leftovers(parent)), "an older temp dir survived"
    assert killed_while_decoding >= 1, "no kill landed while the decode workers ran"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _leftovers(parent) == [] and sorted(p.name for p in parent.iterdir()) == ["ds"]
    meta = check_dataset(out, full=True)
    assert meta["splits"]["train"]["count"] == 600 and meta["splits"]["test"]["count"] == 60


def _descendant_groups(pid: int) -> set[int]:
    """Process groups of `pid` and of every process below it (the ffcv/dali writer runs in its own group)."""
    parents: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append((int(entry), int(fields[2])))
    groups, todo = {pid}, [pid]
    while todo:
        for child, pgid in parents.get(todo.pop(), []):
            groups.add(pgid)
            todo.append(child)
    return groups


def _wait_for_writer(proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Wait until the convert's writer child (its own process group) runs; False if the convert ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(_descendant_groups(proc.pid)) > 1:
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_loop_of_the_ffcv_and_dali_writers(tmp_path):
    """`kill -9` of `convert --format ffcv|dali` while its writer (a forked child in its own process group,
    with the writer's own workers) fills the temp folder: every process of every group below it dies, the
    output is complete or absent, and the next convert in that folder removes the dead writers' temp folders."""
    pytest.importorskip("ffcv")
    rng = np.random.default_rng(1)
    src = tmp_path / "src"
    for split, n in (("train", 300), ("test", 30)):
        for cls in ("a", "b"):
            (src / split / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / split / cls / f"{k}.png")
    parent = tmp_path / "datasets"
    parent.mkdir()
    killed_while_writing = {"ffcv": 0, "dali": 0}
    for fmt, delays in (("ffcv", (0.5,)), ("dali", (0.0, 0.1))):  # ffcv starts slowly (~10 s): one kill
        out = parent / fmt
        cmd = [sys.executable, "-m", "fasttrain", "convert", "imagefolder", "--source", str(src), "--name", "k",
               "--out", str(out), "--format", fmt]
        for i, delay in enumerate(delays):
            proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_for_writer(proc)
            time.sleep(delay)
            groups = _descendant_groups(proc.pid)
            killed_while_writing[fmt] += len(groups) > 1 and any(parent.glob(f".{fmt}.tmp-{proc.pid}-*"))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10  # the writer's watcher notices its parent's death within 0.5 s
            while any(_group(g) for g in groups) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_group(g) for g in groups), f"{fmt} kill {i}: processes of the killed convert survived"
            assert not out.exists() or is_complete(out, fmt), f"{fmt} kill {i}: an incomplete dataset is in place"
    assert all(killed_while_writing.values()), f"no kill landed while a writer wrote: {killed_while_writing}"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # dali again, in the same folder
    assert done.returncode == 0, done.stderr
    assert _leftovers(parent) == [], "a dead writer's temp folder survived the next convert"
    meta = check_dataset(parent / "dali", full=True)
    assert meta["splits"]["train"]["count"] == 600
