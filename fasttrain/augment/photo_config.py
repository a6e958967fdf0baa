"""The settings of the photo augmentations (fasttrain/augment/photo.py), apart from the ops: the trainer reads
them on every run, and the ops import torchvision (seconds of imports), which only a run that uses them needs."""

from __future__ import annotations

from dataclasses import dataclass

from ..choices import AUTO_AUGMENT


@dataclass(frozen=True)
class PhotoConfig:
    auto_augment: str = "none"  # none | randaugment | trivialaugment
    num_ops: int = 2  # RandAugment: ops applied in a row
    magnitude: int = 9  # RandAugment: the magnitude bin, 0 .. num_bins - 1
    num_bins: int = 31  # both policies: magnitude bins
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # brightness, contrast, saturation, hue
    random_erasing: float = 0.0  # probability that an image gets one erased rectangle

    def __post_init__(self) -> None:
        if self.auto_augment not in AUTO_AUGMENT:
            raise ValueError(f"auto_augment must be one of {AUTO_AUGMENT}, got {self.auto_augment!r}")
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")
        if self.num_bins < 2 or not 0 <= self.magnitude < self.num_bins:
            raise ValueError(f"magnitude must lie in [0, {self.num_bins - 1}], got {self.magnitude}")
        if len(self.color_jitter) != 4 or min(self.color_jitter) < 0 or self.color_jitter[3] > 0.5:
            raise ValueError("color_jitter must be 4 numbers >= 0 (brightness, contrast, saturation, hue), hue "
                             f"<= 0.5, got {self.color_jitter}")
        if not 0 <= self.random_erasing <= 1:
            raise ValueError(f"random_erasing must lie in [0, 1], got {self.random_erasing}")

    @property
    def slots(self) -> int:
        """Policy ops per image: num_ops for RandAugment, one for TrivialAugmentWide."""
        return {"none": 0, "randaugment": self.num_ops, "trivialaugment": 1}[self.auto_augment]

    @property
    def active(self) -> bool:
        return self.slots > 0 or any(self.color_jitter) or self.random_erasing > 0

    def jitter_ranges(self) -> list[tuple[float, float] | None]:
        """ColorJitter's ranges: [max(0, 1 - v), 1 + v] for brightness, contrast, saturation, [-v, v] for the
        hue; None when that adjustment is off."""
        b, c, s, h = self.color_jitter
        return [(max(0.0, 1 - v), 1 + v) if v else None for v in (b, c, s)] + [(-h, h) if h else None]
