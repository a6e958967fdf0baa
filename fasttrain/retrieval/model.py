"""Backbone features and the 512-d embedding head that replaces a classifier.

`backbone_features(model, x)`: the pooled features a classifier reads (the input of its last nn.Linear):
`model.forward_features(x)` where the model has it (the ResNet family), otherwise captured with a hook on
the last nn.Linear. `EmbeddingNet(backbone, dim)`: crops the backbone's classifier (that Linear becomes
an Identity) and adds one Linear(num_features, dim); the output is L2-normalised.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def classifier_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """(qualified name, module) of the model's classifier: its last nn.Linear in module order."""
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to take features from")
    return linears[-1]


def backbone_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The (N, num_features) features the classifier of `model` sees."""
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    _, fc = classifier_of(model)
    seen: list[torch.Tensor] = []
    handle = fc.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1].flatten(1)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


class EmbeddingNet(nn.Module):
    """backbone (classifier cropped) -> Linear(num_features, dim) -> L2 normalise (computed in fp32)."""

    def __init__(self, backbone: nn.Module, dim: int = 512):
        super().__init__()
        name, fc = classifier_of(backbone)
        num_features = fc.in_features
        _set_submodule(backbone, name, nn.Identity())  # crop the classification layer
        self.backbone = backbone
        self.embed = nn.Linear(num_features, dim)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.backbone, "forward_features"):
            f = self.backbone.forward_features(x)
        else:
            f = self.backbone(x).flatten(1)
        return F.normalize(self.embed(f).float(), dim=1)
