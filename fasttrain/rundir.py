"""The run folder's lifecycle: claimed at start, released at exit, never someone else's files touched.

A run folder (`--out DIR`) belongs to the user. fasttrain writes only the files it knows by name
(RUN_OUTPUTS) and only into a folder that is new, empty, holds unrelated files, or holds a fasttrain run
that may be replaced:

    what DIR holds                        run --out DIR        --resume DIR       --force
    nothing / only other files            train                refused            train
    a run that never saved a checkpoint   train (replaced)     refused            train
    an interrupted run (checkpoint.pt)    refused              continue           replaced
    a finished run (summary.json)         refused              refused (*)        replaced
    a running run (live lock)             refused              refused            refused
    a converted dataset, or files named   refused              refused            refused
    like ours that are not a run's
    (*) unless --epochs extends the schedule (fasttrain.extend).

`--force` removes only RUN_OUTPUTS (and TensorBoard's tb/ event files): a user's notes.txt beside them stays
byte-identical. A failed start (an error before the first checkpoint) removes what this run wrote and the
folders it created, so `fasttrain report runs/*` never meets a folder holding only config.json.

The lock is `DIR/run.lock`: created with O_CREAT|O_EXCL, holding the owner's pid and host, and held with
flock(2) for the run's lifetime. The kernel drops the flock when its process dies (even by kill -9), so a
lock file nobody holds is stale by definition, whatever pid it names (pids are reused): it is taken over
with a message. A second run on the same folder fails at once, naming the holder's pid and host.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import CHECKPOINT_NAME
from .config import ConfigError, RunConfig
from .data.verify import dataset_identity
from .extend import check_extension
from .models.user_models import absolute_model_name, is_file_model
from .rundisk import RunDirError, check_run_dir
from .words import spelled, switch
from .runtime import resolve_compile
from .fileio import UnreadableJson, read_json_object, write_json
from .choices import amp_name

LOCK_NAME = "run.lock"
SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.json"
# every file a run writes (classification and retrieval), by name: --force and a failed start remove these
# and nothing else
RUN_OUTPUTS = (
    CONFIG_NAME, "metrics.jsonl", "metrics.csv", CHECKPOINT_NAME, "best.pt", SUMMARY_NAME, "curves.png",
    "confusion.json", "confusion.png", "lr.csv", "lr.png", "backbone.pt", "recall.json",
)
TENSORBOARD_DIR = "tb"


# ============================================================================ the claim
class RunFolder:
    """A claimed run folder: the lock is held until `release`."""

    def __init__(self, path: Path, lock_fd: int, created: list[Path], resume: bool):
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._created = created  # folders this run made (parents first), removed again after a failed start
        self.resume = resume

    def release(self, *, failed: bool) -> None:
        """Unlocks; after a failed fresh start that saved no checkpoint, also removes what the run wrote."""
        if self._lock_fd is None:
            return
        failed_start = failed and not self.resume and not (self.path / CHECKPOINT_NAME).exists()
        if failed_start:
            _remove_outputs(self.path)
        (self.path / LOCK_NAME).unlink(missing_ok=True)  # while still holding the flock: see _take_lock
        os.close(self._lock_fd)
        self._lock_fd = None
        if failed_start:
            _remove_created(self._created)


_active: threading.local = threading.local()


def releases_run_folder(fn: Callable) -> Callable:
    """Decorates a trainer: the run folder that `claim` takes during the call is released when it returns
    or raises (a failed start cleaned up), and SIGTERM meanwhile ends the run through the same path."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        outer = getattr(_active, "folders", None)
        _active.folders = []
        previous = _exit_on_sigterm()
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            for folder in _active.folders:
                folder.release(failed=failed)
            _active.folders = outer

    return wrapper


def _exit_on_sigterm():
    """Until the loop installs its own stop handler (a checkpoint, then exit), SIGTERM raises SystemExit(143)
    instead of killing the process outright, so a failed start is still cleaned up and the lock released.
    Returns the previous handler (None outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def new_run_path(model: str, parent: str | Path = "runs") -> Path:
    """The default run folder, runs/<model>-<time>, with -2, -3 ... when a run started in the same second (a
    model from a file: runs/<ClassName>-<time>)."""
    label = model.rsplit(":", 1)[1] if is_file_model(model) else model
    base = Path(parent) / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def claim(path: str | Path, *, resume: bool = False, force: bool = False, epochs: float | None = None,
          init_from: str | None = None, log: Callable[[str], None] | None = None) -> RunFolder:
    """Creates or checks the run folder, proves it writable, takes its lock and applies the table in this
    module's docstring. Raises RunDirError naming --out / --resume, what is there and what to do."""
    path = Path(path)
    option = "--resume" if resume else "--out"
    if force and init_from and Path(os.path.abspath(init_from)).is_relative_to(os.path.abspath(path)):
        raise RunDirError(f"{spelled('--init-from', init_from)} lies in {spelled('--out', path)}, whose files "
                          f"{switch('--force')} replaces; copy the checkpoint elsewhere first, or choose another "
                          f"{spelled('--out')}")
    if resume and not path.is_dir():
        raise RunDirError(f"--resume {path}: no such folder; pass the folder of a run started by `fasttrain run`")
    if (path / "meta.json").is_file():
        raise RunDirError(f"{spelled(option, path)}: this is a converted dataset, not a run folder; choose another "
                          f"{spelled('--out')}")
    created = _missing_folders(path)
    try:
        check_run_dir(path, option=option)  # creates it; write + fsync probe
        fd = _take_lock(path, option, log)
    except BaseException:
        _remove_created(created)
        raise
    folder = RunFolder(path, fd, created, resume)
    _remove_dead_temp_files(path)
    try:
        _check_contents(path, option, resume=resume, force=force, epochs=epochs)
    except BaseException:
        folder.release(failed=False)
        _remove_created(created)
        raise
    if force and not resume:
        _remove_outputs(path)
    if getattr(_active, "folders", None) is not None:
        _active.folders.append(folder)
    if log is not None:
        log(f"run folder: {path}" + (" (resumed)" if resume else ""))
    return folder


