"""A read-only view of the files in a dataset source: a folder, a .zip, or a .tar/.tar.gz/.tgz.

Readers (CIFAR image folders, Tiny ImageNet, Cars196, image folders) list `names` (relative,
'/'-separated) and `read` bytes without caring what the source is. The rules:

- Archives are opened only when they are the source itself or lie directly in the source folder (one
  tarball per split, as in the offline CIFAR-10 JPEG copy, or Stanford Cars' `car_ims.tgz` beside
  `cars_annos.mat`); their members are listed as if unpacked in place. An archive deeper in the tree is
  not opened: it is one more file (for an image folder, a non-image file). A member whose name is already
  taken (by a real file or another archive's member) is an error naming both: nothing is merged over.
- Only regular files are read. Symbolic links, hard-link members, FIFOs, devices and sockets are never
  opened: they are an error naming them, or with `skip_bad` skipped and recorded in `skipped` (which the
  readers write to meta.json). So are files over MAX_FILE_BYTES.
- A truncated or corrupt archive is named as such.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from .errors import BadFile, SourceError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ARCHIVE_SUFFIXES = TAR_SUFFIXES + (".zip",)
MAX_FILE_BYTES = 256 << 20  # per file: no image or annotation file of a supported dataset comes near it
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error)  # what a bad archive raises


def truncated_archive(path: Path, e: BaseException) -> SourceError:
    return SourceError(f"{path}: the tar archive is truncated or corrupt ({type(e).__name__}: {e}); "
                       "download or copy it again")


def is_archive(path: Path | str) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def special_kind(mode: int) -> str | None:
    """What a non-regular file is ('symbolic link', 'FIFO', ...), or None for a regular file."""
    for test, kind in ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory")):
        if test(mode):
            return kind
    return None


def read_regular_file(path: Path, cap: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of `path`, which must be a regular file (after following links) of at most `cap` bytes;
    FIFOs and devices are refused before they are opened."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from e
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise SourceError(f"{path}: not a regular file (a {kind}); only regular files are read")
    if st.st_size > cap:
        raise SourceError(f"{path}: {st.st_size} bytes, over the {cap}-byte limit per file")
    try:
        with open(path, "rb") as f:
            data = f.read(cap + 1)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from e
    if len(data) > cap:
        raise SourceError(f"{path}: over the {cap}-byte limit per file")
    return data


class _Zip:
    def __init__(self, path: Path):
        try:
            self.zf = zipfile.ZipFile(path)
            infos = [i for i in self.zf.infolist() if not i.is_dir()]
        except ARCHIVE_ERRORS as e:
            raise SourceError(f"{path}: not a readable zip archive, or truncated ({e})") from e
        self.path = path
        self.names: list[str] = []
        self.special: dict[str, str] = {}  # member -> why it is not read
        for info in infos:
            kind = special_kind(info.external_attr >> 16) if info.external_attr >> 16 else None
            if kind is not None:
                self.special[info.filename] = f"a {kind} member"
            elif info.file_size > MAX_FILE_BYTES:
                self.special[info.filename] = f"{info.file_size} bytes, over the {MAX_FILE_BYTES}-byte limit"
            else:
                self.names.append(info.filename)

    def read(self, name: str) -> bytes:
        try:
            return self.zf.read(name)
        except (*ARCHIVE_ERRORS, KeyError) as e:
            raise SourceError(f"{self.path}:{name}: cannot read member; the archive is truncated or corrupt "
                              f"({e})") from e


class _Tar:
    """Members are read in one sequential pass on first access: random access into a gzip stream is
    quadratic, and the datasets this serves fit in memory as compressed bytes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            tar = tarfile.open(path, "r:*")
        except ARCHIVE_ERRORS as e:
            raise SourceError(f"{path}: not a readable tar archive ({e})") from e
        self.names = []
        self.special: dict[str, str] = {}
        try:
            with tar:
                for m in tar.getmembers():
                    if m.isdir():
                        continue
                    if not m.isfile():
                        kind = ("symbolic link" if m.issym() else "hard link" if m.islnk() else
                                "FIFO" if m.isfifo() else "device" if m.ischr() or m.isblk() else "special file")
                        self.special[m.name] = f"a {kind} member"
                    elif m.size > MAX_FILE_BYTES:
                        self.special[m.name] = f"{m.size} bytes, over the {MAX_FILE_BYTES}-byte limit"
                    else:
                        self.names.append(m.name)
        except ARCHIVE_ERRORS as e:
            raise truncated_archive(self.path, e) from e
        self._data: dict[str, bytes] | None = None

    def read(self, name: str) -> bytes:
        if self._data is None:
            wanted = set(self.names)
            self._data = {}
            try:
                with tarfile.open(self.path, "r:*") as tar:
                    for m in tar:
                        if m.name in wanted and m.isfile():
                            f = tar.extractfile(m)
                            assert f is not None
                            self._data[m.name] = f.read()
            except ARCHIVE_ERRORS as e:
                self._data = None
                raise truncated_archive(self.path, e) from e
        return self._data[name]


