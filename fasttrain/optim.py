"""Optimisers (SGD, Adam, AdamW, Muon), parameter groups, the per-batch learning-rate schedule, the
optimiser step (gradient accumulation, clipping, AMP scaling) and airbench's lookahead.

Learning rates: every param group carries `base_lr`; the loop sets `lr = base_lr * lr_multiplier(...)`
each batch, so one schedule drives all groups (Muon's weights and the rest alike).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .choices import OPTIMIZERS, SCHEDULES
from .runtime import resolve_amp

if TYPE_CHECKING:  # annotations only: the config layer sits above the optimiser
    from .config import RunConfig

__all__ = ["OPTIMIZERS", "SCHEDULES", "Lookahead", "MuonWithAux", "OptimizerStep", "build_optimizer", "lr_multiplier",
           "param_groups", "set_lr"]


# ============================================================================ parameter groups
def _head_weight(model: nn.Module) -> nn.Parameter | None:
    """The classifier's weight: the last nn.Linear in module order (Muon leaves it to the aux optimiser)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1].weight if linears else None


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    """Weights decay; BatchNorm parameters and biases (1-d tensors) get bias_lr_scale and, unless
    norm_bias_decay, no decay. Their decay is divided by bias_lr_scale so the per-step shrink matches.
    With the Muon optimiser, conv and hidden linear weights (ndim >= 2, not the classifier) form a
    third group flagged `use_muon` with its own lr (muon_lr) and momentum."""
    muon = cfg.optimizer == "muon"
    head = _head_weight(model) if muon else None
    decay, no_decay, matrices = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue  # frozen weights (e.g. airbench's whitening conv) never enter the optimiser
        if p.dim() <= 1:
            no_decay.append(p)
        elif muon and p is not head:
            matrices.append(p)
        else:
            decay.append(p)
    bias_wd = cfg.weight_decay / cfg.bias_lr_scale if cfg.norm_bias_decay else 0.0
    groups = [
        dict(params=decay, lr=cfg.lr, weight_decay=cfg.weight_decay, base_lr=cfg.lr, use_muon=False),
        dict(params=no_decay, lr=cfg.lr * cfg.bias_lr_scale, weight_decay=bias_wd,
             base_lr=cfg.lr * cfg.bias_lr_scale, use_muon=False),
    ]
    if muon:
        muon_wd = 0.0 if cfg.muon_weight_norm else cfg.weight_decay  # renormalised weights need no decay
        groups.append(dict(params=matrices, lr=cfg.muon_lr, weight_decay=muon_wd, base_lr=cfg.muon_lr,
                           momentum=cfg.muon_momentum, use_muon=True, ns_steps=cfg.muon_ns_steps,
                           weight_norm=cfg.muon_weight_norm))
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """sgd: Nesterov/heavy-ball SGD, coupled L2 decay. adam: Adam, coupled L2 (torch's weight_decay, as in
    the jovian-lineage ResNet9 recipe). adamw: decoupled decay. muon: Muon on conv/hidden-linear weights,
    Nesterov SGD on the rest."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0  # torch refuses Nesterov without momentum
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    if cfg.optimizer == "muon":
        return MuonWithAux(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    raise ValueError(f"--optimizer: must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


# ============================================================================ Muon
def newton_schulz_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 (as torch.optim.Muon and the record) where it is fast: GPUs with bf16, CPUs with AMX tiles.
    Elsewhere fp32: on a CPU without AMX a bf16 matmul is ~60x slower than fp32 (measured here)."""
    return torch.bfloat16 if resolve_amp("auto", device) == torch.bfloat16 else torch.float32


def zeropower_newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7,
                            dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate orthogonalisation U V^T of a matrix (m, n), or of each matrix of a batch (B, m, n), by the
    quintic Newton-Schulz iteration of Keller Jordan's Muon (coefficients 3.4445, -4.7750, 2.0315), in
    `dtype` (bfloat16 like torch.optim.Muon). Static shapes and no host reads: torch.compile fuses it."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    single = x.dim() == 2
    if single:
        x = x.unsqueeze(0)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    if tall:
        x = x.mT
    return x[0] if single else x


