"""A read-only view of the files in a dataset source: a folder, a .zip, or a .tar/.tar.gz/.tgz.

Readers for official layouts (Tiny ImageNet, Cars196, image folders) list `names` (relative, '/'-separated)
and `read` bytes without caring what the source is. A folder may also hold archives of its own (e.g. one
tarball per split, or Stanford Cars' `car_ims.tgz` beside `cars_annos.mat`): their members are listed
as if they were unpacked in place, so `car_ims.tgz` containing `car_ims/000001.jpg` reads as
`car_ims/000001.jpg`.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .sources import SourceError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ARCHIVE_SUFFIXES = TAR_SUFFIXES + (".zip",)


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


class _Zip:
    def __init__(self, path: Path):
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as e:
            raise SourceError(f"{path}: not a readable zip archive ({e})") from e
        self.path = path
        self.names = [i.filename for i in self.zf.infolist() if not i.is_dir()]

    def read(self, name: str) -> bytes:
        try:
            return self.zf.read(name)
        except (zipfile.BadZipFile, OSError, KeyError) as e:
            raise SourceError(f"{self.path}:{name}: cannot read member ({e})") from e


class _Tar:
    """Members are read in one sequential pass on first access: random access into a gzip stream is
    quadratic, and the datasets this serves fit in memory as compressed bytes."""

    def __init__(self, path: Path):
        try:
            with tarfile.open(path, "r:*") as tar:
                self.names = [m.name for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SourceError(f"{path}: not a readable tar archive ({e})") from e
        self.path = path
        self._data: dict[str, bytes] | None = None

    def read(self, name: str) -> bytes:
        if self._data is None:
            self._data = {}
            try:
                with tarfile.open(self.path, "r:*") as tar:
                    for m in tar:
                        if m.isfile():
                            f = tar.extractfile(m)
                            assert f is not None
                            self._data[m.name] = f.read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise SourceError(f"{self.path}: tar archive is truncated or corrupt ({e})") from e
        return self._data[name]


def _open_archive(path: Path) -> _Zip | _Tar:
    return _Zip(path) if path.name.lower().endswith(".zip") else _Tar(path)


class SourceTree:
    """Files under `path` (folder or archive) as relative posix names; nested archives in a folder are
    expanded in place. `names` is sorted; `read(name)` returns the bytes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        # name -> (where the bytes live, the name inside that container)
        self._where: dict[str, tuple[Path | _Zip | _Tar, str]] = {}
        if self.path.is_file():
            if not is_archive(self.path):
                raise SourceError(f"{self.path}: expected a directory or a .zip/.tar/.tar.gz/.tgz archive")
            self._add_archive(_open_archive(self.path))
        elif self.path.is_dir():
            for root, dirs, files in os.walk(self.path):
                dirs.sort()
                for fname in sorted(files):
                    full = Path(root) / fname
                    if is_archive(full):
                        self._add_archive(_open_archive(full))
                    else:
                        self._where[full.relative_to(self.path).as_posix()] = (full, "")
        else:
            raise SourceError(f"{self.path}: no such file or directory")
        self.names = sorted(self._where)

    def _add_archive(self, arc: _Zip | _Tar) -> None:
        for inner in arc.names:
            name = PurePosixPath(inner).as_posix()
            while name.startswith("./"):
                name = name[2:]
            self._where[name] = (arc, inner)

    def read(self, name: str) -> bytes:
        if name not in self._where:
            raise SourceError(f"{self.path}: expected a file {name!r}; is this the right source?")
        where, inner = self._where[name]
        if isinstance(where, Path):
            try:
                return where.read_bytes()
            except OSError as e:
                raise SourceError(f"{where}: cannot read ({e})") from e
        return where.read(inner)

    def find(self, filename: str) -> str | None:
        """The shallowest file whose path ends with `filename` (e.g. 'wnids.txt' under a top folder)."""
        hits = [n for n in self.names if n == filename or n.endswith("/" + filename)]
        return min(hits, key=lambda n: (n.count("/"), n)) if hits else None

    def __contains__(self, name: str) -> bool:
        return name in self._where
