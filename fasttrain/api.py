"""The Python API, for notebooks and scripts: `fit` trains, `load` gives a model ready for inference,
`predict` classifies images, `export` (fasttrain.exporting) writes ONNX / TorchScript / safetensors.

    import fasttrain
    result = fasttrain.fit("resnet9", "data/cifar10", epochs=8, device="cpu")
    preds = fasttrain.predict(result, images)          # uint8 (N, H, W, C), as fasttrain stores images

Everything goes through the same path as `fasttrain run`: `config.resolve` (defaults < recipe < the
keywords given here), `train.train(cfg)`, a run directory with config, metrics, checkpoints and plots.
The models `load` returns are `Classifier`s: the trained network with its input normalisation inside,
taking uint8 images (N, H, W, C), so that nothing about preprocessing has to be remembered.
docs/python_api.md has the whole walk-through.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn as nn

from .augment import norm_constants, normalize
from .callbacks import check_callbacks
from .loggers import check_logger_object
from .choices import did_you_mean
from .config import ConfigError, RunConfig, resolve
from .words import python_spelling
from .data.decode import decode_image_file
from .data.tensor_format import Split, read_meta, write_tensor_dataset
from .evaluate import TTA_MODES, _tta_logits
from .inference import checkpoint_path, load_checkpoint
from .models import get_entry
from .models.external import registered_module
from .models.options import merge_model_options
from .runtime import resolve_device
from .train import train

BEST_NAME = "best.pt"  # written by runs with a validation split (the weights their test accuracy used)
DATA_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
# What fit(data=...) accepts: a converted dataset directory, or the four arrays in memory.
Data = Union[str, os.PathLike, Sequence, dict]


class Classifier(nn.Module):
    """A trained network with its input normalisation folded in: uint8 images (N, H, W, C), RGB, the
    layout fasttrain's datasets hold, in; logits (N, classes) out.

    Attributes: `net` (the network, which takes normalised float (N, C, H, W)), `classes`, `mean` and
    `std` (per channel, fractions of 255), `image_size` (H, W) it was trained at, `model_name` (the
    run's model, e.g. "resnet9" or "timm/resnet18"), `checkpoint` (the file it was loaded from)."""

    def __init__(self, net: nn.Module, *, classes: list[str], mean: list[float], std: list[float],
                 image_size: tuple[int, int], model_name: str, model_kwargs: dict | None = None,
                 checkpoint: Path | None = None):
        super().__init__()
        self.net = net
        scale, bias = norm_constants(mean, std)
        # not persistent: state_dict() stays the network's own (prefixed "net."), as in the checkpoint
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("bias", bias, persistent=False)
        self.classes, self.mean, self.std = list(classes), list(mean), list(std)
        self.image_size = tuple(image_size)
        self.model_name, self.model_kwargs = model_name, dict(model_kwargs or {})
        self.checkpoint = checkpoint

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W) (channels_last memory), as in training."""
        channels = self.scale.numel()
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != channels:
            raise ValueError(f"images: expected uint8 (N, H, W, {channels}) as fasttrain's datasets hold them, "
                             f"got {images.dtype} {tuple(images.shape)}")
        return normalize(images, self.scale, self.bias, torch.float32)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


@dataclass
class FitResult:
    """What `fit` returns: the trained model (a Classifier in eval mode, on the training device), the
    run's summary (the dict written to summary.json: test_acc, wall_s, ...) and its run directory."""

    model: Classifier
    summary: dict
    run_dir: Path


@dataclass
class Predictions:
    """`predict`'s answer: class probabilities (N, classes), the most probable class per image (N,) and
    the class names; `names` gives the predicted class name of each image."""

    probs: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    @property
    def names(self) -> list[str]:
        return [self.classes[i] for i in self.labels.tolist()]


