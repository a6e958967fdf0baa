"""Compile torch-free C++ sources of csrc/ into a shared library with the host compiler (g++), for ctypes.

The library's file name carries a hash of everything that decides its contents (the sources, every header
in csrc/, the flags and the compiler), so a changed source or flag builds a new file and a cached one is
never stale. The compiler writes to a temporary name that is renamed into place: processes building the
same library at once each produce a whole file, and no lock is needed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"


class BuildError(RuntimeError):
    """The host compiler is missing or failed; the message says which, with the compiler's output."""


def compiler() -> str:
    gxx = shutil.which(os.environ.get("CXX") or "g++")
    if gxx is None:
        raise BuildError("no C++ compiler: g++ (or $CXX) is not on the PATH")
    return gxx


def build_shared_library(name: str, sources: tuple[str, ...], out_dir: str | Path, *, flags: tuple[str, ...] = (),
                         libs: tuple[str, ...] = ()) -> Path:
    """csrc/`sources` -> `out_dir`/lib<name>-<hash>.so (built unless that file exists); returns its path."""
    gxx = compiler()
    key = hashlib.sha256()
    for part in (gxx, *flags, *libs):
        key.update(part.encode() + b"\0")
    for path in sorted({*(CSRC / s for s in sources), *CSRC.glob("*.h")}):
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    out = Path(out_dir)
    lib = out / f"lib{name}-{key.hexdigest()[:16]}.so"
    if lib.exists():
        return lib
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{lib.name}.{os.getpid()}.tmp"
    cmd = [gxx, "-shared", "-fPIC", *flags, f"-I{CSRC}", *(str(CSRC / s) for s in sources), "-o", str(tmp), *libs]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"{Path(gxx).name} failed on {', '.join(sources)}: {proc.stderr[-2000:]}")
    os.replace(tmp, lib)
    return lib
