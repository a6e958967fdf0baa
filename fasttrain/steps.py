"""One training step of any task, shared by the classification and the retrieval trainer.

A task owns a model and its loss (`fasttrain.tasks`); everything around the loss is the same for every task
and lives here, once:

    Precision    the autocast dtype, the autocast context and the gradient scaler (fp16 on CUDA only)
    TrainStep      one call per batch: lr from the schedule -> forward + loss under autocast -> backward with
                 accumulation and clipping (optim.OptimizerStep) -> EMA after a real optimiser step -> lookahead
    EpochTally   an epoch's running loss / accuracy / sample sums on the device and its clock
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from .choices import amp_name
from .ema import ModelEma
from .optim import Lookahead, OptimizerStep, lr_multiplier, set_lr

if TYPE_CHECKING:  # annotations only: the config layer sits above the step
    from .config import RunConfig


@dataclass(frozen=True)
class Precision:
    """How the step computes: `dtype` is the autocast dtype, or None for fp32."""

    device: torch.device
    dtype: torch.dtype | None

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype augmented batches are produced in."""
        return self.dtype or torch.float32

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 on CUDA (bf16 and fp32 need none: the scaler is then a no-op)."""
        return torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16 and self.device.type == "cuda")

    @property
    def name(self) -> str:
        """The one spelling of the precision in headers and summaries: bf16, fp16 or off."""
        return amp_name(str(self.dtype) if self.dtype else None)


@dataclass
class StepResult:
    loss: torch.Tensor  # the batch-mean loss (before the division by accum_steps)
    logits: torch.Tensor | None  # None for tasks without classes (an embedding)
    targets: Any  # the targets the loss saw (PatchUp may have mixed them)
    lr: float  # the first param group's lr this step
    stepped: bool  # the optimiser stepped (an accumulation window closed)


class TrainStep:
    """Trains `task.model` one batch per call; `step` counts the batches done (a resume starts it there).

    The lr of batch `step` is lr_multiplier(step, total_steps) x each group's base_lr; an accumulation
    window closes early at the end of an epoch and at the last step, so no gradient is left behind."""

    def __init__(self, task, optimizer: torch.optim.Optimizer, cfg: RunConfig, precision: Precision, *,
                 total_steps: int, steps_per_epoch: int, ema: ModelEma | None = None,
                 lookahead: Lookahead | None = None, step: int = 0):
        self.task = task
        self.optimizer = optimizer
        self.cfg = cfg
        self.precision = precision
        self.scaler = precision.grad_scaler()
        self.optim_step = OptimizerStep(optimizer, self.scaler, cfg)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.ema = ema
        self.lookahead = lookahead
        self.step = step

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def __call__(self, inputs: torch.Tensor, targets: Any, *, end_of_epoch: bool, **task_kw: Any) -> StepResult:
        lr = set_lr(self.optimizer, lr_multiplier(self.step, self.total_steps, self.cfg, self.steps_per_epoch))
        with self.precision.autocast():
            loss, logits, targets = self.task.loss(inputs, targets, **task_kw)
        stepped = self.optim_step.backward(loss, flush=end_of_epoch or self.step + 1 == self.total_steps)
        self.step += 1
        if stepped and self.ema is not None:
            self.ema.update(self.task.model)
        if self.lookahead is not None:
            self.lookahead.step(self.task.model, self.step, final=self.step == self.total_steps)
        return StepResult(loss, logits, targets, lr, stepped)


class EpochTally:
    """An epoch's running sums, accumulated on the device (the host reads them only at log points), and its
    clock. `skip` batches were done before a mid-epoch checkpoint; their sums and seconds are carried in."""

    def __init__(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, skip: int = 0,
                 elapsed_s: float = 0.0):
        self.loss_sum, self.correct, self.seen, self.skip = loss_sum, correct, seen, skip
        self.done_s = elapsed_s
        self.t0 = time.perf_counter()

    @classmethod
    def start(cls, device: torch.device, position=None, epoch: int = 0) -> EpochTally:
        """Zeros, or what `position` (a checkpoint.Position) carries for the epoch it interrupted. Call it
        after the device is synchronised: the clock starts here."""
        if position is not None:
            return cls(*position.epoch_start(epoch, device))
        zero = torch.zeros((), device=device)
        return cls(zero, zero.clone(), 0)

    def add(self, result: StepResult, n: int) -> None:
        self.loss_sum += result.loss.detach() * n
        if result.logits is not None:
            self.correct += (result.logits.detach().argmax(1) == result.targets.y_a).sum()
        self.seen += n

    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0 + self.done_s

    def rate(self) -> float:
        """Images per second in this segment of the epoch (a resumed epoch counts its carried images too)."""
        return self.seen / (time.perf_counter() - self.t0)

    def means(self) -> tuple[float, float]:
        """(mean loss, accuracy) so far: a host sync."""
        n = max(self.seen, 1)
        return self.loss_sum.item() / n, self.correct.item() / n

    def sums(self) -> dict:
        """What a mid-epoch checkpoint keeps of this epoch."""
        return dict(loss_sum=self.loss_sum, correct=self.correct, seen=self.seen, elapsed_s=self.elapsed_s())
