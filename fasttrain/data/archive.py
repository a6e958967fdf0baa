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
  readers write to meta.json). So are files over their size cap (`size_cap`: MAX_IMAGE_FILE_BYTES for an
  image file, MAX_FILE_BYTES for any other), checked on the size a header announces and again while
  reading: a member is streamed and never more than its cap + 1 bytes are decompressed, so an archive
  bomb (a small archive of huge members) is refused by name in bounded memory.
- Members are never held in memory all at once: a zip member is read when asked for; a tar's members are
  unpacked in one sequential pass into an anonymous temporary file (random access into a gzip stream is
  quadratic) and read back from it one at a time, once their total (known from the headers) was checked
  against the free space there. So many members each just under the cap cost disk, not memory.
- A truncated or corrupt archive is named as such.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .errors import BadFile, SourceError

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
ARCHIVE_SUFFIXES = TAR_SUFFIXES + (".zip",)
MAX_FILE_BYTES = 256 << 20  # per file: CIFAR-100's train pickle (155 MB) is the largest file of a dataset
MAX_IMAGE_FILE_BYTES = 64 << 20  # per image file: 20x an ImageNet photo's largest JPEG; bounds the memory
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm"}
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError, zlib.error)  # what a bad archive raises


def truncated_archive(path: Path, e: BaseException) -> SourceError:
    return SourceError(f"{path}: the tar archive is truncated or corrupt ({type(e).__name__}: {e}); "
                       "download or copy it again")


def is_archive(path: Path | str) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def size_cap(name: str) -> int:
    """The most bytes a file of this name may hold (or decompress to)."""
    return MAX_IMAGE_FILE_BYTES if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES else MAX_FILE_BYTES


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n} bytes"


def _limit(cap: int) -> str:
    return f"the limit of {_size(cap)} for one {'image ' if cap == MAX_IMAGE_FILE_BYTES else ''}file"


def too_big(cap: int) -> str:
    return f"decompresses past {_size(cap)} ({_limit(cap)})"


def read_capped(f, cap: int, where: str) -> bytes:
    """At most `cap` bytes from the file object `f`, streamed: a SourceError naming `where` if there are more."""
    data = f.read(cap + 1)
    if len(data) > cap:
        raise SourceError(f"{where}: {too_big(cap)}, more than its header announced; remove it from the source")
    return data


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
        raise SourceError(f"{path}: {_size(st.st_size)}, over {_limit(cap)}")
    try:
        with open(path, "rb") as f:
            return read_capped(f, cap, str(path))
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from e


Skip = Callable[[str, str], None]  # (member, why it is not read): an error, or recorded with skip_bad


class _Zip:
    def __init__(self, path: Path, skip: Skip):
        try:
            self.zf = zipfile.ZipFile(path)
            infos = [i for i in self.zf.infolist() if not i.is_dir()]
            self.dirs = [i.filename for i in self.zf.infolist() if i.is_dir()]
        except ARCHIVE_ERRORS as e:
            raise SourceError(f"{path}: not a readable zip archive, or truncated ({e})") from e
        self.path = path
        self.names: list[str] = []
        for info in infos:
            kind = special_kind(info.external_attr >> 16) if info.external_attr >> 16 else None
            if kind is not None:
                skip(info.filename, f"a {kind} member")
            elif info.file_size > size_cap(info.filename):
                skip(info.filename, too_big(size_cap(info.filename)))
            else:
                self.names.append(info.filename)

    def read(self, name: str) -> bytes:
        try:
            with self.zf.open(name) as f:  # the announced size may lie: the read is capped too
                return read_capped(f, size_cap(name), f"{self.path}:{name}")
        except (*ARCHIVE_ERRORS, KeyError) as e:
            raise SourceError(f"{self.path}:{name}: cannot read member; the archive is truncated or corrupt "
                              f"({e})") from e


class _Tar:
    """On first access the members are unpacked in one sequential pass into an anonymous temporary file
    (nothing is left behind, even by a killed process), then read from it by offset: bounded memory for any
    total size."""

    def __init__(self, path: Path, skip: Skip):
        self.path = path
        try:
            tar = tarfile.open(path, "r:*")
        except ARCHIVE_ERRORS as e:
            raise SourceError(f"{path}: not a readable tar archive ({e})") from e
        self.names = []
        self.dirs: list[str] = []
        self._sizes: dict[str, int] = {}  # as the headers say: a tar member's data is exactly that long
        try:
            with tar:
                for m in tar:  # member by member: a refusal comes before the rest is decompressed
                    if m.isdir():
                        self.dirs.append(m.name)
                        continue
                    if not m.isfile():
                        kind = ("symbolic link" if m.issym() else "hard link" if m.islnk() else
                                "FIFO" if m.isfifo() else "device" if m.ischr() or m.isblk() else "special file")
                        skip(m.name, f"a {kind} member")
                    elif m.size > size_cap(m.name):
                        skip(m.name, too_big(size_cap(m.name)))
                    else:
                        self.names.append(m.name)
                        self._sizes[m.name] = m.size
        except ARCHIVE_ERRORS as e:
            raise truncated_archive(self.path, e) from e
        self._unpacked = None  # the temporary file, once unpacked
        self._at: dict[str, tuple[int, int]] = {}  # member -> (offset, size) in it

    def read(self, name: str) -> bytes:
        if self._unpacked is None:
            self._unpacked = self._unpack()
        offset, size = self._at[name]
        return os.pread(self._unpacked.fileno(), size, offset)

    def _unpack(self):
        folder = tempfile.gettempdir()
        total, free = sum(self._sizes.values()), shutil.disk_usage(folder).free
        if total > free - (1 << 30):  # and leave a GB to everyone else
            raise SourceError(f"{self.path}: its members decompress to {_size(total)} in total, and {folder} (where "
                              f"they are unpacked while converting) has {_size(free)} free: set TMPDIR to a folder "
                              "with more space, or unpack the archive and pass the folder")
        out = tempfile.TemporaryFile(prefix="fasttrain-unpacked-")
        try:
            with tarfile.open(self.path, "r:*") as tar:
                for m in tar:
                    if m.name in self._sizes and m.isfile() and m.name not in self._at:
                        f = tar.extractfile(m)
                        assert f is not None
                        offset = out.seek(0, os.SEEK_END)
                        copied = _copy_capped(f, out, size_cap(m.name), f"{self.path}:{m.name}")
                        self._at[m.name] = (offset, copied)
            out.flush()  # read back with pread, below Python's buffer
        except ARCHIVE_ERRORS as e:
            out.close()
            self._at.clear()
            raise truncated_archive(self.path, e) from e
        except BaseException:
            out.close()
            self._at.clear()
            raise
        return out


