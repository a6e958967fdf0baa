"""Why a run stops before its end, and how it stops well: stop signals and a diverged loss.

- `StopSignals`: the first SIGINT/SIGTERM only sets a flag; the loop then saves a checkpoint at the next
  step boundary and raises `RunInterrupted` (the CLI prints a resume hint and exits 130 / 143). A second
  signal aborts at once, without saving.
- `LossGuard`: records the first step whose loss is NaN/inf with device-side ops only (no host sync in the
  hot loop); `check()` reads it back at log points and before every checkpoint, so a diverged model is
  never saved over the last good checkpoint, and raises `NonFiniteLoss` naming the step.
- `Sentinel`: both of the above for the training loop, agreed on by every DDP rank.
"""

from __future__ import annotations

import math
import signal
import threading
from pathlib import Path

import torch


class RunInterrupted(Exception):
    """A stop signal ended the run after a checkpoint was saved."""

    def __init__(self, signame: str, run_dir: str | Path, epoch: int, step: int):
        self.signame = signame
        self.run_dir = str(run_dir)
        self.epoch = epoch
        self.step = step
        super().__init__(
            f"{signame}: stopped at step {step} (epoch {epoch + 1}); checkpoint saved in {run_dir}; "
            f"resume with: fasttrain run --resume {run_dir}"
        )

    @property
    def exit_code(self) -> int:
        """The shell convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
        return 128 + int(getattr(signal, self.signame, signal.SIGINT))


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf; the message names the step and the checkpoint that was kept."""


# ============================================================================ signals
class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM request a graceful stop instead of killing the run.

    `requested` is the signal's name (e.g. "SIGTERM") once one arrived, else None. Outside the main
    thread (where Python cannot install handlers) it does nothing and `requested` stays None."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:  # second signal: stop now, no checkpoint
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()


class Sentinel:
    """What the training loop polls: stop signals and the loss guard, agreed across DDP ranks.

    Single process: a stop request is seen at the next optimiser-step boundary. Under DDP the ranks
    compare flags every `every` steps (a tiny all-reduce), so all of them stop at the same step.
    `checkpoint` and `steps_per_epoch` only make the NonFiniteLoss message precise."""

    def __init__(self, dist, device: torch.device, *, checkpoint: str | Path | None = None,
                 steps_per_epoch: int | None = None, every: int = 10, check_every: int = 200):
        self.dist = dist
        self.signals = StopSignals().__enter__()
        self.guard = LossGuard(device)
        self.checkpoint = checkpoint
        self.steps_per_epoch = steps_per_epoch
        self.every = every if dist.enabled else 1
        self.check_every = check_every

    def should_stop(self, loss: torch.Tensor, step: int, *, at_boundary: bool = True) -> bool:
        """Notes a non-finite `loss` (on the device); True when a stop signal asks the run to save and exit
        now (same answer on every rank). Every `check_every` steps it also reads the loss guard back
        (raising NonFiniteLoss)."""
        self.guard.observe(loss, step)
        if step % self.check_every == 0:
            self.check()
        if not at_boundary or step % self.every:
            return False
        return self.requested_anywhere()

    def requested_anywhere(self) -> bool:
        """A stop signal reached this or any other rank (a collective under DDP)."""
        return self.dist.any(self.signals.requested is not None)

    def check(self) -> None:
        """Raises NonFiniteLoss if any step so far had a non-finite loss (a host sync)."""
        try:
            self.guard.check(self.dist, checkpoint=self.checkpoint, steps_per_epoch=self.steps_per_epoch)
        except NonFiniteLoss:
            self.close()
            raise

    def interrupt(self, run_dir, epoch: int, step: int) -> RunInterrupted:
        """The exception to raise after the checkpoint is saved."""
        self.close()
        return RunInterrupted(self.signals.requested or "SIGTERM", run_dir, epoch, step)

    def close(self) -> None:
        self.signals.__exit__(None, None, None)


# ============================================================================ non-finite loss
class LossGuard:
    """Remembers the first optimiser step with a non-finite loss, on the device, without syncing."""

    def __init__(self, device: torch.device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float32, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Call once per step with the batch loss (any shape, reduced here); a few tiny device ops."""
        loss = loss.detach().float().sum()
        newly = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad.masked_fill_(newly, step)
        self.bad_value.copy_(torch.where(newly, loss, self.bad_value))

    def check(
        self, dist=None, *, checkpoint: str | Path | None = None, steps_per_epoch: int | None = None
    ) -> None:
        """Reads the flag (a host sync); under DDP every rank learns of any rank's bad step.
        Raises NonFiniteLoss."""
        first = self.first_bad.clone()
        if dist is not None and dist.enabled:
            first = dist.min_nonneg(first)
        step = int(first.item())
        if step < 0:
            return
        value = float(self.bad_value.item())
        kind = (
            "NaN"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else "non-finite"
        )
        where = f"step {step}"
        if steps_per_epoch:
            where += f" (epoch {(step - 1) // steps_per_epoch + 1}, batch {(step - 1) % steps_per_epoch + 1})"
        kept = (
            f"; the last good checkpoint is kept at {checkpoint}"
            if checkpoint and Path(checkpoint).exists()
            else "; no checkpoint was saved before it"
        )
        raise NonFiniteLoss(
            f"training loss became {kind} at {where}: the run diverged and was stopped{kept}. "
            f"Try a lower --lr, more warmup, or --amp bf16/off instead of fp16"
        )


def check_finite_params(model: torch.nn.Module) -> None:
    """Before saving: a step can turn weights non-finite while its loss was still finite."""
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteLoss(
            f"model weights became non-finite ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            f"the run diverged and was stopped without overwriting the last checkpoint"
        )
