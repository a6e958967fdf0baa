"""The data layer's two user-facing errors and the record of a skipped file (no project imports)."""

from __future__ import annotations

from dataclasses import dataclass


class SourceError(RuntimeError):
    """A source archive or folder is missing, malformed or unsafe. The message names the file."""


class DatasetError(RuntimeError):
    """A converted dataset (or an output directory) is missing, incomplete or inconsistent; the message
    names the file and what to do."""


@dataclass(frozen=True)
class BadFile:
    """A source file that was skipped (`--skip-bad`): not decodable, not an image, a link or a special file.
    Every one is recorded in the dataset's meta.json under "skipped"."""

    file: str
    error: str
