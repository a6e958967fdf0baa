"""Optimisers (SGD, Adam, AdamW, Muon), parameter groups, the per-batch learning-rate schedule, the
optimiser step (gradient accumulation, clipping, AMP scaling) and airbench's lookahead.

Learning rates: every param group carries `base_lr`; the loop sets `lr = base_lr * lr_multiplier(...)`
each batch, so one schedule drives all groups (Muon's weights and the rest alike).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import RunConfig

from .choices import OPTIMIZERS, SCHEDULES  # the lists live once, in choices


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
    seed 001). adamw: decoupled decay. muon: Muon on conv/hidden-linear weights, Nesterov SGD on the rest."""
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
def zeropower_newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximate orthogonalisation U V^T of a 2-d matrix by the quintic Newton-Schulz iteration of Keller
    Jordan's Muon (coefficients 3.4445, -4.7750, 2.0315), in bfloat16 like torch.optim.Muon."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


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
    """

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True,
                 ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0,
                                      use_muon=False, ns_steps=ns_steps, weight_norm=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd, nesterov = group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if group["use_muon"]:
                    g = p.grad.reshape(len(p), -1)
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(g))
                    buf.lerp_(g, 1 - mom)
                    update = g.lerp(buf, mom) if nesterov else buf
                    update = zeropower_newton_schulz(update, group["ns_steps"]).to(p.dtype).view_as(p)
                    if group.get("weight_norm", False):  # absent in older checkpoints
                        p.mul_(math.sqrt(len(p)) / p.norm().clamp(min=1e-12))
                    p.mul_(1 - lr * wd)
                    p.add_(update, alpha=-lr * math.sqrt(max(1.0, g.size(0) / g.size(1))))
                else:
                    g = p.grad.add(p, alpha=wd) if wd else p.grad
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.detach().clone()  # torch SGD: first buffer = grad
                    else:
                        state["momentum_buffer"].mul_(mom).add_(g)
                    buf = state["momentum_buffer"]
                    p.add_(g.add(buf, alpha=mom) if nesterov else buf, alpha=-lr)
        return loss


# ============================================================================ schedule
def warmup_steps(total: int, cfg: RunConfig, steps_per_epoch: float) -> int:
    """warmup_epochs (when set) wins over warmup_frac."""
    if cfg.warmup_epochs is not None:
        return min(total, round(cfg.warmup_epochs * steps_per_epoch))
    return min(total, int(total * cfg.warmup_frac))


def lr_multiplier(step: int, total: int, cfg: RunConfig, steps_per_epoch: float | None = None) -> float:
    """The learning rate of batch `step` (0-based) of `total`, as a fraction of the peak.

    Every schedule starts with a linear warmup from start_lr_frac to 1 (none if it has 0 steps); then:
      onecycle   cosine 1 -> end_lr_frac (with a cosine warmup, as torch's OneCycleLR; seed 001)
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


class TrainStep:
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
