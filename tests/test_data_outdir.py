"""`convert` never deletes or overwrites what it did not write: each data-loss reproduction, with the
user's files checked byte for byte afterwards; temp directories of killed converts are cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fasttrain.data.convert import convert
from fasttrain.data.errors import DatasetError
from fasttrain.data.verify import is_complete
from fasttrain.fileio import PARTIAL_MARKER

QUIET = dict(log=lambda s: None)


def image_folder(root: Path, per_class: int = 3, classes=("cat", "dog"), size: int = 8) -> Path:
    """A tiny <split>/<class>/<n>.png tree of random images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in classes:
            for k in range(per_class):
                path = root / split / cls / f"{k}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (or root itself) -> its bytes; symlinks by target."""
    if root.is_file():
        return {".": root.read_bytes()}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_default_out_never_deletes_the_source(tmp_path, monkeypatch):
    """The reproduction: `convert imagefolder --source data/photos --name photos` in proj/ (default --out
    data/photos is the source itself)."""
    proj = tmp_path / "proj"
    photos = image_folder(proj / "data" / "photos")
    before = snapshot(photos)
    monkeypatch.chdir(proj)
    with pytest.raises(DatasetError, match=r"--out data/photos: is the --source"):
        convert("imagefolder", source="data/photos", name="photos", **QUIET)
    with pytest.raises(DatasetError, match="is the --source"):
        convert("imagefolder", source="data/photos", name="photos", force=True, **QUIET)
    assert snapshot(photos) == before
    assert sorted(p.name for p in (proj / "data").iterdir()) == ["photos"]


@pytest.mark.parametrize("case", ["foreign_dir", "foreign_dir_force", "file", "under_file", "cwd", "cwd_parent",
                                  "inside_source", "contains_source", "dataset_plus_user_file", "symlink"])
def test_out_directories_that_are_refused(case, tmp_path, monkeypatch):
    src = image_folder(tmp_path / "src")
    monkeypatch.chdir(tmp_path)
    force = case.endswith("_force") or case == "dataset_plus_user_file"
    expect = {"foreign_dir": "not a fasttrain dataset", "foreign_dir_force": "not a fasttrain dataset",
              "file": "is a file", "under_file": "is a file, not a directory", "cwd": "current directory",
              "cwd_parent": "current directory", "inside_source": "inside the --source",
              "contains_source": "contains it", "dataset_plus_user_file": "did not write",
              "symlink": "symbolic link"}[case]
    if case.startswith("foreign_dir"):
        out = tmp_path / "victim"
        out.mkdir()
        (out / "notes.txt").write_text("my notes")
    elif case == "file":
        out = tmp_path / "victim.txt"
        out.write_text("precious")
    elif case == "under_file":
        (tmp_path / "afile").write_text("precious")
        out = tmp_path / "afile" / "sub"
    elif case == "cwd":
        out = Path(".")
    elif case == "cwd_parent":
        (tmp_path / "deeper").mkdir()
        monkeypatch.chdir(tmp_path / "deeper")
        out = Path("..")
    elif case == "inside_source":
        out = src / "train" / "converted"
    elif case == "contains_source":
        out = tmp_path
    elif case == "dataset_plus_user_file":
        out = convert("imagefolder", source=src, name="t", out=tmp_path / "ds", **QUIET)
        (out / "notes.txt").write_text("mine")
    else:
        (tmp_path / "real").mkdir()
        out = tmp_path / "link"
        out.symlink_to(tmp_path / "real")
    watched = tmp_path if case not in ("cwd", "cwd_parent", "contains_source") else src
    before = snapshot(watched)
    with pytest.raises(DatasetError, match=expect) as err:
        convert("imagefolder", source=src, name="t", out=out, force=force, **QUIET)
    assert "--out" in str(err.value)
    assert snapshot(watched) == before, "the user's files changed"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no read-only directory to test")
def test_read_only_parent_is_refused(tmp_path):
    src = image_folder(tmp_path / "src")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DatasetError, match="not writable"):
            convert("imagefolder", source=src, name="t", out=ro / "ds", **QUIET)
    finally:
        ro.chmod(0o755)


