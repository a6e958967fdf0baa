"""`RunConfig.retrieval`: the retrieval task's own options (a dict in recipes and config.json), validated here
by the retrieval trainer before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..choices import RETRIEVAL_OPTIONS
from ..config import ConfigError
from .metrics import DEFAULT_KS


@dataclass
class RetrievalOptions:
    embedding_dim: int = 512  # width of the embedding that replaces the classifier
    m_per_class: int = 4  # images per class in a phase-2 batch (P = batch_size // m classes)
    cls_epochs: float | None = None  # phase 1 epochs (None: cfg.epochs; 0 skips phase 1)
    embed_epochs: float | None = None  # phase 2 epochs (None: cfg.epochs)
    embed_lr: float | None = None  # phase 2 peak lr (None: cfg.lr / 10: the backbone is already trained)
    embed_warmup_frac: float = 0.1  # phase 2 warmup share (the new head starts random)
    alpha: float = 2.0  # multi-similarity positive scale
    beta: float = 50.0  # multi-similarity negative scale
    lam: float = 0.5  # multi-similarity similarity offset (lambda)
    eps: float = 0.1  # mining margin
    train_classes: int | None = None  # without a recorded retrieval split: first N classes train (None: half)
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    eval_batch_size: int = 500

    @classmethod
    def from_dict(cls, d: dict) -> RetrievalOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"retrieval: unknown option(s) {unknown}; known: {sorted(known)}")
        opts = cls(**d)
        checks = [
            (opts.embedding_dim >= 1, "embedding_dim", "must be >= 1"),
            (opts.m_per_class >= 2, "m_per_class", "must be >= 2 (an anchor needs a positive)"),
            (opts.cls_epochs is None or opts.cls_epochs >= 0, "cls_epochs", "must be >= 0"),
            (opts.embed_epochs is None or opts.embed_epochs > 0, "embed_epochs", "must be > 0"),
            (opts.embed_lr is None or opts.embed_lr > 0, "embed_lr", "must be > 0"),
            (0 <= opts.embed_warmup_frac <= 1, "embed_warmup_frac", "must lie in [0, 1]"),
            (opts.alpha > 0 and opts.beta > 0, "alpha", "alpha and beta must be > 0"),
            (opts.train_classes is None or opts.train_classes >= 2, "train_classes", "must be >= 2"),
            (len(opts.ks) > 0 and min(opts.ks) >= 1, "ks", "must be positive integers"),
        ]
        for ok, name, msg in checks:
            if not ok:
                raise ConfigError(f"retrieval.{name}: {msg}, got {getattr(opts, name)}")
        return opts


assert set(RETRIEVAL_OPTIONS) <= {f.name for f in dataclasses.fields(RetrievalOptions)}, "a flag without a field"
