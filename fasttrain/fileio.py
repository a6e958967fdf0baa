"""Files and folders on disk, for every part of the project (runs, datasets, exports, reports): every atomic
write, of files (temp file, fsync, rename) and directories (temp directory, fsync of every file in it,
rename), so a crash or `kill -9` leaves either the old output or the new one; and the one JSON reader.

A temporary directory is a hidden sibling of its target, `.NAME.tmp-PID-TOKEN`, holding a marker file with
the same random TOKEN, locked by its writer, until it is renamed into place; the next writer on the same
parent removes those with both proofs that a dead fasttrain writer left them (never by name alone). The
rename never replaces a folder fasttrain was not asked to replace (`atomic_directory`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: os.umask can only be read by setting it

# What a temporary directory holds until it is renamed: proof that a fasttrain writer made it, so the
# clean-up of dead writers' directories never touches a user's folder that happens to match the name.
PARTIAL_MARKER = ".fasttrain-partial"


# ----------------------------------------------------------------------------- files
@contextmanager
def atomic_file(path: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """The one atomic file write of the project: a temporary path beside `path` for the block to fill (by
    name, since some writers want a path); once the block ends the file is flushed to disk, given the user's
    usual mode and renamed into place; on any failure removed. With replace=False the rename is a no-replace
    link: a file that appeared at `path` meanwhile is kept and TargetExists raised."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp and some writers make 0600 files
        if replace:
            os.replace(tmp, path)
        else:
            _link_no_replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _link_no_replace(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)  # fails if `path` exists: the no-replace rename of a file
    except FileExistsError:
        raise TargetExists(path) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        # a file system without hard links: the check just before the rename is the best there is
        if os.path.lexists(path):
            raise TargetExists(path) from None
        os.replace(tmp, path)


def atomic_write(path: str | Path, write, *, replace: bool = True) -> None:
    """Write `path` atomically through `write(binary_file)` (see atomic_file)."""
    with atomic_file(path, replace=replace) as tmp, open(tmp, "wb") as f:
        write(f)


def write_json(path: str | Path, obj) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


class UnreadableJson(ValueError):
    """A JSON file that cannot be read, is not JSON, or does not hold an object; the message names it."""


