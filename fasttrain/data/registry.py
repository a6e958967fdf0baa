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


# A reader is `fn(source: Path | None, progress_factory, **options) -> Loaded`; its options (name, size,
# val_fraction, skip_bad) are keyword-only and passed only when the user gave them.
Reader = Callable[..., Loaded]
READERS: dict[str, Reader] = {}


def register_dataset(name: str) -> Callable[[Reader], Reader]:
    def wrap(fn: Reader) -> Reader:
        if name in READERS:
            raise ValueError(f"dataset {name!r} is registered twice")
        READERS[name] = fn
        return fn

    return wrap