# ============================================================================ fit
def fit(model: str | nn.Module, data: Data, *, verbose: bool = True, callbacks: Any = None, logger: Any = None,
        **fields: Any) -> FitResult:
    """Trains `model` on `data` and returns FitResult(model, summary, run_dir).

    model:  a zoo name (`fasttrain zoo` lists them), "timm/<name>" for a timm model, or an nn.Module of
            your own taking normalised float (N, 3, H, W) and returning (N, classes) logits. It is
            trained in place; its run cannot be rebuilt by name later, so `load` needs it again.
    data:   a converted dataset directory (`fasttrain convert`), or in-memory arrays (numpy or torch):
            a (train_images, train_labels, test_images, test_labels) tuple or a dict with those keys
            (and optionally "classes": names). Images are uint8 (N, H, W, C), labels integers 0..C-1.
            They are written to a temporary converted dataset, removed when fit returns.
    fields: any RunConfig field (see `fasttrain.config.RunConfig`), e.g. epochs=8, batch_size=256,
            lr=0.1, device="cpu", out="runs/mine", recipe="cpu-quick", model_kwargs={"width": 0.5}.
            Precedence as on the command line: RunConfig defaults < the recipe (named, else the
            model's own) < these keywords. An unknown keyword raises ConfigError with a suggestion.
    verbose: print the per-epoch progress (as `fasttrain run` does).
    callbacks: objects with Lightning-named hooks (on_train_start, on_train_epoch_end, on_train_batch_end,
            on_train_end, ...; fasttrain.callbacks); one may stop the run cleanly with state.should_stop = True.
    logger: "mlflow", "wandb", "tensorboard", "csv" (comma-separated, as --logger), a logger object
            (log_hyperparams, log_metrics, finalize: fasttrain.loggers), or a list of either.
    """
    _check_fields(fields)
    callbacks = check_callbacks(callbacks)
    logger_objects = []
    for item in logger if isinstance(logger, (list, tuple)) else [logger] if logger is not None else []:
        if isinstance(item, str):
            fields["logger"] = ",".join(filter(None, [fields.get("logger"), item]))
        else:
            check_logger_object(item)
            logger_objects.append(item)
    recipe = fields.pop("recipe", None)
    if not isinstance(model, (str, nn.Module)):
        raise ConfigError(f"model: expected a model name or an nn.Module, got {type(model).__name__}")
    if isinstance(model, str):
        try:
            get_entry(model)  # a misspelt name (or timm missing) is reported before any data is written
        except KeyError as e:
            raise ConfigError(f"model: {e.args[0]}") from None
    with ExitStack() as scope:
        scope.enter_context(python_spelling())  # messages say out=..., force=True, not --out, --force
        data_dir = (Path(data) if isinstance(data, (str, os.PathLike))
                    else scope.enter_context(_temporary_dataset(data)))
        if isinstance(model, nn.Module):
            _check_module_output(model, read_meta(data_dir))
            name = scope.enter_context(registered_module(model))
        else:
            name = model
        cfg = resolve(name, recipe, {**fields, "data": str(data_dir)})
        merge_model_options(cfg)  # model_kwargs checked against what the model takes
        if cfg.task != "classification":
            raise ConfigError(f"task: fit trains classifiers; run --task {cfg.task} with `fasttrain run`")
        if cfg.nproc != 1:
            raise ConfigError("nproc: fit trains in this process; several processes need `fasttrain run "
                              "--nproc N` (torchrun)")
        summary = train(cfg, quiet=not verbose, callbacks=callbacks, loggers=logger_objects)
        run_dir = Path(cfg.out)
        trained = load(run_dir, model=model if isinstance(model, nn.Module) else None, device=cfg.device)
    return FitResult(trained, summary, run_dir)


def _check_fields(fields: dict) -> None:
    known = {f.name for f in dataclasses.fields(RunConfig)} - {"model", "data"}
    for key in sorted(set(fields) - known):
        raise ConfigError(f"fit: unknown option {key!r}{did_you_mean(key, sorted(known), cutoff=0.7)}; fit takes "
                          f"the RunConfig fields "
                          f"(fasttrain.config.RunConfig), e.g. epochs, batch_size, lr, device, out")


def _check_module_output(module: nn.Module, meta: dict) -> None:
    """An nn.Module's logits must have one column per class of the data: checked on two blank images
    (eval mode, no gradients) before training, rather than as an index error inside the loss."""
    h, w, c = meta["shape"]
    device = next(module.parameters(), torch.zeros(())).device
    was_training = module.training
    with torch.no_grad():
        out = module.eval()(torch.zeros(2, c, h, w, device=device))
    module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, meta["num_classes"]):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model: {type(module).__name__} returns {got} for 2 images of {c}x{h}x{w}; the data "
                          f"has {meta['num_classes']} classes, so fit needs (2, {meta['num_classes']}) logits")


