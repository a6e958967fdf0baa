"""A written directory is published without ever replacing or deleting a folder fasttrain did not write:
a folder the user creates while `convert` runs is left byte for byte and the convert answers one error
line; a user's folder named like a leftover temp folder is never removed by its name."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_outdir import dead_pid, image_folder, killed_writer, snapshot

from fasttrain import fileio
from fasttrain.data.convert import convert
from fasttrain.fileio import TargetExists, atomic_directory, rename_noreplace, replacing

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Linux renameat2")
CLI = [sys.executable, "-m", "fasttrain"]


def temp_names(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def user_files(folder: Path) -> dict[str, bytes]:
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_bytes(b"my notes\n\x00\xff")
    (folder / "sub" / "data.csv").write_bytes(b"a,b\n1,2\n")
    return snapshot(folder)


@pytest.mark.parametrize("use_renameat2", [True, False], ids=["renameat2", "mkdir_claim"])
def test_rename_noreplace_refuses_any_existing_target(tmp_path, use_renameat2):
    if use_renameat2 and fileio._RENAMEAT2 is None:
        pytest.skip("this libc has no renameat2")
    src = tmp_path / "src"
    src.mkdir()
    (src / "x").write_text("new")
    for kind in ("empty_dir", "full_dir", "file", "link"):
        dst = tmp_path / kind
        if kind == "file":
            dst.write_text("mine")
        elif kind == "link":
            dst.symlink_to(tmp_path / "nowhere")
        else:
            dst.mkdir()
            if kind == "full_dir":
                (dst / "keep").write_text("mine")
        with pytest.raises(FileExistsError):
            rename_noreplace(src, dst, use_renameat2=use_renameat2)
        assert (src / "x").read_text() == "new"
    assert (tmp_path / "full_dir" / "keep").read_text() == "mine" and (tmp_path / "file").read_text() == "mine"
    rename_noreplace(src, tmp_path / "free", use_renameat2=use_renameat2)
    assert (tmp_path / "free" / "x").read_text() == "new" and not src.exists()


def test_a_folder_that_appears_while_writing_is_never_replaced(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(TargetExists):
        with atomic_directory(target) as tmp:
            (tmp / "meta.json").write_text("{}")
            before = user_files(target)
    assert snapshot(target) == before and temp_names(tmp_path) == []
    # allowed to replace, but the check run on the folder found at publish time says no: still untouched
    with pytest.raises(TargetExists), replacing(target, lambda folder: False):
        with atomic_directory(target) as tmp:
            (tmp / "meta.json").write_text("{}")
    assert snapshot(target) == before and temp_names(tmp_path) == []
    # allowed and the check passes: replaced, the old folder removed
    with replacing(target, lambda folder: sorted(p.name for p in folder.iterdir()) == ["notes.txt", "sub"]):
        with atomic_directory(target) as tmp:
            (tmp / "meta.json").write_text("{}")
    assert snapshot(target) == {"meta.json": b"{}"} and temp_names(tmp_path) == []
    # an empty folder that appeared holds nothing to lose: taken
    shutil.rmtree(target)
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
        target.mkdir()
    assert snapshot(target) == {"a": b"1"}


def _group(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


@pytest.mark.slow
def test_user_folder_created_while_convert_decodes_is_kept_byte_for_byte(tmp_path):
    """`convert --out OUT` with OUT absent at the start; the user makes OUT/notes.txt and OUT/sub/data.csv
    while the decode workers run (its main process is stopped with SIGSTOP meanwhile, so the files are
    there before it could finish): exit 2, one error line, the user's files byte for byte, no temp folder left."""
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    for split, n in (("train", 300), ("test", 10)):  # > 512 images in train: decoded by the worker pool
        for cls in ("a", "b"):
            (src / split / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src / split / cls / f"{k}.png")
    out = tmp_path / "OUT"
    proc = subprocess.Popen([*CLI, "convert", "imagefolder", "--source", str(src), "--name", "m", "--out", str(out)],
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(_group(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)  # the convert's main process only: it alone publishes
        try:
            assert proc.poll() is None and len(_group(proc.pid)) >= 2, "the convert was not decoding"
            before = user_files(out)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 2, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out") and "Traceback" not in stderr, stderr
    assert "fasttrain did not write" in lines[0] and "choose a new --out" in lines[0]
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT", "src"]


@pytest.mark.slow
def test_look_alike_backup_folder_is_kept_and_reported(tmp_path):
    """A user's own `.ds.old-<dead pid>` holding a copy of a fasttrain dataset plus a README survives the
    next convert into that folder byte for byte (and is mentioned); a real killed writer's temp folder goes."""
    src = image_folder(tmp_path / "src")
    parent = tmp_path / "datasets"
    convert("imagefolder", source=src, name="m", out=parent / "first", log=lambda s: None)
    backup = parent / f".ds.old-{dead_pid()}"
    shutil.copytree(parent / "first", backup)
    (backup / "README-my-backup.txt").write_text("my backup of the dataset, keep it\n")
    shutil.rmtree(parent / "first")
    before = snapshot(backup)
    stale = killed_writer(parent / "ds")
    done = subprocess.run([*CLI, "convert", "imagefolder", "--source", str(src), "--name", "m",
                           "--out", str(parent / "ds")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert snapshot(backup) == before and not stale.exists()
    assert f"left {backup} alone" in done.stdout and "delete it yourself if it is not yours" in done.stdout
    assert sorted(p.name for p in parent.iterdir()) == [backup.name, "ds"]


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs remounted read-only: read-only even for root (a chmod is not). Skips where mounting is not
    permitted (not root, or a container without CAP_SYS_ADMIN)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()}): needs root with CAP_SYS_ADMIN")
    try:
        (mnt / "old").mkdir()
        (mnt / "old" / "notes.txt").write_text("mine")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_read_only_out_is_refused_in_one_line_even_as_root(tmp_path, read_only_mount):
    from test_error_table import check_one_error_line
    from typer.testing import CliRunner

    from fasttrain.cli import app

    src = image_folder(tmp_path / "src")
    before = snapshot(read_only_mount)
    for out in (read_only_mount / "ds", read_only_mount / "old" / "ds"):
        res = CliRunner().invoke(app, ["convert", "imagefolder", "--source", str(src), "--name", "t", "--out", str(out)])
        line = check_one_error_line(res.exit_code, res.stderr, res.output)
        assert f"--out {out}" in line and "is not writable" in line and "choose a directory you can write to" in line
    assert snapshot(read_only_mount) == before