class MuonWithAux(torch.optim.Optimizer):
    """One optimiser, two update rules chosen per group by `use_muon`:

    - Muon groups (conv / hidden linear weights, viewed as (out, in*k*k) matrices): momentum buffer
      lerp, Nesterov, Newton-Schulz orthogonalised update scaled by sqrt(max(1, out/in)), decoupled weight
      decay p *= 1 - lr*wd. On 2-d weights this is exactly torch.optim.Muon (tested against it).
      With `weight_norm` (airbench94_muon) each weight is first rescaled to Frobenius norm sqrt(out
      channels): the step then sets the angle only, so no weight decay is needed.
    - the other groups (biases, norms, classifier): SGD with (Nesterov) momentum and coupled L2 decay,
      exactly torch.optim.SGD with dampening 0.
    Being one Optimizer it works with GradScaler, per-group lr schedules and state_dict unchanged.

    A step costs a few launches per group, not per parameter: elementwise work runs as torch._foreach_*
    over the group, and Newton-Schulz runs once per set of same-shape matrices, batched. After
    `compile_newton_schulz()` (the trainer calls it with --compile) that batched iteration is compiled.
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
                 ns_steps: int = 5, ns_dtype: torch.dtype | None = None):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0,
                                      use_muon=False, ns_steps=ns_steps, weight_norm=False))
        self._newton_schulz = zeropower_newton_schulz
        self.ns_dtype = ns_dtype  # None: newton_schulz_dtype(the parameters' device)

    @torch.no_grad()  # as in step(): grad mode is part of the compiled graph's guards
    def compile_newton_schulz(self) -> float:
        """Compile the batched Newton-Schulz (static shapes) and run it once on zeros of every shape the
        Muon groups will feed it, so compilation happens before the clock; returns the seconds taken."""
        import time

        t0 = time.perf_counter()
        self._newton_schulz = torch.compile(zeropower_newton_schulz, dynamic=False)
        for group in self.param_groups:
            if group["use_muon"]:
                for (m, n, _), members in self._same_shape(group["params"]).items():
                    p = group["params"][members[0]]
                    self._newton_schulz(torch.zeros(len(members), m, n, device=p.device), group["ns_steps"],
                                        dtype=self.ns_dtype or newton_schulz_dtype(p.device))
        return time.perf_counter() - t0

    @staticmethod
    def _same_shape(params: list[torch.Tensor]) -> dict[tuple, list[int]]:
        """Indices of the parameters per (out, in*k*k, dtype): the sets Newton-Schulz batches over."""
        buckets: dict[tuple, list[int]] = {}
        for i, p in enumerate(params):
            buckets.setdefault((len(p), p[0].numel(), p.dtype), []).append(i)
        return buckets

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["use_muon"] else self._sgd_step)(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad.reshape(len(p), -1) for p in params]
        for p, g in zip(params, grads):
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(g)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - mom)
        updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs
        if group.get("weight_norm", False):  # absent in older checkpoints
            scales = torch._foreach_norm(params)
            torch._foreach_clamp_min_(scales, 1e-12)
            torch._foreach_reciprocal_(scales)
            torch._foreach_mul_(scales, [math.sqrt(len(p)) for p in params])
            torch._foreach_mul_(params, scales)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        ns_dtype = self.ns_dtype or newton_schulz_dtype(params[0].device)
        for (m, n, dtype), members in self._same_shape(params).items():
            ortho = self._newton_schulz(torch.stack([updates[i] for i in members]), group["ns_steps"], dtype=ns_dtype)
            ortho = ortho.to(dtype).unbind(0)
            torch._foreach_add_([params[i] for i in members], [o.view_as(params[i]) for o, i in zip(ortho, members)],
                                alpha=-lr * math.sqrt(max(1.0, m / n)))

    def _sgd_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        if wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        bufs, running, running_grads = [], [], []
        for p, g in zip(params, grads):
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = g.detach().clone()  # torch SGD: first buffer = grad
            else:
                running.append(state["momentum_buffer"])
                running_grads.append(g)
            bufs.append(state["momentum_buffer"])
        if running:
            torch._foreach_mul_(running, mom)
            torch._foreach_add_(running, running_grads)
        torch._foreach_add_(params, torch._foreach_add(grads, bufs, alpha=mom) if group["nesterov"] else bufs,
                            alpha=-lr)


# ============================================================================ schedule
def warmup_steps(total: int, cfg: RunConfig, steps_per_epoch: float) -> int:
    """warmup_epochs (when set) wins over warmup_frac."""
    if cfg.warmup_epochs is not None:
        return min(total, round(cfg.warmup_epochs * steps_per_epoch))
    return min(total, int(total * cfg.warmup_frac))


def lr_multiplier(step: int, total: int, cfg: RunConfig, steps_per_epoch: float | None = None) -> float:
    """The learning rate of batch `step` (0-based) of `total`, as a fraction of the peak.

    Every schedule starts with a linear warmup from start_lr_frac to 1 (none if it has 0 steps); then:
      onecycle   cosine 1 -> end_lr_frac (with a cosine warmup, as torch's OneCycleLR)
      piecewise  linear 1 -> end_lr_frac (Myrtle / airbench)
      cosine     cosine 1 -> end_lr_frac             linear     linear 1 -> end_lr_frac
      step       gamma ** floor(epoch / step_epochs)  multistep  gamma ** (milestones passed, in epochs)
      htd        (1 - tanh(L + (U - L) t)) / 2, t in [0, 1] after warmup (1806.01593; htd_lower/upper)
      constant   1
    `steps_per_epoch` places epoch-based milestones; by default total / cfg.epochs."""
    spe = steps_per_epoch or total / cfg.epochs
    warm = warmup_steps(total, cfg, spe)
    if step < warm:
        t = step / warm
        if cfg.schedule == "onecycle":
            return 1.0 + (cfg.start_lr_frac - 1.0) * (1 + math.cos(math.pi * t)) / 2
        return cfg.start_lr_frac * (1 - t) + t
    # progress through the decay phase: 0 at the peak, 1 at the last batch (total - 1), as torch's schedulers
    t = min(1.0, (step - warm) / max(1, total - 1 - warm))
    end = cfg.end_lr_frac
    s = cfg.schedule
    if s in ("onecycle", "cosine"):
        return end + (1.0 - end) * (1 + math.cos(math.pi * t)) / 2
    if s in ("piecewise", "linear"):
        return 1.0 * (1 - t) + end * t
    if s == "htd":
        return (1 - math.tanh(cfg.htd_lower + (cfg.htd_upper - cfg.htd_lower) * t)) / 2
    epoch = step / spe
    if s == "step":
        return cfg.gamma ** math.floor(epoch / cfg.step_epochs + 1e-9)
    if s == "multistep":
        return cfg.gamma ** sum(epoch + 1e-9 >= m for m in cfg.milestones)
    if s == "constant":
        return 1.0
    raise ValueError(f"--schedule: must be one of {SCHEDULES}, got {s!r}")


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Sets every group's lr to base_lr * multiplier; returns the first group's lr (for the log)."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * multiplier
    return optimizer.param_groups[0]["lr"]


# ============================================================================ the optimiser step
def clip_gradients(params: list[torch.Tensor], mode: str, value: float | None) -> torch.Tensor | None:
    """Clip by global L2 norm (returns the norm before clipping) or elementwise by value; None = off."""
    if not value:
        return None
    if mode == "norm":
        return torch.nn.utils.clip_grad_norm_(params, value)
    if mode == "value":
        torch.nn.utils.clip_grad_value_(params, value)
        return None
    raise ValueError(f"--clip-mode: must be norm or value, got {mode!r}")


class OptimizerStep:
    """backward() every batch; every `accum_steps` batches (or at `flush`): unscale (AMP), clip, step,
    update the scaler, zero the grads. The loss of each micro-batch is divided by accum_steps, so k
    accumulated batches of size b give the gradient of one batch of size k*b (batch-mean loss)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: RunConfig):
        self.optimizer = optimizer
        self.scaler = scaler
        self.accum = cfg.accum_steps
        self.clip_mode = cfg.clip_mode
        self.clip_value = cfg.clip_grad
        self.pending = 0
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, *, flush: bool = False) -> bool:
        """Accumulates the gradient of `loss`; returns True when the optimiser stepped."""
        self.scaler.scale(loss / self.accum if self.accum > 1 else loss).backward()
        self.pending += 1
        if self.pending < self.accum and not flush:
            return False
        if self.clip_value:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.params, self.clip_mode, self.clip_value)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.pending = 0
        return True


# ============================================================================ lookahead
class Lookahead:
    """airbench's lookahead: every 5 steps, slow = lerp(slow, fast, 1 - decay) and fast = slow, with
    decay = 0.95^5 * (step / total)^3 (so early on the weights are barely averaged)."""

    def __init__(self, model: nn.Module, total_steps: int):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.total = total_steps

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, final: bool = False) -> None:
        if not final and step % 5:
            return
        decay = 1.0 if final else 0.95**5 * (step / self.total) ** 3
        for (k, slow), fast in zip(self.slow.items(), model.state_dict().values()):
            if fast.dtype.is_floating_point:
                slow.lerp_(fast, 1 - decay)
                fast.copy_(slow)
