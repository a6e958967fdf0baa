"""The full training state on disk: saved atomically, loaded without running code, restored exactly.

A checkpoint is one `torch.save` dict holding only tensors and plain Python values (dicts, lists, tuples,
str, int, float, bool, None), written through fileio's temp file + fsync + rename, so a crash or `kill -9`
leaves either the previous checkpoint or the new one, never half of one. It is read back with
`torch.load(weights_only=True)`: a file that pickles a callable or any other object is refused with a
`CheckpointError` before anything in it runs.

Keys of `checkpoint.pt` (FORMAT 1):
    format, config          format version; RunConfig.to_dict() of the run
    model, model_ema        state_dicts (what inference-only readers need, with classes/mean/std, image_size)
    classes, mean, std      dataset meta for inference
    epoch, step             as in `position`, for readers
    state                   {name: state} of optimizer, grad scaler, lookahead, EMA counters, monitor, ...
    ranks                   one entry per process: {"rng": capture_rng(), "sampler": sampler.state_dict(),
                            "acc": running loss/correct/seen sums of an interrupted epoch}
    position                {"epoch": e, "batch": b, "step": s}: the next batch to run is batch b of epoch e
    epoch_acc               {"elapsed_s": ...} of an interrupted epoch, or None
    history, train_s        metric rows of the finished epochs; training seconds so far
    extra                   loop variables (e.g. the best weights kept in memory for the final test)
    world_size              processes that wrote it (the tensor pipeline's data order does not depend on it)

Every file fasttrain writes with weights in it (checkpoint.pt, best.pt, retrieval's backbone.pt) goes through
`save`, and `weights_payload` lays out the keys its readers (eval, predict) need, once.

Every process's random streams travel in the checkpoint (`fasttrain.reproducibility.capture_rng`).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .reproducibility import capture_rng, restore_rng
from .stopping import check_finite_params
from .config import ConfigError, RunConfig
from .extend import check_extension
from .fileio import atomic_torch_save

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written, read or used; the message names the file and what to do."""


# ============================================================================ file level
def plain(obj: Any) -> Any:
    """`obj` with numpy values turned into Python scalars / tensors and paths into strings, so that
    `torch.load(weights_only=True)` can read it back."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path, str)) and type(obj) is not str:  # paths, str subclasses (torch.__version__)
        return str(obj)
    if isinstance(obj, float) and type(obj) is not float:
        return float(obj)
    if isinstance(obj, int) and type(obj) not in (int, bool):
        return int(obj)
    return obj


def weights_payload(weights: dict, config: dict, meta: dict, **extra: Any) -> dict:
    """The keys every weights file has for its readers: format, model (a state_dict), config, the dataset's
    classes / mean / std; then `extra` (e.g. image_size, epoch, the full training state)."""
    return {"format": FORMAT, "model": weights, "config": config, "classes": meta.get("classes"),
            "mean": meta.get("mean"), "std": meta.get("std"), **extra}


def save(path: str | Path, payload: dict) -> Path:
    """Atomically writes `payload` (temp file in the same directory, fsync, rename). A failure (e.g. a full
    disk) leaves the previous file untouched and raises CheckpointError saying so."""
    path = Path(path)
    try:
        atomic_torch_save(plain(payload), path)
    except OSError as e:
        why = "the disk is full" if e.errno == errno.ENOSPC else e.strerror or str(e)
        kept = f"; the previous checkpoint {path} is intact" if path.exists() else ""
        raise CheckpointError(f"could not write checkpoint {path}: {why}{kept}") from e
    return path


def load(path: str | Path) -> dict:
    """Reads a checkpoint with `torch.load(weights_only=True)`: tensors and plain values only, no code runs.
    Anything else (a pickled callable, a custom class) is refused with CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: the run saved none yet (it stopped before the end of "
            f"its first epoch) or this is not a run directory"
        )
    obj = read_torch_file(path)
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path} is not a fasttrain checkpoint (expected a dict with a 'model' entry)")
    return obj


