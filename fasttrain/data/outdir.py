"""Where `convert` may write: the user's files are never deleted or overwritten.

`--out` may be a directory that does not exist, an empty one, or a dataset fasttrain wrote (its meta.json
says so; a directory written before meta.json had the "writer" field is recognised by its layout).
Anything else is refused with a message naming what is there. A fasttrain dataset is reused when it is
complete and was converted from the same request (dataset, name, format, source and options: a field the
user left unset matches anything); a different request is refused unless --force, and --force replaces
only a fasttrain dataset that holds nothing but what fasttrain wrote, never the --source, a folder inside
it, or a folder containing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..fileio import PARTIAL_MARKER, remove_stale_temp_dirs
from .errors import DatasetError
from .tensor_format import read_meta
from .verify import is_complete, is_fasttrain_meta, written_entries


def _refuse(out: Path, what: str, todo: str) -> DatasetError:
    return DatasetError(f"--out {out}: {what}; {todo}")


def _check_path(out: Path, source: Path | None) -> None:
    """Refuse outputs that cannot be a dataset directory or that overlap the source or the working dir."""
    absolute = Path(os.path.abspath(out))
    for parent in reversed(absolute.parents):
        if parent.exists() and not parent.is_dir():
            raise _refuse(out, f"{parent} is a file, not a directory", "choose an --out under a directory")
    if out.is_symlink():
        raise _refuse(out, "is a symbolic link", "give the directory it points to, or a new path")
    if out.exists() and not out.is_dir():
        raise _refuse(out, "is a file", "give a directory path (fasttrain never overwrites the file)")
    real, cwd = absolute.resolve(), Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise _refuse(out, "is the current directory (or contains it)",
                      "give a new directory for the dataset, e.g. --out data/NAME")
    if source is not None:
        src = Path(source).resolve()
        if real == src or real in src.parents:
            raise _refuse(out, f"is the --source {source} (or contains it)",
                          "write the dataset elsewhere, e.g. --out data/NAME-dataset")
        if src in real.parents:
            raise _refuse(out, f"lies inside the --source {source}", "write the dataset outside the source")
    existing = next(p for p in [absolute, *absolute.parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _refuse(out, f"{existing} is not writable", "choose a directory you can write to")


def _foreign_entries(entries: list[str], meta: dict) -> list[str]:
    return [e for e in entries if e not in written_entries(meta) and e != PARTIAL_MARKER]


def holds_only_fasttrain_files(folder: Path) -> bool:
    """Is `folder` empty, or a fasttrain dataset holding nothing fasttrain did not write? The check made
    again at the moment a dataset is replaced (`fileio.replacing`), on the folder moved aside."""
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return True
    try:
        meta = read_meta(folder)
    except DatasetError:
        return False
    return is_fasttrain_meta(meta) and not _foreign_entries(entries, meta)


def _matches(meta: dict, request: dict) -> bool:
    """Was `meta`'s dataset converted from `request`? Unset (None) request fields match anything."""
    recorded = meta.get("request")
    if recorded is None:  # written before requests were recorded: name and format are all we know
        recorded = {"name": meta.get("name"), "format": meta.get("format", "tensor")}
    return all(value is None or recorded.get(key, value) == value for key, value in request.items())


def plan_output(out: Path, *, source: Path | None, force: bool, request: dict,
                log: Callable[[str], None] = print) -> str:
    """'reuse' (a complete dataset of this request is there) or 'write' (allowed to write or replace);
    raises DatasetError when `out` holds anything fasttrain may not replace."""
    out = Path(out)
    _check_path(out, source)
    if out.parent.is_dir():
        _, unproven = remove_stale_temp_dirs(out.parent)
        for folder in unproven:
            log(f"note: left {folder} alone: its name looks like a temporary folder of an interrupted convert, "
                "but nothing in it proves fasttrain made it; delete it yourself if it is not yours")
    if not out.exists():
        return "write"
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return "write"
    try:
        meta = read_meta(out)
    except DatasetError:
        meta = None
    if meta is None or not is_fasttrain_meta(meta):
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise _refuse(out, f"is not empty and not a fasttrain dataset (it holds {shown})",
                      "fasttrain never deletes files it did not write: choose a new --out, or empty it yourself")
    foreign = _foreign_entries(entries, meta)
    if foreign:
        raise _refuse(out, f"holds a fasttrain dataset plus files fasttrain did not write ({', '.join(foreign[:5])})",
                      "move them away or choose a new --out (even --force never deletes them)")
    if force:
        return "write"
    described = f"a {meta.get('format', 'tensor')} dataset {meta.get('name')!r}"
    if _matches(meta, request):
        if is_complete(out, request["format"]):
            return "reuse"
        log(f"{out} holds an incomplete copy of {described}; rebuilding it")
        return "write"
    raise _refuse(out, f"already holds {described} from another request (source {meta.get('source')!r})",
                  "pass --force to replace it, or choose another --out")
