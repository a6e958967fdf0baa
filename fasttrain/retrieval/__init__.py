"""Image retrieval (seed 003, T4): class-balanced batches, a batch-mined multi-similarity loss, Recall@K,
and `train_retrieval(cfg)`, the loop behind `fasttrain run MODEL --task retrieval`. See docs/retrieval.md."""

from .loss import multi_similarity_loss, multi_similarity_loss_reference
from .metrics import recall_at_k, recall_at_k_reference
from .sampler import ClassBalancedSampler

__all__ = [
    "ClassBalancedSampler", "multi_similarity_loss", "multi_similarity_loss_reference", "recall_at_k",
    "recall_at_k_reference", "train_retrieval",
]


def train_retrieval(cfg, *, quiet: bool = False) -> dict:
    """See `fasttrain.retrieval.trainer.train_retrieval` (imported lazily: it pulls in the trainer's deps)."""
    from .trainer import train_retrieval as run

    return run(cfg, quiet=quiet)