def _check_contents(path: Path, option: str, *, resume: bool, force: bool, epochs: float | None) -> None:
    saved = _read_run_config(path / CONFIG_NAME) if (path / CONFIG_NAME).is_file() else None
    finished = (path / SUMMARY_NAME).is_file()
    if resume:  # the checkpoint's own config is checked on restore; a finished run with unchanged epochs is
        # refused by checkpoint.check_resumable
        if saved is not None and epochs is not None and epochs != saved["epochs"]:
            _extend(path, saved, epochs, finished=finished)
        return
    ours = [name for name in RUN_OUTPUTS if (path / name).exists()]
    if ours and saved is None:
        raise RunDirError(
            f"{spelled(option, path)}: holds {', '.join(ours[:4])} but no fasttrain run config; fasttrain will not "
            f"overwrite files it did not write (not even with {switch('--force')}); choose another {spelled('--out')}")
    checkpoint = (path / CHECKPOINT_NAME).is_file()
    if force or not (finished or checkpoint):
        return
    if finished:
        raise RunDirError(
            f"{spelled(option, path)}: holds a finished run ({SUMMARY_NAME}{_result_of(path)}); choose another "
            f"{spelled('--out')}, or pass {switch('--force')} to replace the files fasttrain wrote there")
    raise RunDirError(
        f"{spelled(option, path)}: holds an interrupted run ({CHECKPOINT_NAME}); continue it with "
        f"`fasttrain run --resume {path}`, or pass {switch('--force')} to replace the files fasttrain wrote there")


def _extend(path: Path, saved: dict, epochs: float, *, finished: bool) -> None:
    """`--resume DIR --epochs N`: checks that the schedule allows it (fasttrain.extend), records the new
    length in config.json and, for a finished run, removes its summary (unfinished again until the new end)."""
    head = f"--resume {path} --epochs {epochs:g}"
    if finished:
        summary = _read_json(path / SUMMARY_NAME) or {}
        stopped = (summary.get("monitor") or {}).get("stopped_epoch")
        if stopped is not None:
            raise RunDirError(f"{head}: the run stopped early at epoch {stopped} (no improvement of its "
                              f"monitored metric); more epochs would stop again at once")
        if float(saved["epochs"]) != int(saved["epochs"]):
            raise RunDirError(f"{head}: the run ended inside epoch {int(saved['epochs']) + 1} (--epochs "
                              f"{saved['epochs']:g}); only runs of whole epochs can be extended")
    try:
        check_extension(saved, epochs)
    except ConfigError as e:
        raise RunDirError(f"--resume {path}: {e}") from None
    write_json(path / CONFIG_NAME, {**saved, "epochs": epochs})
    if finished:
        (path / SUMMARY_NAME).unlink()


def _result_of(path: Path) -> str:
    acc = (_read_json(path / SUMMARY_NAME) or {}).get("test_acc")
    return f", test accuracy {100 * acc:.2f}%" if isinstance(acc, (int, float)) else ""


# ============================================================================ what config.json records
def resolve_config(cfg: RunConfig, meta: dict, *, out_dir: Path, device: torch.device,
                   amp_dtype: torch.dtype | None, world_size: int, resume: bool) -> None:
    """The one place a validated config changes: every choice made at run time replaced by what was chosen,
    so config.json says what ran. The run folder and compile (on for CUDA, off on a CPU) always; on resume
    nothing else (the saved config is resolved already) but a check that the dataset is the one the run
    started on. A new run also gets amp as bf16 | fp16 | off, the thread count used, monitor None without a
    val split, the data, model-file and init paths absolute (a resume from another working directory finds
    the same files), the device (its type under DDP, where each process picks cuda:LOCAL_RANK) and the
    dataset's identity."""
    cfg.out = str(out_dir)
    cfg.compile = resolve_compile(cfg.compile, device)
    if resume:
        check_same_dataset(cfg, meta)
        return
    cfg.device = str(device) if world_size == 1 else device.type
    cfg.amp = amp_name(amp_dtype)
    cfg.threads = torch.get_num_threads()
    cfg.monitor = (cfg.monitor or "val_acc") if cfg.val_split else None
    cfg.data = os.path.abspath(cfg.data)
    cfg.model = absolute_model_name(cfg.model)  # a model file's path, for a resume from elsewhere
    if cfg.init_from is not None:
        cfg.init_from = os.path.abspath(cfg.init_from)
    cfg.data_identity = dataset_identity(meta)
    cfg.force = False  # an action on this folder, not a setting: a copied config.json must not carry it


