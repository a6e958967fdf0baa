"""The dataset readers, by name. Reader modules register themselves here; `fasttrain.data` imports them
all, and the converter looks them up (so imports run one way: converter -> registry <- readers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from .tensor_format import Split

ProgressFactory = Callable[[str, int], Callable[[int], None]]


@dataclass
class Loaded:
    """What a reader returns: the splits, the class names, and what to record about the source."""

    splits: dict[str, Split]
    classes: list[str]
    source: str
    extra_meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should hear about (e.g. a skipped split)


@dataclass
class Listed:
    """What a listing reader returns for the jpeg format (`jpeg_store.write_jpeg_store`): per split the
    source files, undecoded, as (name, label) with `read(name)` giving the bytes; the writer checks and
    stores each file. `where` (the source) prefixes the messages about a file; `meta_for(result)` gives
    meta.json entries that depend on which files were kept (e.g. per-image boxes)."""

    splits: dict[str, list[tuple[str, int]]]
    classes: list[str]
    source: str
    read: Callable[[str], bytes]
    where: str
    extra_meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    meta_for: Callable[..., dict] | None = None


# A reader is `fn(source: Path | None, progress_factory, **options) -> Loaded`; its options (name, size,
# val_fraction, skip_bad) are keyword-only and passed only when the user gave them. A listing reader is
# `fn(source: Path | None, **options) -> Listed`, by the same rule (the jpeg format's input).
Reader = Callable[..., Loaded]
Lister = Callable[..., Listed]
READERS: dict[str, Reader] = {}
LISTERS: dict[str, Lister] = {}


def _register(table: dict, name: str) -> Callable:
    def wrap(fn):
        if name in table:
            raise ValueError(f"dataset {name!r} is registered twice")
        table[name] = fn
        return fn

    return wrap


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    return _register(READERS, name)


def register_listing(name: str) -> Callable[[Lister], Lister]:
    return _register(LISTERS, name)