def _open_archive(path: Path) -> _Zip | _Tar:
    return _Zip(path) if path.name.lower().endswith(".zip") else _Tar(path)


def _clean(name: str) -> str:
    name = PurePosixPath(name).as_posix()
    while name.startswith("./"):
        name = name[2:]
    return name


class SourceTree:
    """Files under `path` (folder or archive) as relative posix names, by the rules in the module
    docstring. `names` is sorted; `read(name)` returns the bytes; `skipped` lists what was not read."""

    def __init__(self, path: str | Path, *, skip_bad: bool = False):
        self.path = Path(path)
        self.skip_bad = skip_bad
        self.skipped: list[BadFile] = []
        # name -> (where the bytes live, the name inside that container)
        self._where: dict[str, tuple[Path | _Zip | _Tar, str]] = {}
        if self.path.is_file():
            if not is_archive(self.path):
                raise SourceError(f"{self.path}: expected a directory or a .zip/.tar/.tar.gz/.tgz archive")
            self._add_archive(_open_archive(self.path))
        elif self.path.is_dir():
            self._add_folder()
        elif self.path.exists():
            raise SourceError(f"{self.path}: not a directory or an archive "
                              f"(a {special_kind(os.stat(self.path).st_mode)})")
        else:
            raise SourceError(f"{self.path}: no such file or directory")
        self.names = sorted(self._where)

    def _skip(self, name: str, reason: str) -> None:
        if not self.skip_bad:
            raise SourceError(f"{self.path}: {name}: {reason}, not read; remove it, or pass --skip-bad to skip "
                              "it (it is then listed in the dataset's meta.json)")
        self.skipped.append(BadFile(name, reason))

    def _add_folder(self) -> None:
        archives = []
        for root, dirs, files in os.walk(self.path):
            rel_root = Path(root).relative_to(self.path)
            for d in sorted(dirs):
                if (Path(root) / d).is_symlink():  # os.walk lists it but does not descend: say so
                    self._skip((rel_root / d).as_posix(), "a symbolic link to a directory")
            dirs[:] = sorted(d for d in dirs if not (Path(root) / d).is_symlink())
            for fname in sorted(files):
                full = Path(root) / fname
                rel = (rel_root / fname).as_posix()
                kind = special_kind(os.lstat(full).st_mode)
                if kind is not None:
                    self._skip(rel, f"a {kind}")
                elif os.lstat(full).st_size > MAX_FILE_BYTES:
                    self._skip(rel, f"over the {MAX_FILE_BYTES}-byte limit per file")
                elif is_archive(fname) and root == str(self.path):
                    archives.append(full)
                else:
                    self._where[rel] = (full, "")
        for full in archives:  # after the real files, so a member can never take a real file's place
            self._add_archive(_open_archive(full))

    def _add_archive(self, arc: _Zip | _Tar) -> None:
        for inner, reason in arc.special.items():
            self._skip(f"{arc.path.name}:{inner}", reason)
        for inner in arc.names:
            name = _clean(inner)
            if name in self._where:
                where, other = self._where[name]
                taken = where if isinstance(where, Path) else f"{where.path.name}:{other}"
                raise SourceError(f"{self.path}: {arc.path.name}:{inner} has the same path as {taken}; "
                                  "nothing is merged over another file: remove one of them")
            self._where[name] = (arc, inner)

    def read(self, name: str) -> bytes:
        if name not in self._where:
            raise SourceError(f"{self.path}: expected a file {name!r}; is this the right source?")
        where, inner = self._where[name]
        if isinstance(where, Path):
            return read_regular_file(where)
        return where.read(inner)

    def find(self, filename: str) -> str | None:
        """The shallowest file whose path ends with `filename` (e.g. 'wnids.txt' under a top folder)."""
        hits = [n for n in self.names if n == filename or n.endswith("/" + filename)]
        return min(hits, key=lambda n: (n.count("/"), n)) if hits else None

    def __contains__(self, name: str) -> bool:
        return name in self._where
