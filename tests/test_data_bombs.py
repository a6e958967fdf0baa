"""Archive bombs are refused by name in bounded memory: a 1.2 MB tar.gz or zip of 6 members x 200 MB of
zeros named .jpg, through the real CLI, with the peak resident memory of the convert process measured
(getrusage of a wrapper process whose only child is the convert)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import pytest

MB = 1 << 20
MEMBERS = [f"bomb/{'ab'[i % 2]}/{i}.jpg" for i in range(6)]
MEMBER_MB = 200
# Peak RSS of the convert above its own start-up: reading one 200 MB member would cost 200 MB, the old
# whole-archive read 1 GB.
MAX_EXTRA_RSS_MB = 100
# The whole convert process, start-up included (a 2 GB container must survive any archive with room to spare):
# convert imports no torch (that alone is ~0.7-0.9 GB of resident libraries); it starts at ~60 MB.
MAX_PEAK_RSS_MB = 500
WRAPPER = ("import json, resource, subprocess, sys\n"
           "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
           "print(json.dumps({'rc': p.returncode, 'stderr': p.stderr,\n"
           "                  'peak_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n")


def deflate_zeros(n_mb: int) -> tuple[bytes, int]:
    """A raw deflate stream of n_mb MiB of zeros and its CRC-32, in milliseconds: after a full flush the
    compressor starts afresh, so every further MiB of zeros compresses to the same bytes."""
    zeros = bytes(MB)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    steady = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(n_mb):
        crc = zlib.crc32(zeros, crc)
    return first + steady * (n_mb - 1) + comp.flush(), crc


def _gzip_member(deflated: bytes, crc: int, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)


def _gzip(data: bytes) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return _gzip_member(comp.compress(data) + comp.flush(), zlib.crc32(data), len(data))


def tar_gz_bomb(path: Path, members: list[str] = MEMBERS, member_mb: int = MEMBER_MB) -> Path:
    """A gzip of concatenated members (valid gzip): each tar header, then the zeros of its member."""
    zeros, crc = deflate_zeros(member_mb)
    body = _gzip_member(zeros, crc, member_mb * MB)  # a multiple of 512 bytes: no tar padding needed
    with open(path, "wb") as f:
        for name in members:
            info = tarfile.TarInfo(name)
            info.size = member_mb * MB
            f.write(_gzip(info.tobuf(format=tarfile.GNU_FORMAT)) + body)
        f.write(_gzip(bytes(1024)))  # the end-of-archive blocks
    return path


def zip_bomb(path: Path, members: list[str] = MEMBERS, member_mb: int = MEMBER_MB) -> Path:
    """Deflated members written by hand (local headers, data, central directory)."""
    zeros, crc = deflate_zeros(member_mb)
    size = member_mb * MB
    central = b""
    with open(path, "wb") as f:
        for name in members:
            offset, raw = f.tell(), name.encode()
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(zeros), size, len(raw), 0)
                    + raw + zeros)
            central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(zeros), size,
                                   len(raw), 0, 0, 0, 0, 0o100644 << 16, offset) + raw
        start = f.tell()
        f.write(central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central),
                                      start, 0))
    return path


def convert_peak(source: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "fasttrain", "convert", "imagefolder", "--source", str(source), "--name", "b",
           "--out", str(out)]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_bombs_are_what_they_claim(tmp_path):
    """The builders' archives are valid: sizes as announced, and a member really decompresses to zeros."""
    import zipfile

    with tarfile.open(tar_gz_bomb(tmp_path / "b.tar.gz")) as tar:
        first = tar.next()
        assert first.name == MEMBERS[0] and first.size == MEMBER_MB * MB
        head = tar.extractfile(first).read(4 * MB)
        assert head == bytes(4 * MB)
    with zipfile.ZipFile(zip_bomb(tmp_path / "b.zip")) as zf:
        assert [i.file_size for i in zf.infolist()] == [MEMBER_MB * MB] * len(MEMBERS)
        with zf.open(MEMBERS[-1]) as f:
            assert f.read(4 * MB) == bytes(4 * MB)
    assert (tmp_path / "b.tar.gz").stat().st_size < 2 * MB and (tmp_path / "b.zip").stat().st_size < 2 * MB


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB (Linux)")
def test_archive_bombs_are_refused_by_name_in_bounded_memory(tmp_path):
    baseline = convert_peak(tmp_path / "missing.zip", tmp_path / "out0")  # start-up, then a one-line refusal
    assert baseline["rc"] == 2 and "no such file" in baseline["stderr"]
    assert baseline["peak_mb"] < MAX_PEAK_RSS_MB, baseline
    for bomb in (tar_gz_bomb(tmp_path / "bomb.tar.gz"), zip_bomb(tmp_path / "bomb.zip")):
        res = convert_peak(bomb, tmp_path / "out")
        lines = res["stderr"].strip().splitlines()
        assert res["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), res
        assert f"{bomb.name}:{MEMBERS[0]}: decompresses past 64 MB" in lines[0], lines[0]
        extra = res["peak_mb"] - baseline["peak_mb"]
        print(f"{bomb.name}: peak RSS {res['peak_mb']:.0f} MB, start-up {baseline['peak_mb']:.0f} MB")
        assert extra < MAX_EXTRA_RSS_MB, (bomb.name, res["peak_mb"], baseline["peak_mb"])
        assert res["peak_mb"] < MAX_PEAK_RSS_MB, (bomb.name, res["peak_mb"])
        assert not (tmp_path / "out").exists()


# Many members each just under the 64 MB cap of one image file: 8 x 63 MB = 504 MB in all. Each is allowed
# alone; held together (a tar's members were all read into memory: peak 900 MB with 12 of them, 648 MB with
# these 8; and a decode block held 4096 files' bytes) they cost their total. Now a tar is unpacked to an
# anonymous temporary file and read back one member at a time, and a decode block holds at most 128 MB of
# files plus one: 128 + 63 MB over a ~60 MB start (measured: 196 MB).
NEAR_CAP = [f"bomb/{'ab'[i % 2]}/{i:02d}.jpg" for i in range(8)]
NEAR_CAP_MB = 63


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB (Linux)")
def test_many_members_just_under_the_cap_are_not_held_at_once(tmp_path):
    for bomb in (tar_gz_bomb(tmp_path / "many.tar.gz", NEAR_CAP, NEAR_CAP_MB),
                 zip_bomb(tmp_path / "many.zip", NEAR_CAP, NEAR_CAP_MB)):
        assert bomb.stat().st_size < 2 * MB
        res = convert_peak(bomb, tmp_path / "out")
        lines = res["stderr"].strip().splitlines()
        assert res["rc"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), res
        assert bomb.name in lines[0] and any(m in lines[0] for m in NEAR_CAP), lines[0]  # a member: not an image
        print(f"{bomb.name}: peak RSS {res['peak_mb']:.0f} MB")
        assert res["peak_mb"] < MAX_PEAK_RSS_MB, (bomb.name, res["peak_mb"])
        assert not (tmp_path / "out").exists()