def read_torch_file(path: Path) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU; a file that would run code, or is not a torch file,
    raises CheckpointError naming it (any torch weight file: fasttrain's, a state dict, timm's, torchvision's)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path} ({e.strerror or e}); check the path and its "
                              "permissions") from None
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():  # not a refusal of code: the pickle itself is broken
            raise unreadable_checkpoint(path) from None
        first = str(e).strip().splitlines()
        detail = next(
            (ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else ""
        )
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-tensor checkpoint; it pickles objects or code that "
            f"loading would execute ({detail.strip()}). fasttrain loads checkpoints only with "
            f"torch.load(weights_only=True); re-save the weights as a plain state_dict if you trust the file"
        ) from None
    except Exception:  # noqa: BLE001 - torch's reader fails on a damaged file with any of a dozen types
        raise unreadable_checkpoint(path) from None
    return obj


def unreadable_checkpoint(path: Path) -> CheckpointError:
    """What is wrong with a file torch.load cannot parse, told from its size and first bytes (torch's own
    reasons name its zip reader's internals)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return CheckpointError(f"cannot read checkpoint {path} ({e.strerror or e})")
    if size == 0:
        why = "the file is empty (0 bytes)"
    elif head.startswith(b"PK\x03\x04"):  # torch's zip container, cut short or damaged
        why = f"its zip container ends early or is damaged ({size} bytes: a copy, download or write cut short?)"
    elif head[:1] == b"\x80":  # a pickle (torch's legacy format)
        why = f"its data ends early or is damaged ({size} bytes)"
    else:
        why = f"it does not start like a torch file ({size} bytes)"
    return CheckpointError(f"{path} is truncated or not a fasttrain checkpoint: {why}; re-run the training that "
                           "wrote it, or pick another checkpoint")


# ============================================================================ live objects <-> state
class Attrs:
    """Checkpoints chosen plain attributes of `obj` (e.g. an EMA's update count), for objects whose
    state_dict leaves them out."""

    def __init__(self, obj: Any, *names: str):
        self.obj, self.names = obj, names

    def state_dict(self) -> dict:
        return {n: _encode(getattr(self.obj, n)) for n in self.names}

    def load_state_dict(self, state: dict) -> None:
        for n in self.names:
            setattr(self.obj, n, _decode(state[n], getattr(self.obj, n, None)))


def state_of(obj: Any) -> dict:
    """obj.state_dict(), or for small helpers without one (Lookahead, Monitor, PatchUp) every attribute
    that is a tensor, a plain value, a dict/list of those, or a numpy / torch random generator."""
    if hasattr(obj, "state_dict"):
        return obj.state_dict()
    return {k: _encode(v) for k, v in vars(obj).items() if _storable(v)}


def load_state_into(obj: Any, state: dict, name: str) -> None:
    if hasattr(obj, "load_state_dict"):
        obj.load_state_dict(state)
        return
    for k, v in state.items():
        cur = getattr(obj, k, None)
        if isinstance(cur, dict) and isinstance(v, dict) and all(torch.is_tensor(t) for t in cur.values()):
            if set(cur) != set(v):
                raise CheckpointError(
                    f"checkpoint entry {name}.{k} does not match this run "
                    f"(keys differ: {sorted(set(cur) ^ set(v))[:5]})"
                )
            for key, t in v.items():
                cur[key].copy_(t)
        elif torch.is_tensor(cur) and torch.is_tensor(v) and cur.shape == v.shape:
            cur.copy_(v)
        else:
            setattr(obj, k, _decode(v, cur))


def _storable(v: Any) -> bool:
    if (
        torch.is_tensor(v)
        or v is None
        or isinstance(v, (int, float, bool, str, np.random.Generator, torch.Generator))
    ):
        return True
    if isinstance(v, dict):
        return all(_storable(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_storable(x) for x in v)
    return False


def _encode(v: Any) -> Any:
    if isinstance(v, np.random.Generator):
        return {"__numpy_generator__": v.bit_generator.state}
    if isinstance(v, torch.Generator):
        return {"__torch_generator__": v.get_state()}
    return v


def _decode(v: Any, current: Any) -> Any:
    if isinstance(v, dict) and "__numpy_generator__" in v:
        gen = current if isinstance(current, np.random.Generator) else np.random.default_rng()
        gen.bit_generator.state = v["__numpy_generator__"]
        return gen
    if isinstance(v, dict) and "__torch_generator__" in v:
        gen = current if isinstance(current, torch.Generator) else torch.Generator()
        gen.set_state(v["__torch_generator__"])
        return gen
    return v


@dataclass
class Position:
    """Where a (resumed) run stands: the next batch is `batch` of `epoch`, `step` optimiser steps done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    train_s: float = 0.0
    epoch_acc: dict | None = None  # this rank's running sums of the interrupted epoch, and elapsed_s
    extra: dict = field(default_factory=dict)  # loop variables saved with `extra=` (e.g. best weights)

    def epoch_start(
        self, epoch: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, int, int, float]:
        """(loss_sum, correct, seen, batches to skip, seconds already spent) for the start of `epoch`:
        zeros, except in the epoch a mid-epoch checkpoint interrupted."""
        zero = torch.zeros((), device=device)
        skip = self.batch if epoch == self.epoch else 0
        a = (self.epoch_acc or {}) if skip else {}
        elapsed = float(a.get("elapsed_s", 0.0))
        if "loss_sum" not in a:  # also ranks > 0 under DDP: rank 0 carries the sums over all ranks
            return zero, zero.clone(), 0, skip, elapsed
        return (
            torch.full((), a["loss_sum"], device=device),
            torch.full((), a["correct"], device=device),
            int(a["seen"]),
            skip,
            elapsed,
        )


class TrainState:
    """Gathers everything that must survive a restart from the live objects, and puts it back.

    modules: name -> nn.Module saved by state_dict at the top level ("model", "model_ema", ...).
    objects: name -> optimizer, grad scaler, lookahead, EMA counters, monitor ... (None entries skipped).
    The sampler and the global RNG streams are per process (gathered from every rank; rank 0 writes).
    info: extra top-level entries for readers of the file (e.g. image_size)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        modules: dict[str, torch.nn.Module | None],
        objects: dict[str, Any],
        sampler: Any,
        dist: Any,
        config: dict,
        meta: dict,
        info: dict | None = None,
    ):
        self.path = Path(run_dir) / CHECKPOINT_NAME
        self.modules = {k: v for k, v in modules.items() if v is not None}
        self.objects = {k: v for k, v in objects.items() if v is not None}
        self.sampler = sampler
        self.dist = dist
        self.config = config
        self.meta = meta
        self.info = info or {}

    def save(
        self,
        *,
        epoch: int,
        batch: int,
        step: int,
        history: list,
        train_s: float,
        epoch_acc: dict | None = None,
        extra: dict | None = None,
    ) -> Path:
        """Collective under DDP (every rank must call it at the same point); only rank 0 writes.
        Refuses (NonFiniteLoss) to overwrite the last good checkpoint with non-finite weights."""
        check_finite_params(self.modules["model"])
        mine = {"rng": capture_rng(), "sampler": self.sampler.state_dict()}
        if epoch_acc is not None:  # this rank's running sums of the interrupted epoch, as plain numbers
            mine["acc"] = {k: float(epoch_acc[k]) for k in ("loss_sum", "correct", "seen")}
            epoch_acc = {"elapsed_s": float(epoch_acc["elapsed_s"])}
        ranks = self.dist.gather_object(mine)
        if not self.dist.is_main:
            return self.path
        weights = {name: m.state_dict() for name, m in self.modules.items()}  # model, model_ema
        payload = weights_payload(
            weights.pop("model"), self.config, self.meta, **weights, **self.info,
            state={k: state_of(v) for k, v in self.objects.items()},
            ranks=ranks,
            world_size=self.dist.world_size,
            position={"epoch": epoch, "batch": batch, "step": step},
            epoch=epoch,
            step=step,
            epoch_acc=epoch_acc,
            history=history,
            train_s=train_s,
            extra=extra or {},
            torch=torch.__version__,
        )
        return save(self.path, payload)

    def restore(self) -> Position:
        """Loads the run directory's checkpoint into the live objects; returns where to continue."""
        ckpt = load(self.path)
        if ckpt.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.path} has checkpoint format {ckpt.get('format')!r}, this fasttrain "
                f"reads format {FORMAT}"
            )
        _check_same_config(ckpt.get("config") or {}, self.config, self.path)
        for name, module in self.modules.items():
            if ckpt.get(name) is None:
                raise CheckpointError(f"{self.path} holds no {name!r} weights, but this run has them")
            try:
                module.load_state_dict(ckpt[name])
            except RuntimeError as e:
                raise CheckpointError(
                    f"{self.path}: the {name!r} weights do not fit this run's model: {e}"
                ) from None
        state = ckpt.get("state", {})
        for name, obj in self.objects.items():
            if name not in state:
                if getattr(obj, "optional_state", False):  # added later: older checkpoints lack it
                    continue
                raise CheckpointError(f"{self.path} holds no {name!r} state, but this run has one")
            load_state_into(obj, state[name], name)
        ranks = ckpt["ranks"]
        if len(ranks) != self.dist.world_size:
            # tensor pipeline: same data order and augmentation for any world size (rank 0's sampler);
            # only per-process streams (dropout masks) differ from an uninterrupted run
            warnings.warn(
                f"{self.path} was written by {len(ranks)} process(es), resuming with "
                f"{self.dist.world_size}: per-process random streams are re-derived",
                stacklevel=2,
            )
        mine = ranks[min(self.dist.rank, len(ranks) - 1)]
        self.sampler.load_state_dict(mine["sampler"])
        restore_rng(mine["rng"])
        pos = ckpt["position"]
        acc = ckpt.get("epoch_acc")
        if acc is not None:
            acc = {**acc, **_rank_sums(ranks, self.dist)}
        return Position(
            epoch=int(pos["epoch"]),
            batch=int(pos["batch"]),
            step=int(pos["step"]),
            history=list(ckpt.get("history") or []),
            train_s=float(ckpt.get("train_s") or 0.0),
            epoch_acc=acc,
            extra=dict(ckpt.get("extra") or {}),
        )


