"""Every atomic write of the project: files (temp file, fsync, rename) and directories (temp directory,
fsync of every file in it, rename), so a crash or `kill -9` leaves either the old output or the new one.

A temporary directory is a hidden sibling of its target, `.NAME.tmp-PID`, holding a marker file until it
is renamed into place; the next writer on the same parent removes those whose process is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it

# What a temporary directory holds until it is renamed: proof that a fasttrain writer made it, so the
# clean-up of dead writers' directories never touches a user's folder that happens to match the name.
PARTIAL_MARKER = ".fasttrain-partial"
_TEMP_DIR = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


# ----------------------------------------------------------------------------- files
def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the user's usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def atomic_torch_save(obj, path: str | Path) -> None:
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's contents (a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under `root`, files first, `root` last."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                fsync_path(path)
        fsync_path(Path(dirpath))


# ----------------------------------------------------------------------------- directories
def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _ours(path: Path) -> bool:
    """A leftover temp directory fasttrain wrote: it has the marker, or it is a swapped-out fasttrain
    dataset (its meta.json names fasttrain), or it is empty."""
    if (path / PARTIAL_MARKER).is_file():
        return True
    try:
        meta = json.loads((path / "meta.json").read_text())
        return isinstance(meta, dict) and meta.get("writer") == "fasttrain"
    except (OSError, ValueError):
        return not any(path.iterdir())


def remove_stale_temp_dirs(parent: Path) -> list[Path]:
    """Delete `.NAME.tmp-PID` / `.NAME.old-PID` directories in `parent` left by processes that are gone."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for path in entries:
        m = _TEMP_DIR.match(path.name)
        if not m or path.is_symlink() or not path.is_dir():
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid) or not _ours(path):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def temp_dir_for(target: Path) -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}"


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; when the block ends normally, fsync everything
    in it and rename it to `target` (an existing `target` is swapped out, then deleted: the caller decides
    whether that is allowed). On an exception the temporary directory is removed and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(target.parent)
    tmp = temp_dir_for(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    marker = tmp / PARTIAL_MARKER
    marker.write_text(str(os.getpid()))
    try:
        yield tmp
        fsync_tree(tmp)
        marker.unlink()
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            fsync_path(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