def read_json_object(path: str | Path) -> dict:
    """The JSON object in `path`: the one reader of the project's JSON files (config.json, summary.json,
    meta.json, reports), or UnreadableJson saying what is wrong with which file (callers add what to do)."""
    try:
        value = json.loads(Path(path).read_text())
    except OSError as e:
        raise UnreadableJson(f"{path}: cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UnreadableJson(f"{path}: not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(value, dict):
        raise UnreadableJson(f"{path}: holds a JSON {type(value).__name__}, expected an object")
    return value


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch  # here, not at the top: the data layer writes through this module and `convert` never needs torch

    atomic_write(path, lambda f: torch.save(obj, f))


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
class TargetExists(FileExistsError):
    """A directory could not be published: its target path exists and may not be replaced (a folder that
    appeared while the directory was written, or one the caller did not allow replacing). Nothing in it was
    touched; `moved_to` is set only if it could not be put back after being moved aside (see the message)."""

    def __init__(self, target: Path, moved_to: Path | None = None):
        self.target, self.moved_to = target, moved_to
        where = f"; it was moved to {moved_to} and could not be put back" if moved_to else ""
        super().__init__(errno.EEXIST, f"{target} exists and was not written by this process{where}", str(target))


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _load_renameat2():
    """libc's renameat2 (Linux, glibc >= 2.28), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _load_renameat2()


def rename_noreplace(src: Path, dst: Path, *, use_renameat2: bool = True) -> None:
    """Rename the directory `src` to `dst`, raising FileExistsError if `dst` exists, whatever it is.

    Linux: one renameat2(RENAME_NOREPLACE) call, atomic. Elsewhere (or on a filesystem without the flag):
    `dst` is first claimed with mkdir, which fails if anything is there, and `src` is renamed onto that
    empty directory, which the kernel refuses if anything appeared inside it meanwhile.
    """
    if use_renameat2 and _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # EINVAL/ENOSYS: no such flag on this filesystem/kernel
            raise OSError(err, os.strerror(err), str(src), None, str(dst))  # EEXIST: a FileExistsError
    os.mkdir(dst)  # FileExistsError if anything is there
    try:
        os.rename(src, dst)  # replaces only the empty directory we just made
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):  # someone wrote into it: theirs now, left alone
            raise FileExistsError(errno.EEXIST, f"{dst} appeared while publishing", str(dst)) from e
        os.rmdir(dst)
        raise


# Temporary directories: `.NAME.tmp-PID-TOKEN` (being written) and `.NAME.old-PID-TOKEN` (a replaced
# target on its way out), TOKEN random per write. Each holds PARTIAL_MARKER with the same TOKEN, locked
# (flock) by the writer while it lives. The clean-up deletes a directory only with both proofs: the marker
# names the token of the folder's name, and no live process holds its lock. The name alone proves nothing:
# a user's `.ds.old-123` backup is left alone, and reported.
_TEMP_DIR = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-(?P<token>[0-9a-f]{16}))?$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _claim_marker(folder: Path, token: str) -> int:
    """Write PARTIAL_MARKER holding `token` into `folder` and hold an exclusive lock on it; returns its fd
    (the lock lives as long as the fd, so a killed writer's lock is gone with it)."""
    fd = os.open(folder / PARTIAL_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, token.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_dead_writers_marker(folder: Path, token: str | None) -> int | None:
    """The fd of `folder`'s marker, now locked by us, if it proves a dead fasttrain writer made `folder`:
    it names `token` and nobody holds its lock. None if there is no such proof, or the writer is alive."""
    if token is None:
        return None
    try:
        fd = os.open(folder / PARTIAL_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.read(fd, 64).decode("ascii", "replace") == token:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: the writer is alive
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _remove_tree_marker_last(folder: Path) -> None:
    """rmtree `folder`, its marker last: a clean-up cut short leaves a folder that is still provably ours."""
    for entry in folder.iterdir():
        if entry.name == PARTIAL_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (folder / PARTIAL_MARKER).unlink(missing_ok=True)
    folder.rmdir()


def remove_stale_temp_dirs(parent: Path) -> tuple[list[Path], list[Path]]:
    """Delete the temp directories in `parent` that dead fasttrain writers left (see above).

    Returns (removed, unproven): `unproven` are folders whose name looks like a temp directory of a dead
    writer but that hold no proof fasttrain made them (a user's folder, or one from an older version):
    they are left alone, for the caller to mention.
    """
    removed: list[Path] = []
    unproven: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed, unproven
    for path in sorted(entries):
        m = _TEMP_DIR.match(path.name)
        if not m or path.is_symlink() or not path.is_dir():
            continue
        fd = _lock_dead_writers_marker(path, m["token"])
        if fd is None:
            alive = int(m["pid"]) == os.getpid() or pid_alive(int(m["pid"]))
            if m["token"] is None and not alive or m["token"] is not None and not _marker_locked(path):
                unproven.append(path)
            continue
        try:
            _remove_tree_marker_last(path)
            removed.append(path)
        except OSError:
            unproven.append(path)
        finally:
            os.close(fd)
    return removed, unproven


def _marker_locked(folder: Path) -> bool:
    """Does a live process hold the lock of `folder`'s marker (a write in progress)?"""
    try:
        fd = os.open(folder / PARTIAL_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


# Who may replace what at publish time: target (absolute) -> the caller's check of the folder found there.
_REPLACEABLE: ContextVar[dict[Path, Callable[[Path], bool]]] = ContextVar("fasttrain_replaceable", default={})


@contextmanager
def replacing(target: str | Path, may_replace: Callable[[Path], bool]) -> Iterator[None]:
    """Within this block, `atomic_directory(target)` may replace a non-empty `target` it finds at publish
    time, if `may_replace(folder)` says so. The folder is moved aside first and checked there (so what is
    written to the target path after the check never lands in the folder deleted); if the check fails it is
    moved back untouched."""
    key = Path(os.path.abspath(target))
    reset = _REPLACEABLE.set({**_REPLACEABLE.get(), key: may_replace})
    try:
        yield
    finally:
        _REPLACEABLE.reset(reset)


def _publish(tmp: Path, target: Path, token: str) -> None:
    """Rename `tmp` to `target` without ever replacing what is not ours to replace (see atomic_directory)."""
    try:
        rename_noreplace(tmp, target)
        return
    except FileExistsError:
        pass
    if target.is_dir() and not target.is_symlink():
        try:
            os.rename(tmp, target)  # replaces an empty directory only; the kernel checks it atomically
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    may_replace = _REPLACEABLE.get().get(Path(os.path.abspath(target)))
    if may_replace is None:
        raise TargetExists(target)
    old = target.parent / f".{target.name}.old-{os.getpid()}-{token}"
    rename_noreplace(target, old)
    if not (old.is_dir() and not old.is_symlink() and may_replace(old)):
        try:
            rename_noreplace(old, target)
        except OSError:
            raise TargetExists(target, moved_to=old) from None
        raise TargetExists(target)
    (old / PARTIAL_MARKER).unlink(missing_ok=True)  # a marker of an earlier write: `old` passed the check
    fd = _claim_marker(old, token)  # from here on `old` is provably ours: a kill leaves it to the clean-up
    try:
        try:
            rename_noreplace(tmp, target)
        except FileExistsError:  # something appeared in the instant `target` was free: theirs, left alone
            raise TargetExists(target) from None
        fsync_path(target.parent)
        try:
            _remove_tree_marker_last(old)
        except OSError:  # the new directory is in place; `old` is provably ours: the next clean-up removes it
            pass
    finally:
        os.close(fd)


def temp_dir_for(target: Path, token: str) -> Path:
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{token}"


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `target`; when the block ends normally, fsync everything
    in it and rename it to `target`.

    The rename never replaces a folder fasttrain was not asked to replace: a missing or empty `target` is
    taken; a non-empty one (or a file, or a link) raises TargetExists, unless the caller allowed it with
    `replacing(target, check)` and the check passes on the folder found there. So a folder a user creates
    while the directory is written is never touched. On any exception the temporary directory is removed
    and `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(target.parent)
    token = secrets.token_hex(8)
    tmp = temp_dir_for(target, token)  # a new random token: no folder of that name exists
    fd = None
    try:  # any exception (a Ctrl-C too) from the moment the directory exists removes it
        tmp.mkdir()
        fd = _claim_marker(tmp, token)
        yield tmp
        fsync_tree(tmp)
        (tmp / PARTIAL_MARKER).unlink()
        _publish(tmp, target, token)
        fsync_path(target.parent)
    except BaseException:
        with signals_deferred():  # a second Ctrl-C must not leave the temporary directory half removed
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block are held and delivered (to the handlers in place
    before) when it ends, so a clean-up or a last write finishes. Outside the main thread, where handlers
    cannot be set, the block just runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(held):
            signal.raise_signal(sig)