def save_config(folder: RunFolder, cfg: RunConfig) -> None:
    write_json(folder.path / CONFIG_NAME, dict(sorted(cfg.to_dict().items())))


def check_same_dataset(cfg: RunConfig, meta: dict) -> None:
    """On resume: the dataset at cfg.data is the one the run started on (runs from before identities were
    recorded are not checked)."""
    if cfg.data_identity is None:
        return
    now = dataset_identity(meta)
    if _plain(now) != _plain(cfg.data_identity):
        raise RunDirError(
            f"--resume {cfg.out}: the dataset at {cfg.data} is not the one this run started on: it started on "
            f"{_describe(cfg.data_identity)}, {cfg.data} now holds {_describe(now)}. Put the original dataset "
            f"back at that path, or start a new run with --out")


def _plain(value):
    return json.loads(json.dumps(value))  # as config.json stores it (tuples become lists)


def _describe(identity: dict) -> str:
    splits = identity.get("splits") or {}
    counts = ", ".join(f"{n} {s.get('count', '?')}" for n, s in splits.items() if isinstance(s, dict))
    return f"{identity.get('name')!r} ({identity.get('num_classes')} classes, {identity.get('shape')}, {counts})"


# ============================================================================ the lock
def _take_lock(path: Path, option: str, log: Callable[[str], None] | None) -> int:
    lock = path / LOCK_NAME
    for _ in range(20):  # retried only when the holder removed the file between our open and flock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            fresh = True
        except FileExistsError:
            try:
                fd = os.open(lock, os.O_RDWR)
            except FileNotFoundError:
                continue
            fresh = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{spelled(option, path)}: another fasttrain run is using this folder ({holder}); wait for it to "
                f"finish or stop it, or choose another {spelled('--out')}") from None
        # the holder unlinks the file before unlocking it: a file that vanished or was replaced meanwhile is
        # not the lock any more
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        if not fresh and log is not None:
            log(f"{lock}: taking over a stale lock ({_read_holder(fd)}, no longer running)")
        _write_holder(fd)
        return fd
    raise RunDirError(f"{option} {path}: could not take {LOCK_NAME}: other processes keep replacing it")


def _write_holder(fd: int) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)


def _read_holder(fd: int) -> str:
    """'pid N on host H since T' from an open lock file (its writer may still be writing: retried briefly)."""
    for _ in range(10):
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode())
            return f"pid {info['pid']} on host {info['host']} since {info['started']}"
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            time.sleep(0.05)
    return "pid unknown: its lock file is unreadable"


# ============================================================================ files
def _missing_folders(path: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` would create for `path`, outermost first."""
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return missing[::-1]


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if empty: a file someone put there meanwhile keeps it
        except OSError:
            break


def _remove_dead_temp_files(path: Path) -> None:
    """Half-written temp files (`.checkpoint.pt.<random>.tmp`, fileio's atomic writes) of a run killed mid-write.
    Only the lock holder writes here and we hold the lock now, so every such file of ours is a dead one's."""
    for name in RUN_OUTPUTS:
        for tmp in path.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _remove_outputs(path: Path) -> None:
    """Removes the files a run writes (by name), their temp files and TensorBoard's event files."""
    for name in RUN_OUTPUTS:
        (path / name).unlink(missing_ok=True)
        for tmp in path.glob(f".{name}.*.tmp"):  # fileio's temp files of an interrupted write
            tmp.unlink(missing_ok=True)
    tb = path / TENSORBOARD_DIR
    if tb.is_dir():
        for event in tb.glob("events.out.tfevents.*"):
            event.unlink()
        try:
            tb.rmdir()
        except OSError:
            pass  # something else lives there: left alone


def _read_json(path: Path) -> dict | None:
    try:
        return read_json_object(path)
    except UnreadableJson:
        return None


def _read_run_config(path: Path) -> dict | None:
    """config.json's contents when they look like a fasttrain run config (a RunConfig dict), else None."""
    value = _read_json(path)
    return value if value is not None and {"model", "data", "epochs"} <= set(value) else None


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The RunConfig a run saved (`--resume RUN_DIR`), or a RunDirError that names the file and the fix."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise RunDirError(f"--resume {run_dir}: no {CONFIG_NAME} there; pass the folder of a run started by "
                          f"`fasttrain run`")
    try:
        values = read_json_object(path)
    except UnreadableJson as e:
        raise RunDirError(f"--resume {run_dir}: {e}; it was edited or damaged. Restore it, or start a new run "
                          f"with --out") from None
    try:
        return RunConfig.from_dict(values)
    except (ConfigError, TypeError) as e:
        raise RunDirError(f"--resume {run_dir}: {path} is not a run config this fasttrain reads ({e}); "
                          f"restore it, or start a new run with --out") from None