@contextmanager
def _temporary_dataset(data: Sequence | dict) -> Iterator[Path]:
    """In-memory arrays written as a tensor-format dataset in a temporary directory (ours: removed after)."""
    splits, classes = _in_memory_splits(data)
    tmp = Path(tempfile.mkdtemp(prefix="fasttrain-data-"))
    try:
        yield write_tensor_dataset(tmp / "data", splits, classes, name="in-memory",
                                   source="in-memory arrays given to fasttrain.fit")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _in_memory_splits(data: Sequence | dict) -> tuple[dict[str, Split], list[str]]:
    if isinstance(data, dict):
        missing = [k for k in DATA_KEYS if k not in data]
        unknown = sorted(set(data) - set(DATA_KEYS) - {"classes"})
        if missing or unknown:
            raise ConfigError(f"data: the dict needs the keys {', '.join(DATA_KEYS)} (and may have 'classes'); "
                              f"missing {missing}, unknown {unknown}")
        arrays, classes = {k: data[k] for k in DATA_KEYS}, data.get("classes")
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        arrays, classes = dict(zip(DATA_KEYS, data)), None
    else:
        raise ConfigError(f"data: expected a converted dataset directory, a (train_images, train_labels, "
                          f"test_images, test_labels) tuple or a dict with those keys; got {type(data).__name__}")
    arrays = {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
              for k, v in arrays.items()}
    for split in ("train", "test"):
        _check_images(f"{split}_images", arrays[f"{split}_images"])
        _check_labels(f"{split}_labels", arrays[f"{split}_labels"], len(arrays[f"{split}_images"]))
    present = np.unique(arrays["train_labels"])
    if len(present) < 2:  # typically X[:800] of a converted dataset, whose arrays are stored sorted by class
        raise ConfigError(
            f"data: train_labels holds only class {present[0]} ({len(arrays['train_labels'])} labels); a classifier "
            f"needs at least 2 classes. A converted dataset's arrays are stored sorted by class, so a slice such as "
            f"X[:800] holds one class: take a random subset instead, e.g. "
            f"idx = np.random.default_rng(0).permutation(len(X))[:800]; X[idx], y[idx]")
    num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    if classes is None:
        classes = [str(i) for i in range(num_classes)]
    elif len(classes) < num_classes:
        raise ConfigError(f"data: {len(classes)} class names but labels go up to {num_classes - 1}")
    splits = {s: Split(arrays[f"{s}_images"], arrays[f"{s}_labels"].astype(np.int64)) for s in ("train", "test")}
    return splits, [str(c) for c in classes]


def _check_images(key: str, images: np.ndarray) -> None:
    if images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] in (1, 3) and len(images):
        return
    hint = ""
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        hint = "; channels come last: x.permute(0, 2, 3, 1) (torch) or x.transpose(0, 2, 3, 1) (numpy)"
    if images.dtype != np.uint8:
        hint += "; floats in [0, 1] convert with (x * 255).round() cast to uint8"
    raise ConfigError(f"data: {key} must be non-empty uint8 images (N, H, W, C) with C = 1 or 3, got "
                      f"{images.dtype} {images.shape}{hint}")


def _check_labels(key: str, labels: np.ndarray, n: int) -> None:
    if not (np.issubdtype(labels.dtype, np.integer) and labels.shape == (n,) and labels.min() >= 0):
        raise ConfigError(f"data: {key} must be {n} integer class indices >= 0 (one per image), got "
                          f"{labels.dtype} {labels.shape}")


# ============================================================================ load
def load(run_or_checkpoint: str | os.PathLike, *, model: nn.Module | None = None, checkpoint: str | None = None,
         use_ema: bool = True, device: str = "auto") -> Classifier:
    """A trained model ready for inference: a Classifier (eval mode) taking uint8 (N, H, W, C) images.

    run_or_checkpoint: a run directory or a checkpoint file (RUN_DIR/checkpoint.pt, RUN_DIR/best.pt).
    model:      load the weights into this module instead of rebuilding the run's model by name; needed
                for runs that trained an nn.Module given to `fit`.
    checkpoint: for a run directory: None (default) for the weights its test accuracy was measured with
                (best.pt where the run had a validation split, else checkpoint.pt), "best" or "last".
    use_ema:    the EMA weights when the run kept an EMA (as its evaluation did).
    device:     auto | cpu | cuda | cuda:N.
    """
    path = checkpoint_path(run_or_checkpoint, checkpoint)
    loaded = load_checkpoint(path, resolve_device(device), use_ema=use_ema, model=model)
    return Classifier(loaded.model, classes=loaded.classes, mean=loaded.mean, std=loaded.std,
                      image_size=loaded.image_size, model_name=loaded.config["model"],
                      model_kwargs=loaded.config.get("model_kwargs"), checkpoint=path).eval()


