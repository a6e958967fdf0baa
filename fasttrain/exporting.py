"""Export a trained model (`fasttrain export`, `fasttrain.export`): ONNX, TorchScript or safetensors.

ONNX and TorchScript files hold the whole `Classifier`: input uint8 images (N, H, W, C) RGB, any batch
size, output logits (N, classes); the normalisation is folded in, so a consumer feeds raw pixels.
safetensors holds the network's weights only (its state dict, keys as in `Classifier.net`); the
normalisation is then the consumer's: float (N, C, H, W) = (pixels / 255 - mean) / std.
Every file carries a "fasttrain" metadata entry (JSON: model, model_kwargs, classes, mean, std,
image_size, and "input": what the file's network takes, for that format) — ONNX metadata_props, a
TorchScript extra file, safetensors metadata; a safetensors file's also says how to rebuild the network
("rebuild": Python that builds it and loads the file named `path`).

A file is written under the output rule (outputs.py): to a temporary name beside its destination, renamed
into place when complete; an existing file is replaced only if fasttrain wrote it (its metadata says so)
or with force=True (OutputError otherwise).
Each format's library is imported only when that format is asked for, with an install hint.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from . import __version__
from .api import Classifier, FitResult, load
from .models.external import MODULE_PREFIX
from .outputs import claim, temp_path
from .words import python_spelling

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
METADATA_KEY = "fasttrain"
TORCHSCRIPT_EXTRA = "fasttrain.json"
INSTALL_HINTS = {"onnx": "pip install onnx onnxscript  (or pip install 'fasttrain[onnx]')",
                 "safetensors": "pip install safetensors  (or pip install 'fasttrain[onnx]')"}


class ExportError(RuntimeError):
    """An export cannot be written; the message names the file or option and what to do."""


def export(model_or_run: Classifier | FitResult | str | os.PathLike, format: str = "onnx",
           out: str | os.PathLike | None = None, *, force: bool = False, checkpoint: str | None = None,
           model: torch.nn.Module | None = None) -> Path:
    """Writes the model in `format` (onnx | torchscript | safetensors) and returns the file's path.

    model_or_run: a Classifier (`fasttrain.load`), a FitResult, or a run directory / checkpoint file
                  (loaded as `fasttrain.load(model_or_run, checkpoint=checkpoint, model=model)`).
    out:   the file to write; default beside the checkpoint, named after it (RUN_DIR/best.onnx,
           RUN_DIR/checkpoint.torchscript.pt, ...).
    force: overwrite `out` even if it is not a file fasttrain exported.
    """
    if format not in FORMATS:
        raise ExportError(f"--format: must be one of {', '.join(FORMATS)}, got {format!r}")
    classifier = _classifier(model_or_run, checkpoint, model)
    out = Path(out) if out is not None else _default_out(classifier, format)
    with python_spelling():  # a message says out=..., force=True (a CLI caller's own message says --out)
        target = claim(out, option="--out", force=force, ours=lambda path: written_by_fasttrain(path, format))
    # exported on the CPU in fp32, from a copy: the caller's model keeps its device and mode
    classifier = copy.deepcopy(classifier).cpu().float().eval()
    with temp_path(target) as tmp:
        WRITERS[format](classifier, tmp, json.dumps(metadata(classifier, format)))
    return out


def metadata(classifier: Classifier, format: str) -> dict:
    """The "fasttrain" entry of an export in `format`: one statement of the input its network takes (the
    whole Classifier for ONNX / TorchScript, the bare network for safetensors), and for safetensors, which
    holds weights only, how to rebuild that network."""
    h, w = classifier.image_size
    c = len(classifier.mean)
    meta = {"fasttrain": __version__, "model": classifier.model_name, "model_kwargs": classifier.model_kwargs,
            "classes": classifier.classes, "mean": classifier.mean, "std": classifier.std, "image_size": [h, w]}
    if format != "safetensors":
        return {**meta, "input": f"uint8 (N, {h}, {w}, {c}) RGB images, pixels 0-255 as they are; the "
                                 f"normalisation is folded in"}
    return {**meta, "input": f"float32 (N, {c}, {h}, {w}) RGB = (pixels / 255 - mean) / std, per channel with "
                             f"this entry's mean and std: the file holds the network's weights only",
            "rebuild": rebuild_code(classifier.model_name, len(classifier.classes), classifier.model_kwargs)}


def rebuild_code(model: str, num_classes: int, model_kwargs: dict) -> str:
    """Python that builds the network a safetensors export's weights belong to and loads them from the file
    named by the variable `path`, as `net` (in eval mode)."""
    load = "net.load_state_dict(safetensors.torch.load_file(path)); net.eval()"
    if model.startswith(MODULE_PREFIX):  # an nn.Module given to fasttrain.fit: only its author can build it
        return (f"# net = {model[len(MODULE_PREFIX):]}(...)  (the nn.Module you trained with fasttrain.fit, built "
                f"as then)\nimport safetensors.torch; {load}")
    return (f"import fasttrain, safetensors.torch; net = fasttrain.create_model({model!r}, num_classes={num_classes}"
            f"{', **' + repr(model_kwargs) if model_kwargs else ''}); {load}")


def _classifier(model_or_run, checkpoint: str | None, model: torch.nn.Module | None) -> Classifier:
    if isinstance(model_or_run, FitResult):
        return model_or_run.model
    if isinstance(model_or_run, Classifier):
        return model_or_run
    if isinstance(model_or_run, (str, os.PathLike)):
        return load(model_or_run, checkpoint=checkpoint, model=model, device="cpu")
    raise ExportError(f"expected a run directory, a checkpoint file, a FitResult or a fasttrain Classifier "
                      f"(fasttrain.load), got {type(model_or_run).__name__}")


def _default_out(classifier: Classifier, format: str) -> Path:
    if classifier.checkpoint is None:
        raise ExportError("out: this model was not loaded from a checkpoint; name the file to write")
    return classifier.checkpoint.with_name(classifier.checkpoint.stem + FORMATS[format])


def _example(classifier: Classifier, n: int = 2) -> torch.Tensor:
    h, w = classifier.image_size
    return torch.zeros(n, h, w, len(classifier.mean), dtype=torch.uint8)


# ============================================================================ writers
def _write_onnx(classifier: Classifier, path: Path, meta: str) -> None:
    try:
        import onnx  # optional: only ONNX export needs it
    except ImportError:
        raise ExportError(f"--format onnx needs onnx, which is not installed: {INSTALL_HINTS['onnx']}") from None
    # torch's TorchScript-based exporter first: a second or two here against 20-30 s for the
    # torch.export-based one on 2 CPU cores, with the same outputs (tests/test_export.py); the latter for
    # models the former cannot trace, and for torch versions that no longer have the former.
    try:
        onnx_by_tracing(classifier, path)
    except Exception as tracing_error:
        onnx_by_torch_export(classifier, path, why=f"torch's TorchScript-based exporter failed ({tracing_error})")
    model = onnx.load(str(path))
    model.metadata_props.add(key=METADATA_KEY, value=meta)
    onnx.save(model, str(path))


def onnx_by_tracing(classifier: Classifier, path: Path) -> None:
    with _quiet_tracing():
        torch.onnx.export(classifier, (_example(classifier),), str(path), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def onnx_by_torch_export(classifier: Classifier, path: Path, why: str = "") -> None:
    try:
        import onnxscript  # noqa: F401  (optional: the torch.export-based exporter needs it)
    except ImportError:
        raise ExportError(f"--format onnx: {why + ', and ' if why else ''}torch's torch.export-based exporter "
                          f"needs onnxscript, which is not installed: {INSTALL_HINTS['onnx']}") from None
    program = torch.onnx.export(classifier, (_example(classifier),), dynamo=True, input_names=["images"],
                                output_names=["logits"], verbose=False,
                                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    program.save(str(path), external_data=False)


def _write_torchscript(classifier: Classifier, path: Path, meta: str) -> None:
    with torch.no_grad(), _quiet_tracing():
        traced = torch.jit.trace(classifier, _example(classifier), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: meta})


@contextmanager
def _quiet_tracing() -> Iterator[None]:
    """Tracing warns that Classifier.normalize's input check becomes a constant (intended: the exported
    input is fixed as uint8 NHWC) and that TorchScript is deprecated in favour of torch.export (known:
    it is the format asked for); neither is news to the user."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _write_safetensors(classifier: Classifier, path: Path, meta: str) -> None:
    try:
        from safetensors.torch import save_file  # optional: only safetensors export needs it
    except ImportError:
        raise ExportError(f"--format safetensors needs safetensors, which is not installed: "
                          f"{INSTALL_HINTS['safetensors']}") from None
    # contiguous copies: safetensors refuses views and tensors sharing memory (e.g. tied weights)
    state = {k: v.detach().contiguous().clone() for k, v in classifier.net.state_dict().items()}
    save_file(state, str(path), metadata={METADATA_KEY: meta})


WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors}


# ============================================================================ whose file is it
def written_by_fasttrain(path: str | os.PathLike, format: str) -> bool:
    """Whether `path` is a `format` file carrying fasttrain's metadata (so re-exporting may replace it)."""
    try:
        return METADATA_KEY in _read_metadata(Path(path), format)
    except Exception:  # unreadable or another format: not ours
        return False


def read_metadata(path: str | os.PathLike, format: str) -> dict:
    """The "fasttrain" metadata of an exported file, as a dict."""
    return json.loads(_read_metadata(Path(path), format)[METADATA_KEY])


def _read_metadata(path: Path, format: str) -> dict:
    if format == "onnx":
        import onnx  # optional dependency, as in _write_onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props}
    if format == "torchscript":
        with zipfile.ZipFile(path) as z:  # a TorchScript file is a zip archive: ARCHIVE/extra/<name>
            names = [n for n in z.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_EXTRA}")]
            return {METADATA_KEY: z.read(names[0]).decode()} if names else {}
    from safetensors import safe_open  # optional dependency, as in _write_safetensors

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
