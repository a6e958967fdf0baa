"""The one rule for every file a command writes outside a run folder or a dataset (eval --out, report
--plot/--json, export, zoo --out/--markdown, the benchmarks' result files):

- the file is written to a temporary name beside it, flushed to disk, then renamed into place, so it is
  never half written;
- an existing file is replaced only if fasttrain wrote it, or with --force (force=True); a folder is never
  replaced, not even with --force; a file that appears at the path while fasttrain writes is kept (the
  rename refuses to replace it);
- a missing parent folder is created; a parent that is a file is named in the error.

How fasttrain knows it wrote a file: the file says so, as a converted dataset's meta.json and an exported
model already do. JSON outputs are objects with "writer": "fasttrain" (the field meta.json carries), plots
carry it in their metadata (PNG "Software", SVG and PDF "Creator"), Markdown starts with a comment line,
exported models carry their "fasttrain" metadata entry (`exporting.written_by_fasttrain`). A user's own
file has none of these, so it is never taken for ours.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .fileio import TargetExists, atomic_file
from .words import spelled, switch

WRITER = "fasttrain"
MARKDOWN_SIGNATURE = f"<!-- written by {WRITER}: it may replace this file; remove this line to keep it -->"
# matplotlib's savefig(metadata=...) per format: where a plot carries its writer
PLOT_METADATA = {"png": {"Software": WRITER}, "svg": {"Creator": WRITER}, "pdf": {"Creator": WRITER}}


class OutputError(ValueError):
    """An output path fasttrain may not write; the message names the option, the path and what to do."""


def signed(obj: dict) -> dict:
    """A JSON output object carrying fasttrain's signature (first, so a reader sees it at once)."""
    return {"writer": WRITER, **obj}


@dataclass(frozen=True)
class Target:
    """An output path checked by `claim`: `replace` is whether a file there may be replaced (it was ours,
    or --force); when False, the file must still be absent when the new one is renamed into place."""

    path: Path
    replace: bool


def claim(path: str | os.PathLike, *, option: str, force: bool = False,
          ours: Callable[[Path], bool] | None = None) -> Target:
    """Check that `path` may be written under the rule above, before any work; OutputError if not.
    `ours` decides whether an existing file is fasttrain's (default: `written_by_fasttrain`)."""
    path = Path(path)
    for parent in reversed(Path(os.path.abspath(path)).parents):
        if parent.exists() and not parent.is_dir():
            raise OutputError(f"{spelled(option, path)}: {parent} is a file, not a folder; choose a path under a "
                              f"folder")
    if path.is_symlink():
        raise OutputError(f"{spelled(option, path)}: is a symbolic link; fasttrain does not write through links: "
                          f"name the file itself, or a new path")
    if path.is_dir():
        raise OutputError(f"{spelled(option, path)}: is a folder; name a file to write in it "
                          f"(fasttrain never replaces a folder, even with {switch('--force')})")
    if not path.exists():
        return Target(path, replace=False)
    if force or (ours or written_by_fasttrain)(path):
        return Target(path, replace=True)
    raise OutputError(f"{spelled(option, path)}: exists and fasttrain did not write it; pass {switch('--force')} to "
                      f"replace it, or choose another path")


def claim_in_folder(folder: str | os.PathLike, names: tuple[str, ...], *, option: str,
                    force: bool = False) -> dict[str, Target]:
    """`claim` for several files a command writes into one folder (created if missing): all are checked
    before any is written, and the user's files among them are named together in one error."""
    folder = Path(folder)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise OutputError(f"{option} {folder}: is a file, not a folder; give a folder to write "
                          f"{', '.join(names)} into (fasttrain never replaces the file)")
    targets, foreign = {}, []
    for name in names:
        try:
            targets[name] = claim(folder / name, option=option, force=force)
        except OutputError:
            if not (folder / name).is_file() or (folder / name).is_symlink():
                raise
            foreign.append(name)
    if foreign:
        raise OutputError(f"{option} {folder}: holds {', '.join(foreign)} that fasttrain did not write; pass "
                          f"--force to replace them, or choose another {option}")
    return targets


