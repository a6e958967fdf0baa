"""PatchUp (Faramarzi et al., 2006.07794): mixing at the feature-map level, hard and soft (the CIFAR
model-zoo recipes).

For a batch (with probability `prob`) one hidden layer is drawn from the model's stage outputs; in its
output feature map x (N, C, H, W) a block mask is drawn as in DropBlock, shared by the batch: seeds
m ~ Bernoulli(gamma') on (C, H, W) with gamma' = gamma * HW / (k^2 (H-k+1)(W-k+1)), holes = max_pool(m, k,
stride 1) so each seed opens a k x k patch. With a partner permutation p of the batch:
    hard: x' = (1 - holes) x + holes x[p]
    soft: x' = (1 - holes) x + holes (lam x + (1 - lam) x[p]),  lam ~ Beta(alpha, alpha)
The targets become (y, y[p]) with the weight of y equal to the share of features that still carry the
sample's own information: hard: 1 - changed; soft: 1 - changed + changed * lam, where changed =
holes.sum() / (C H W). The loss is the same mixed cross-entropy as mixup/cutmix.

Stage outputs: a model may list them in a `patchup_layers` attribute (module names); otherwise the
direct children of the model's top-level containers are run once on a dummy batch and, per spatial
resolution, the last child producing it is a candidate (so: the end of each stage), except the last
resolution (the paper mixes at hidden layers followed by further computation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import Targets
from .choices import PATCHUP_MODES
__all__ = ["PATCHUP_MODES", "PatchUp", "block_holes", "patchup_mix", "stage_outputs"]


def stage_outputs(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the candidate modules for PatchUp (see the module docstring)."""
    declared = getattr(model, "patchup_layers", None)
    if declared:
        return list(declared)
    children: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            children += [(f"{name}.{n}", c) for n, c in child.named_children()]
        else:
            children.append((name, child))
    calls: dict[str, int] = {}
    shapes: list[tuple[str, tuple]] = []

    def recorder(name):
        def hook(_m, _i, out):
            calls[name] = calls.get(name, 0) + 1
            if torch.is_tensor(out) and out.dim() == 4:
                shapes.append((name, tuple(out.shape[-2:])))
        return hook

    handles = [m.register_forward_hook(recorder(n)) for n, m in children]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    last_per_res: dict[tuple, str] = {}
    for name, hw in shapes:
        if calls[name] == 1 and min(hw) >= 2:
            last_per_res.pop(hw, None)  # keep insertion order = order in which resolutions end
            last_per_res[hw] = name
    names = list(last_per_res.values())
    return names[:-1] if len(names) > 1 else names


def block_holes(c: int, h: int, w: int, block: int, gamma: float, gen: torch.Generator,
                device: torch.device) -> torch.Tensor:
    """float (C, H, W) mask: 1 inside the k x k patches opened around Bernoulli seeds, 0 elsewhere."""
    k = max(1, min(block, h, w))
    g = gamma * h * w / (k * k * (h - k + 1) * (w - k + 1))
    seeds = (torch.rand(c, h, w, generator=gen, device=device) < min(1.0, g)).float()
    holes = F.max_pool2d(seeds[None], k, stride=1, padding=k // 2)[0]
    return holes[:, :h, :w]  # an even k pads one row/column too many


def patchup_mix(x: torch.Tensor, holes: torch.Tensor, perm: torch.Tensor, mode: str,
                lam: float) -> tuple[torch.Tensor, float]:
    """The mixed feature map and the weight of the sample's own label (see the module docstring)."""
    holes = holes.to(x.dtype)[None]
    keep = 1 - holes
    if mode == "hard":
        mixed = keep * x + holes * x[perm]
    elif mode == "soft":
        mixed = keep * x + holes * (lam * x + (1 - lam) * x[perm])
    else:
        raise ValueError(f"--patchup: must be one of {PATCHUP_MODES}, got {mode!r}")
    changed = float(holes.float().mean())
    own = 1.0 - changed if mode == "hard" else 1.0 - changed + changed * lam
    return mixed, own


class PatchUp:
    """Arms one forward pass at a time: `arm(labels)` before the forward, `targets(t)` after it."""

    def __init__(self, model: nn.Module, sample: torch.Tensor, *, mode: str = "hard", prob: float = 0.7,
                 alpha: float = 2.0, block: int = 7, gamma: float = 0.75, seed: int = 0):
        if mode not in ("hard", "soft"):
            raise ValueError(f"--patchup: must be hard or soft, got {mode!r}")
        self.mode, self.prob, self.alpha, self.block, self.gamma = mode, prob, alpha, block, gamma
        self.layers = stage_outputs(model, sample)
        if not self.layers:
            raise ValueError(f"--patchup: found no 4-d hidden feature maps in {type(model).__name__}")
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook) for n in self.layers]
        self.modules = [modules[n] for n in self.layers]
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=sample.device)
        self.gen.manual_seed(seed)
        self.active: nn.Module | None = None
        self.perm: torch.Tensor | None = None
        self.lam = 1.0
        self.own: float | None = None  # label weight of the last mixed forward

    def arm(self, n: int) -> bool:
        """Decides for the next forward (batch of n): returns True if PatchUp will fire."""
        self.own = None
        if self.rng.random() >= self.prob:
            self.active = None
            return False
        self.active = self.modules[int(self.rng.integers(len(self.modules)))]
        self.perm = torch.randperm(n, generator=self.gen, device=self.gen.device)
        self.lam = float(self.rng.beta(self.alpha, self.alpha)) if self.mode == "soft" else 1.0
        return True

    def _hook(self, module, _inputs, out):
        if module is not self.active or not module.training:
            return None
        self.active = None  # once per forward
        c, h, w = out.shape[1:]
        holes = block_holes(c, h, w, self.block, self.gamma, self.gen, out.device)
        mixed, self.own = patchup_mix(out, holes, self.perm.to(out.device), self.mode, self.lam)
        return mixed

    def targets(self, targets: Targets) -> Targets:
        """The targets of the last forward: unchanged unless PatchUp fired."""
        own, self.own = self.own, None
        if own is None:
            return targets
        y = targets.y_a
        lam = torch.full((len(y),), own, dtype=torch.float32, device=y.device)
        return Targets(y, y[self.perm.to(y.device)], lam)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