# ============================================================================ predict
def predict(model_or_run: Classifier | FitResult | str | os.PathLike, images: Any, *, tta: str = "none",
            batch_size: int = 256) -> Predictions:
    """Class probabilities and labels for `images`.

    model_or_run: a Classifier (from `load` or `fit`), a FitResult, or a run directory / checkpoint file.
    images: uint8 (N, H, W, C) or one (H, W, C) image, numpy or torch, at the trained image size; or a
            list of image files (any size: resized and centre-cropped as `fasttrain convert` does).
    tta:    none | flip | flip_translate (averaged logits over the views, as the run's evaluation).
    """
    if tta not in TTA_MODES:
        raise ValueError(f"tta: must be one of {TTA_MODES}, got {tta!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")
    classifier = _as_classifier(model_or_run)
    device = classifier.scale.device
    x = _as_image_batch(images, classifier).to(device)
    was_training = classifier.training
    classifier.eval()
    with torch.no_grad():
        probs = torch.cat([torch.softmax(_tta_logits(classifier.net, classifier.normalize(x[i:i + batch_size]),
                                                     tta).float(), 1)
                           for i in range(0, len(x), batch_size)]).cpu()
    classifier.train(was_training)
    return Predictions(probs, probs.argmax(1), classifier.classes)


def _as_classifier(model_or_run: Any) -> Classifier:
    if isinstance(model_or_run, FitResult):
        return model_or_run.model
    if isinstance(model_or_run, Classifier):
        return model_or_run
    if isinstance(model_or_run, (str, os.PathLike)):
        return load(model_or_run)
    raise TypeError(f"model_or_run: expected a fasttrain Classifier (fasttrain.load), a FitResult or a run "
                    f"directory, got {type(model_or_run).__name__}; a bare nn.Module lacks its normalisation")


def _as_image_batch(images: Any, classifier: Classifier) -> torch.Tensor:
    h, w = classifier.image_size
    expected = f"uint8 images (N, {h}, {w}, C) or one (H, W, C) image (numpy or torch), or a list of image files"
    if isinstance(images, (str, os.PathLike)):
        raise TypeError(f"images: expected {expected}; got one path: pass a list, [{str(images)!r}]")
    if not isinstance(images, (list, tuple, np.ndarray, torch.Tensor)):
        raise TypeError(f"images: expected {expected}, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError(f"images: empty; expected at least one image ({expected})")
    if isinstance(images, (list, tuple)) and any(isinstance(i, (str, os.PathLike)) for i in images):
        if not all(isinstance(i, (str, os.PathLike)) for i in images):
            raise TypeError("images: a list mixing file paths and other things; pass only paths, or one array")
        if h != w:
            raise ValueError(f"images: the model was trained on {h}x{w} images; files are resized to squares only")
        for p in map(Path, images):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: image not found")
        return torch.from_numpy(np.stack([decode_image_file(p, size=h) for p in images]))
    try:
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.asarray(images))
    except (TypeError, ValueError) as e:  # ragged lists, objects numpy cannot hold as one array
        raise TypeError(f"images: expected {expected}; cannot make one array of it ({e})") from None
    if x.dtype != torch.uint8:
        hint = "; floats in [0, 1] convert with (x * 255).round() cast to uint8" if x.is_floating_point() else ""
        raise TypeError(f"images: expected {expected}, got dtype {x.dtype}{hint}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim == 4 and tuple(x.shape[1:3]) != (h, w) and x.dtype == torch.uint8:
        raise ValueError(f"images: the model was trained on {h}x{w} images, got {tuple(x.shape[1:3])}; pass "
                         f"image files to have them resized, or resize to {h}x{w}")
    return x  # dtype and layout are checked by Classifier.normalize
