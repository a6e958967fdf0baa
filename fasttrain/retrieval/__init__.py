"""Image retrieval (the Cars196 task): class-balanced batches, a batch-mined multi-similarity loss, Recall@K.
The training run behind `fasttrain run MODEL --task retrieval` is `fasttrain.retrieval.trainer.train_retrieval`
(not re-exported here: it sits on the trainer layer, these pieces below it). See docs/retrieval.md."""

from .loss import MetricLearningTask, multi_similarity_loss, multi_similarity_loss_reference
from .metrics import recall_at_k, recall_at_k_reference
from .sampler import ClassBalancedSampler

__all__ = [
    "ClassBalancedSampler", "MetricLearningTask", "multi_similarity_loss", "multi_similarity_loss_reference",
    "recall_at_k", "recall_at_k_reference",
]
