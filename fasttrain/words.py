"""How things are said to people, one way everywhere: "1 epoch" / "2 epochs", epochs as 2 (not 2.0) when
whole, and a setting named as the user gave it: `--out runs/a` on the command line, `out='runs/a'` from
Python (messages built inside `python_spelling()`, which the Python API's entry points enter)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


def count(n: int | float, noun: str, plural: str | None = None) -> str:
    """'1 epoch', '2 epochs', '0.5 epochs'; `plural` where adding an s is wrong ('1 process', '2 processes')."""
    return f"{number(n)} {noun if n == 1 else plural or noun + 's'}"


def number(x: int | float) -> str:
    """A count or an epoch number as written by hand: 2 for 2.0, 2.5 stays, ints as they are."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)


# ---------------------------------------------------------------------------- options or arguments
# "python" inside the Python API's entry points (fit, export); "command line" once the CLI has pinned it
# for a whole command (the CLI's export calls the same fasttrain.export); the command line's by default.
_SPELLING: ContextVar[str] = ContextVar("fasttrain_spelling", default="")


@contextmanager
def _spelling(value: str) -> Iterator[None]:
    token = _SPELLING.set(value)
    try:
        yield
    finally:
        _SPELLING.reset(token)


def python_spelling():
    """Inside this block, messages name settings as the Python API's keyword arguments (out=..., force=True)
    instead of command-line options (--out ..., --force), unless a CLI command runs it."""
    return _spelling(_SPELLING.get() or "python")


def command_line_spelling():
    """For a whole CLI command: its messages name command-line options, whatever it calls."""
    return _spelling("command line")


def spelled(option: str, value: object = None) -> str:
    """A command-line option (spelled "--out") as the user gave it: "--out runs/a" on the command line,
    "out='runs/a'" from Python; without a value, the name alone ("--out" / "out")."""
    if _SPELLING.get() != "python":
        return option if value is None else f"{option} {value}"
    name = option.lstrip("-").replace("-", "_")
    return name if value is None else f"{name}={str(value)!r}"


def switch(option: str) -> str:
    """A flag to pass: "--force" on the command line, "force=True" from Python."""
    return f"{spelled(option)}=True" if _SPELLING.get() == "python" else option
