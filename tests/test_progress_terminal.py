"""Ctrl-C in a terminal: the live bar is taken off the screen before the stop message, so "interrupted by
SIGINT ..." starts a line of its own (not "... run ETA 0:00:07interrupted") and no bar is redrawn after the
resume hint. The run happens on a real pseudo-terminal; its output is replayed on a small screen model (the
few control sequences rich uses: carriage return, newline, cursor up, erase line, colours)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest

CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen(text: str) -> list[str]:
    """The lines a terminal shows after printing `text` (only what rich's live display emits is modelled)."""
    lines, row, col = [""], 0, 0
    i = 0
    while i < len(text):
        m = CSI.match(text, i)
        if m:
            arg, op = m.groups()
            if op == "A":  # cursor up
                row = max(0, row - int(arg or 1))
            elif op == "K":  # erase the line (rich: 2K, after a carriage return)
                lines[row] = ""
            i = m.end()
            continue
        ch = text[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row += 1
            col = 0
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row].ljust(col)
            lines[row] = line[:col] + ch + line[col + 1:]
            col += 1
        i += 1
    return [line.rstrip() for line in lines]


def run_and_interrupt(args: list[str], columns: int = 120, timeout: float = 120) -> tuple[int, str]:
    """Runs `python -m fasttrain ARGS` on a pseudo-terminal and sends SIGINT (as Ctrl-C does, to the whole
    process group) once the second epoch's bar is drawn; returns the exit code and everything printed."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "fasttrain", *args], stdin=child, stdout=child, stderr=child,
                            env=env, start_new_session=True)
    os.close(child)
    out, sent, deadline = b"", False, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.05)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not data:
                break
            out += data
        if not sent and b"epoch 2/" in out and b"run ETA" in out.split(b"epoch 2/")[-1]:
            os.killpg(proc.pid, signal.SIGINT)
            sent = True
    else:
        os.killpg(proc.pid, signal.SIGKILL)
    os.close(main)
    assert sent, out.decode(errors="replace")[-2000:]
    return proc.wait(timeout=30), out.decode(errors="replace")


def test_ctrl_c_message_starts_its_own_line_and_the_bar_is_gone(cifar_tensor_slice, tmp_path):
    code, out = run_and_interrupt(["run", "airbench", "--recipe", "cpu-quick", "--data", cifar_tensor_slice,
                                   "--epochs", "20", "--batch-size", "5", "--width", "0.25", "--threads", "1",
                                   "--no-tensorboard", "--out", tmp_path / "run"])
    assert code == 130, out[-2000:]
    lines = [line for line in screen(out) if line]
    hint = next(i for i, line in enumerate(lines) if "interrupted by SIGINT" in line)
    assert lines[hint].startswith("interrupted by SIGINT at step"), lines[hint - 1:hint + 1]
    assert lines[hint + 1] == f"resume with: fasttrain run --resume {tmp_path / 'run'}"
    assert hint + 2 == len(lines)  # nothing after the hint: no bar redrawn
    assert not any("━" in line for line in lines)  # the transient bar left nothing on the screen
    assert re.match(r"epoch +\d+/20 train_loss", lines[hint - 1])  # the finished epochs' lines stay


def test_a_trainer_ending_in_an_exception_takes_its_bar_off_the_screen(monkeypatch):
    from fasttrain import progress

    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal for rich, so the bar is live
    bar = progress.EpochProgress(3, 10)
    assert bar.live

    @progress.closes_bars
    def trainer():
        bar.start_epoch(0)
        bar.update(3, 2.3, 0.1, 100.0)
        assert bar in progress._ON_SCREEN and bar.progress.live.is_started
        raise KeyboardInterrupt  # a second Ctrl-C, mid-epoch

    live = None
    with pytest.raises(KeyboardInterrupt):
        try:
            trainer()
        finally:
            live = bar.progress
    assert live is None and not progress._ON_SCREEN  # stopped: its refresh thread no longer redraws it
