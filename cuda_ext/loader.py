"""Build (JIT, cached) and load the CUDA augmentation extension.

First use compiles csrc/ (nvcc for the kernels, the host compiler for their torch side) through
`torch.utils.cpp_extension.load` (under a minute: the .cu files include no torch header) into a cache
directory keyed by the torch, CUDA and Python versions and the source tree, so later runs only load the
.so; a change in the sources, headers or flags triggers a rebuild. Loading registers the CUDA
kernels of `torch.ops.fasttrain.augment` / `augment_out` and `crop_resize` (schemas in ops.py, beside
this file).

Environment:
  FASTTRAIN_EXT_DIR      where to build (default: $XDG_CACHE_HOME or ~/.cache, /fasttrain/cuda_ext/<tag>)
  CUDA_HOME              the CUDA toolkit root; found from nvcc on the PATH when unset (also through
                         wrapper scripts, which torch's own detection misreads)
  TORCH_CUDA_ARCH_LIST   GPU architectures to compile for, e.g. "9.0"; torch picks the visible GPU's
                         when unset. Needed to compile on a machine without a GPU (tests do).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from . import ops  # noqa: F401  (declares the op schemas the kernels register against)

NAME = "fasttrain_augment_ext"
CSRC = Path(__file__).resolve().parent / "csrc"
# The .cu files hold only kernels and their launchers (no torch header: nvcc compiles them for every
# architecture in seconds); the torch side of each op (checks, registration, host emulation) is in *_ops.cpp.
# Headers are tracked by the build itself (a changed header recompiles what includes it).
SOURCES = ("augment_cuda.cu", "augment_ops.cpp", "crop_resize_cuda.cu", "crop_resize_ops.cpp")
# torch adds the C++ standard it needs (C++20 from torch 2.13 on). No --use_fast_math: it flushes
# subnormals to zero, which would change results. -ffp-contract=off: the host compiler must not fuse
# a * b + c into an FMA in the emulations (crop_resize.h's rule rounds every operation on its own).
NVCC_FLAGS = ["-O3", "-lineinfo", "-Xcompiler", "-ffp-contract=off"]
CXX_FLAGS = ["-O3", "-ffp-contract=off"]

# torch's builder holds `<build dir>/lock` while it compiles and waits, forever, while it exists. A build
# killed mid-way (a timeout, Ctrl-C at the wrong moment) leaves it behind; one older than any real build
# (about a minute on a GPU machine, a few on a busy 2-core one) is stale.
STALE_LOCK_S = 20 * 60

_lock = threading.Lock()
_error: ExtensionUnavailable | None = None


class ExtensionUnavailable(RuntimeError):
    """The extension cannot be built or loaded here: `reason` says why, `hint` how to fix it."""

    def __init__(self, reason: str, hint: str):
        super().__init__(f"{reason}. Fix: {hint}")
        self.reason = reason
        self.hint = hint


def cache_dir() -> Path:
    """The build directory of this source tree. Two checkouts (or a copy of one) get two directories: the
    build records its sources' absolute paths, so sharing one directory would rebuild on every switch."""
    if os.environ.get("FASTTRAIN_EXT_DIR"):
        return Path(os.environ["FASTTRAIN_EXT_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tree = hashlib.sha1(str(CSRC).encode()).hexdigest()[:10]
    tag = f"torch{torch.__version__}-cuda{torch.version.cuda}-py{sys.version_info[0]}{sys.version_info[1]}-{tree}"
    return base / "fasttrain" / "cuda_ext" / re.sub(r"[^A-Za-z0-9._-]", "_", tag)


def _has_toolkit(root: Path) -> bool:
    return (root / "bin" / "nvcc").exists() and any(
        (root / inc / "cuda_runtime.h").exists() for inc in ("include", "targets/x86_64-linux/include",
                                                              "targets/sbsa-linux/include"))


def find_cuda_home() -> str | None:
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else from nvcc on the PATH (following symlinks,
    and asking nvcc itself when it is a wrapper script), else /usr/local/cuda."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var) and _has_toolkit(Path(os.environ[var])):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = Path(os.path.realpath(nvcc)).parent.parent
        if _has_toolkit(root):
            return str(root)
        try:  # a wrapper script: nvcc's dry run prints its own install location as "TOP=<bin>/.."
            dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60, check=False)
            m = re.search(r"^#\$ TOP=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
            if m and _has_toolkit(Path(os.path.normpath(m.group(1).strip()))):
                return os.path.normpath(m.group(1).strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if _has_toolkit(Path("/usr/local/cuda")):
        return "/usr/local/cuda"
    return None


def clear_stale_lock(build_dir: Path, max_age_s: float = STALE_LOCK_S) -> bool:
    """Remove the build lock a killed build left behind (older than `max_age_s`), saying so; True if removed.
    A younger lock belongs to a build still running in another process: torch's builder waits for it."""
    lock = Path(build_dir) / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return False
    if age < max_age_s:
        return False
    print(f"fasttrain: removing the stale CUDA build lock {lock} ({age / 60:.0f} min old, left by a build that "
          "was killed); rebuilding", file=sys.stderr, flush=True)
    lock.unlink(missing_ok=True)
    return True


def _kernel_registered() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("fasttrain::augment", "CUDA")


def build(build_dir: str | Path | None = None, *, verbose: bool = False) -> Path:
    """Compile (or reuse the cached build) and load the extension; returns the build directory.
    Raises ExtensionUnavailable with the reason and the fix. Needs no GPU when TORCH_CUDA_ARCH_LIST is set."""
    if torch.version.cuda is None:
        raise ExtensionUnavailable(f"this torch build ({torch.__version__}) has no CUDA support",
                                   "install a CUDA build of torch, or set FASTTRAIN_AUGMENT=reference")
    home = find_cuda_home()
    if home is None:
        raise ExtensionUnavailable(
            "no CUDA toolkit found (nvcc is not on the PATH and CUDA_HOME is unset)",
            f"install the CUDA toolkit matching torch's CUDA {torch.version.cuda} and set CUDA_HOME to its root, "
            "or set FASTTRAIN_AUGMENT=reference")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        raise ExtensionUnavailable("no GPU is visible and TORCH_CUDA_ARCH_LIST is unset, so there is no "
                                   "architecture to compile for", "set TORCH_CUDA_ARCH_LIST, e.g. '9.0'")
    import torch.utils.cpp_extension as cpp

    # torch resolves CUDA_HOME once, at import, and a wrapper nvcc on the PATH misleads it.
    os.environ.setdefault("CUDA_HOME", home)
    cpp.CUDA_HOME = home
    out = Path(build_dir) if build_dir is not None else cache_dir()
    try:
        cpp.verify_ninja_availability()
    except RuntimeError as e:
        raise ExtensionUnavailable("ninja is not installed (torch's extension builder needs it)",
                                   "pip install ninja") from e
    out.mkdir(parents=True, exist_ok=True)
    clear_stale_lock(out)
    if not any(out.glob(f"{NAME}*.so")):
        print(f"fasttrain: compiling the CUDA augmentation kernels (first use, under a minute; cached in {out})",
              file=sys.stderr, flush=True)
    try:
        cpp.load(name=NAME, sources=[str(CSRC / s) for s in SOURCES], extra_include_paths=[str(CSRC)],
                 extra_cflags=CXX_FLAGS, extra_cuda_cflags=NVCC_FLAGS, build_directory=str(out),
                 is_python_module=False, verbose=verbose)
    except Exception as e:  # compile/link errors arrive as RuntimeError with the compiler output
        detail = " ".join(str(e).split())[-600:]
        raise ExtensionUnavailable(
            f"building the CUDA augmentation kernels in {out} failed ({type(e).__name__}: {detail})",
            f"check that nvcc ({home}) matches torch's CUDA {torch.version.cuda}; rerun with FASTTRAIN_EXT_VERBOSE=1 "
            "for the full compiler output, or set FASTTRAIN_AUGMENT=reference") from e
    return out


def load() -> None:
    """Make the CUDA kernels available (build on first use); raise ExtensionUnavailable if impossible.
    A failure is remembered, so the build is attempted once per process."""
    global _error
    if _kernel_registered():
        return
    with _lock:
        if _kernel_registered():
            return
        if _error is not None:
            raise _error
        try:
            build(verbose=os.environ.get("FASTTRAIN_EXT_VERBOSE") == "1")
        except ExtensionUnavailable as e:
            _error = e
            raise


def available() -> bool:
    try:
        load()
        return True
    except ExtensionUnavailable:
        return False