def _rank_sums(ranks: list[dict], dist) -> dict:
    """This rank's running sums of the interrupted epoch: its own with the same world size (so the epoch's
    float sums are bit-identical to an uninterrupted run), else rank 0 takes all of them, the others none."""
    if len(ranks) == dist.world_size:
        return dict(ranks[dist.rank].get("acc") or {})
    if not dist.is_main:
        return {}
    parts = [r["acc"] for r in ranks if r.get("acc")]
    return {k: sum(p[k] for p in parts) for k in ("loss_sum", "correct", "seen")} if parts else {}


def check_resumable(run_dir: str | Path) -> None:
    """Before any work: RUN_DIR has a checkpoint and has not finished."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        raise CheckpointError(
            f"--resume {run_dir}: this run already finished (summary.json exists); start a new run with --out, "
            f"or train it longer with --resume {run_dir} --epochs N where its schedule allows (fasttrain.extend)"
        )
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise CheckpointError(
            f"--resume {run_dir}: no {CHECKPOINT_NAME} yet (the run stopped before the end of "
            f"its first epoch); start it again without --resume"
        )
    for tmp in run_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a kill during a write
        tmp.unlink(missing_ok=True)


# Options that may differ between the checkpoint and the resumed config without changing what is computed.
RESUME_MAY_DIFFER = frozenset({"out", "nproc", "threads", "force"})


def _field_defaults() -> dict:
    """Every RunConfig field's default, as config.json writes it."""
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    return json.loads(json.dumps(defaults))


def _check_same_config(saved: dict, current: dict, path: Path) -> None:
    # compare as JSON sees them (config.json turns tuples into lists)
    saved, current = json.loads(json.dumps(saved)), json.loads(json.dumps(current))
    # a setting added to fasttrain after the checkpoint was written is absent from it: the run had the default
    saved = {**{k: v for k, v in _field_defaults().items() if k in current}, **saved}
    diff = sorted(
        k for k in set(saved) | set(current) if k not in RESUME_MAY_DIFFER and saved.get(k) != current.get(k)
    )
    if "epochs" in diff:  # `--resume RUN --epochs N`: more epochs where the schedule allows it
        try:
            check_extension(saved, current["epochs"])
        except ConfigError as e:
            raise CheckpointError(f"{path}: {e}") from None
        diff.remove("epochs")
    if diff:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff[:5])
        raise CheckpointError(
            f"{path} was written by a run with a different config ({shown}); resume with "
            f"the run's own config.json (`fasttrain run --resume DIR` and no other options)"
        )
