"""Tables for people: `fasttrain recipes` never cuts a recipe name, neither in a terminal of 120 or 80 columns
(whole columns are left out there, and named) nor when redirected; `fasttrain zoo` prints a table in a
terminal, not Markdown source (the Markdown page is --markdown's). The terminal is a real pseudo-terminal
of the given width."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from fasttrain.config import RECIPES

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def in_terminal(args: list[str], columns: int) -> str:
    """stdout of `fasttrain ARGS` run on a pseudo-terminal `columns` wide, escape codes removed."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "fasttrain", *args], stdout=child, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=env)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
    return ANSI.sub("", b"".join(chunks).decode().replace("\r\n", "\n"))


def first_cells(text: str) -> list[str]:
    return [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("columns", [120, 80])
def test_recipes_in_a_terminal_keeps_every_name_whole(columns):
    out = in_terminal(["recipes"], columns)
    assert first_cells(out) == list(RECIPES)
    table_lines = [line for line in out.splitlines() if line[:1] in "┏┃┡│└"]
    assert table_lines and max(len(line) for line in table_lines) <= columns
    assert "…" not in "".join(table_lines)  # whole columns left out, no cell cut
    assert "left out at" in out and "data" in out.split("left out at")[1]  # and said which


def test_recipes_redirected_keeps_every_name_and_column():
    env = dict(os.environ, COLUMNS="80")
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "recipes"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert first_cells(proc.stdout) == list(RECIPES)
    assert "…" not in proc.stdout and "left out" not in proc.stdout
    assert "data/imagenet-jpeg" in proc.stdout  # the last column is there


def test_zoo_prints_a_table_in_a_terminal_and_markdown_only_when_asked(tmp_path):
    out = in_terminal(["zoo", "--models", "resnet9,airbench"], 100)
    assert first_cells(out) == ["resnet9", "airbench"]
    assert "|---" not in out and "`resnet9`" not in out  # not Markdown source
    assert "2 models" in out
    md = tmp_path / "zoo.md"
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "zoo", "--models", "resnet9", "--markdown", str(md)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| `resnet9` | resnet9 |" in md.read_text() and "|---|" in md.read_text()