@contextmanager
def temp_path(target: Target | str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside the target for a writer to fill (by name: exporters want a path); once the
    block ends it is flushed to disk and renamed into place, on any failure removed.

    A `Target` (from `claim`) that may not replace anything is published with a no-replace link, so a file
    the user created meanwhile is kept (OutputError). A plain path is replaced: for files whose folder's
    own rules already decided (a run folder's plots)."""
    target = target if isinstance(target, Target) else Target(Path(target), replace=True)
    path = target.path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(path, replace=target.replace) as tmp:
            yield tmp
    except TargetExists:
        raise OutputError(f"{path}: a file appeared there while fasttrain was writing it; it was kept: choose "
                          f"another path, or pass --force to replace it") from None


def publish(target: Target | str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write through `write(file)`, as `temp_path` publishes."""
    with temp_path(target) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(target.path if isinstance(target, Target) else target)


def write_json(target: Target | str | os.PathLike, obj: dict) -> Path:
    """A signed JSON object (see `signed`), published as `publish` does."""
    text = json.dumps(signed(obj), indent=2) + "\n"
    return publish(target, lambda f: f.write(text.encode()))


def write_markdown(target: Target | str | os.PathLike, text: str) -> Path:
    body = f"{MARKDOWN_SIGNATURE}\n{text}" + ("" if text.endswith("\n") else "\n")
    return publish(target, lambda f: f.write(body.encode()))


def write_figure(target: Target | str | os.PathLike, fig, *, dpi: int = 110) -> Path:
    """A matplotlib figure, signed in its metadata (PLOT_METADATA), published as `publish` does; the format
    is the file name's suffix (png when it has none)."""
    fmt = Path(target.path if isinstance(target, Target) else target).suffix.lower().lstrip(".") or "png"
    return publish(target, lambda f: fig.savefig(f, format=fmt, dpi=dpi, metadata=PLOT_METADATA.get(fmt)))


def claim_or_exit(*paths: str | os.PathLike, option: str, force: bool = False) -> list[Target]:
    """`claim` for scripts outside the CLI (the benchmarks' result files): every path checked before any
    work, a refusal answered as the CLI answers it, one `error:` line on stderr and exit code 2."""
    try:
        return [claim(path, option=option, force=force) for path in paths]
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


# ============================================================================ whose file is it
def written_by_fasttrain(path: str | os.PathLike) -> bool:
    """Whether the file at `path` carries fasttrain's signature (by its kind, from the name's suffix)."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    try:
        if kind == "json":
            obj = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(obj, dict) and obj.get("writer") == WRITER
        if kind == "md":
            with open(path, encoding="utf-8") as f:
                return f.readline().rstrip("\n") == MARKDOWN_SIGNATURE
        if kind == "png":
            return _png_text(path).get("Software") == WRITER
        if kind == "svg":  # matplotlib writes the creator near the top, in the <metadata> block
            with open(path, "rb") as f:
                head = f.read(1 << 16)
            return re.search(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>fasttrain</dc:title>", head) is not None
        if kind == "pdf":  # the document information dictionary, written last
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 16)))
                tail = f.read()
            return b"/Creator (fasttrain)" in tail
    except (OSError, ValueError, UnicodeDecodeError, struct.error):
        return False  # unreadable or not what its name says: not ours
    return False


def _png_text(path: Path) -> dict[str, str]:
    """The tEXt entries of a PNG file before its image data."""
    entries: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return entries
        while True:
            head = f.read(8)
            if len(head) < 8:
                return entries
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND") or length > (1 << 20):
                return entries
            data = f.read(length)
            f.seek(4, os.SEEK_CUR)  # CRC
            if kind == b"tEXt" and b"\0" in data:
                key, value = data.split(b"\0", 1)
                entries[key.decode("latin-1")] = value.decode("latin-1")