def test_empty_dir_is_written_and_a_fasttrain_dataset_reused_or_replaced(tmp_path):
    src = image_folder(tmp_path / "src")
    out = tmp_path / "empty"
    out.mkdir()
    convert("imagefolder", source=src, name="t", out=out, **QUIET)
    assert is_complete(out) and json.loads((out / "meta.json").read_text())["writer"] == "fasttrain"
    logs: list[str] = []
    convert("imagefolder", source=src, name="t", out=out, log=logs.append)
    assert any("reusing" in m for m in logs)
    # another request at the same place: refused without --force, replaced with it
    with pytest.raises(DatasetError, match="from another request"):
        convert("imagefolder", source=src, name="other", out=out, **QUIET)
    convert("imagefolder", source=src, name="other", out=out, force=True, **QUIET)
    assert json.loads((out / "meta.json").read_text())["name"] == "other"
    # an incomplete copy of the same request is rebuilt (it is fasttrain's own)
    (out / "train_images.npy").write_bytes((out / "train_images.npy").read_bytes()[:-10])
    logs.clear()
    convert("imagefolder", source=src, name="other", out=out, log=logs.append)
    assert any("incomplete" in m for m in logs) and is_complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "src"]


def test_a_different_dataset_is_not_reused(tmp_path):
    """The reproduction: `convert cifar100 --source /nonexistent --out c10` "reused" a CIFAR-10 directory."""
    from test_convert import make_python_tarball

    tarball = tmp_path / "c10.tar.gz"
    make_python_tarball(tarball, np.random.default_rng(0))
    c10 = convert("cifar10", source=tarball, out=tmp_path / "c10", **QUIET)
    before = snapshot(c10)
    with pytest.raises(DatasetError, match="already holds a tensor dataset 'cifar10'"):
        convert("cifar100", source="/nonexistent", out=c10, **QUIET)
    other = tmp_path / "other.tar.gz"
    make_python_tarball(other, np.random.default_rng(1))
    with pytest.raises(DatasetError, match="from another request"):  # same dataset, another source
        convert("cifar10", source=other, out=c10, **QUIET)
    assert snapshot(c10) == before


def test_legacy_dataset_is_recognised_as_fasttrain(tmp_path):
    """Datasets written before meta.json had "writer" are still fasttrain's (reused; --force replaces)."""
    src = image_folder(tmp_path / "src")
    out = convert("imagefolder", source=src, name="t", out=tmp_path / "ds", **QUIET)
    meta = json.loads((out / "meta.json").read_text())
    for key in ("writer", "request"):
        del meta[key]
    (out / "meta.json").write_text(json.dumps(meta))
    logs: list[str] = []
    convert("imagefolder", source=src, name="t", out=out, log=logs.append)
    assert any("reusing" in m for m in logs)
    convert("imagefolder", source=src, name="t", out=out, force=True, **QUIET)
    assert json.loads((out / "meta.json").read_text())["writer"] == "fasttrain"


def killed_writer(target: Path) -> Path:
    """The temp directory a writer killed by SIGKILL inside `fileio.atomic_directory(target)` leaves."""
    code = ("import os, signal, sys\nfrom fasttrain.fileio import atomic_directory\n"
            "with atomic_directory(sys.argv[1]) as tmp:\n"
            "    (tmp / 'train_images.npy').write_bytes(b'x' * 100)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
    assert proc.wait(timeout=120) == -signal.SIGKILL
    (left,) = target.parent.glob(f".{target.name}.tmp-{proc.pid}-*")
    return left


def test_stale_temp_dirs_of_dead_writers_are_removed(tmp_path):
    """Only a folder with both proofs goes: the marker naming the token of its name, and no live lock."""
    src = image_folder(tmp_path / "src")
    stale = killed_writer(tmp_path / "ds")
    pid = dead_pid()
    users = tmp_path / f".mine.tmp-{pid}"  # the name pattern of an older version, but no proof: kept
    users.mkdir()
    (users / "keep.txt").write_text("keep")
    (users / PARTIAL_MARKER).write_text(str(pid))
    copied = tmp_path / f"{stale.name[:-16]}{'0' * 16}"  # a look-alike name whose marker names another token
    copied.mkdir()
    (copied / PARTIAL_MARKER).write_text("f" * 16)
    logs: list[str] = []
    convert("imagefolder", source=src, name="t", out=tmp_path / "ds", log=logs.append)
    assert not stale.exists() and copied.exists() and (users / "keep.txt").read_text() == "keep"
    assert any(f"left {users} alone" in m for m in logs) and any(f"left {copied} alone" in m for m in logs)


def test_cli_refusal_is_one_line_and_keeps_the_files(tmp_path):
    src = image_folder(tmp_path / "src")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("my notes")
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "convert", "imagefolder", "--source", str(src),
                           "--name", "t", "--out", str(victim), "--force"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--out" in proc.stderr and "notes.txt" in proc.stderr
    assert (victim / "notes.txt").read_text() == "my notes" and len(list(victim.iterdir())) == 1
