"""Progressive resizing and the test resolution (FFCV's ImageNet schedule, libffcv/ffcv-imagenet).

Training starts at `min_res` pixels and ends at `max_res`: epochs 0..start_ramp (counted from 0, as FFCV
counts them) train at min_res, epochs from end_ramp on at max_res, and the epochs between follow the
straight line from (start_ramp, min_res) to (end_ramp, max_res) rounded to the nearest multiple of 32
(ties to the even multiple, as numpy's round in FFCV's get_resolution). Small images early make the first
epochs cheap; the last ones see the resolution the model is evaluated near. Evaluation runs at `val_res`,
above the training resolution ("Fixing the train-test resolution discrepancy", arXiv 1906.06423: a
random-resized crop enlarges objects, so the test image should be larger too).

Only numbers here: the trainer asks which resolution each epoch uses (and the compile warm-up asks for all
of them, so no graph is compiled inside a timed epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

RES_MULTIPLE = 32  # ramp resolutions are multiples of this (FFCV's rounding; GPU kernels like it too)


@dataclass(frozen=True)
class ResolutionSchedule:
    min_res: int
    max_res: int
    start_ramp: int = 0  # the last epoch (from 0) at min_res
    end_ramp: int = 0  # the first epoch at max_res

    def __post_init__(self) -> None:
        if not 0 < self.min_res <= self.max_res:
            raise ValueError(f"min_res ({self.min_res}) must be > 0 and <= max_res ({self.max_res})")
        if not 0 <= self.start_ramp <= self.end_ramp:
            raise ValueError(f"start_ramp ({self.start_ramp}) must be >= 0 and <= end_ramp ({self.end_ramp})")

    def at(self, epoch: int) -> int:
        """The training resolution of `epoch` (counted from 0)."""
        if epoch <= self.start_ramp:
            return self.min_res
        if epoch >= self.end_ramp:
            return self.max_res
        t = (epoch - self.start_ramp) / (self.end_ramp - self.start_ramp)
        res = round((self.min_res + t * (self.max_res - self.min_res)) / RES_MULTIPLE) * RES_MULTIPLE
        # FFCV's ends are multiples of 32, so this never binds there; other ends stay the bounds
        return min(max(res, self.min_res), self.max_res)

    def resolutions(self, first_epoch: int, n_epochs: int) -> list[int]:
        """Every resolution epochs first_epoch..n_epochs-1 use, each once, in the order they come."""
        out: list[int] = []
        for epoch in range(first_epoch, n_epochs):
            if self.at(epoch) not in out:
                out.append(self.at(epoch))
        return out


def schedule_from(min_res: int | None, max_res: int | None, start_ramp: int, end_ramp: int) -> ResolutionSchedule | None:
    """The schedule a run's settings ask for, or None (train at the data's own size): max_res defaults to
    min_res (a fixed training resolution)."""
    if min_res is None and max_res is None:
        return None
    low = min_res if min_res is not None else max_res
    return ResolutionSchedule(low, max_res if max_res is not None else low, start_ramp, end_ramp)