def _copy_capped(src, dst, cap: int, where: str) -> int:
    """Stream at most `cap` bytes from `src` to `dst` in 1 MB pieces (read_capped's rule, without holding the
    member): the number of bytes copied, or a SourceError naming `where` if there are more."""
    copied = 0
    while piece := src.read(min(1 << 20, cap + 1 - copied)):
        copied += len(piece)
        if copied > cap:
            raise SourceError(f"{where}: {too_big(cap)}, more than its header announced; remove it from the source")
        dst.write(piece)
    return copied


def _open_archive(path: Path, skip: Skip) -> _Zip | _Tar:
    return (_Zip if path.name.lower().endswith(".zip") else _Tar)(path, skip)


def _escapes(name: str) -> bool:
    """A member name that would land outside the folder an archive unpacks to (`../x`, `/etc/x`, `..\\x`)."""
    return name.startswith(("/", "\\")) or ".." in re.split(r"[\\/]", name)


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
        self._dirs: set[str] = set()  # every folder seen (archive members' folders too), relative
        self._seen: set[str] = set()  # every file seen, read or not (a folder holding one is not empty)
        if self.path.is_file():
            if not is_archive(self.path):
                raise SourceError(f"{self.path}: expected a directory or a .zip/.tar/.tar.gz/.tgz archive")
            self._add_archive(self.path)
        elif self.path.is_dir():
            self._add_folder()
        elif self.path.exists():
            raise SourceError(f"{self.path}: not a directory or an archive "
                              f"(a {special_kind(os.stat(self.path).st_mode)})")
        else:
            raise SourceError(f"{self.path}: no such file or directory")
        self.names = sorted(self._where)
        holding = {parent.as_posix() for name in self._seen for parent in PurePosixPath(name).parents}
        self.empty_dirs = sorted(self._dirs - holding)  # folders with no file anywhere below them

    def _skip(self, name: str, reason: str) -> None:
        if not self.skip_bad:
            raise SourceError(f"{self.path}: {name}: {reason}, not read; remove it, or pass --skip-bad to skip "
                              "it (it is then listed in the dataset's meta.json)")
        self.skipped.append(BadFile(name, reason))

    def _add_folder(self) -> None:
        archives = []
        for root, dirs, files in os.walk(self.path):
            rel_root = Path(root).relative_to(self.path)
            self._dirs.add(rel_root.as_posix())
            self._seen.update((rel_root / f).as_posix() for f in files)
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
                elif os.lstat(full).st_size > size_cap(fname):
                    self._skip(rel, f"{_size(os.lstat(full).st_size)}, over {_limit(size_cap(fname))}")
                elif is_archive(fname) and root == str(self.path):
                    archives.append(full)
                else:
                    self._where[rel] = (full, "")
        for full in archives:  # after the real files, so a member can never take a real file's place
            self._add_archive(full)

    def _add_archive(self, path: Path) -> None:
        def skip(inner: str, reason: str) -> None:
            self._seen.add(_clean(inner))
            self._skip(f"{path.name}:{inner}", reason)

        arc = _open_archive(path, skip)
        self._dirs.update(_clean(d).rstrip("/") for d in arc.dirs if not _escapes(d))
        for inner in arc.names:
            if _escapes(inner):
                skip(inner, "its path escapes the archive (it holds '..' or starts at '/'); such a member is never "
                     "read")
                continue
            self._seen.add(_clean(inner))
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
            return read_regular_file(where, size_cap(name))
        return where.read(inner)

    def find(self, filename: str) -> str | None:
        """The shallowest file whose path ends with `filename` (e.g. 'wnids.txt' under a top folder)."""
        hits = [n for n in self.names if n == filename or n.endswith("/" + filename)]
        return min(hits, key=lambda n: (n.count("/"), n)) if hits else None

    def __contains__(self, name: str) -> bool:
        return name in self._where
