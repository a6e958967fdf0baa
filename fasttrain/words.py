"""How numbers are said to people, one way everywhere: "1 epoch" / "2 epochs", and epochs as 2 (not 2.0)
when whole."""

from __future__ import annotations


def count(n: int | float, noun: str, plural: str | None = None) -> str:
    """'1 epoch', '2 epochs', '0.5 epochs'; `plural` where adding an s is wrong ('1 process', '2 processes')."""
    return f"{number(n)} {noun if n == 1 else plural or noun + 's'}"


def number(x: int | float) -> str:
    """A count or an epoch number as written by hand: 2 for 2.0, 2.5 stays, ints as they are."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return f"{x:g}" if isinstance(x, float) else str(x)
