"""The batch-mined multi-similarity loss (Wang et al., "Multi-Similarity Loss with General Pair Weighting
for Deep Metric Learning", CVPR 2019), the task's "custom loss" (its formula image is missing).

Exact formula. Embeddings e_i are L2-normalised; S_ij = e_i . e_j (cosine similarity, in fp32). For an
anchor i in a batch of B: P_i = {j != i : y_j = y_i}, N_i = {k : y_k != y_i}.

  mining (hard pairs, margin eps):
    hard negatives  N~_i = {k in N_i : S_ik + eps > min_{j in P_i} S_ij}
    hard positives  P~_i = {j in P_i : S_ij - eps < max_{k in N_i} S_ik}
  loss of anchor i:
    L_i = 1/alpha * log(1 + sum_{j in P~_i} exp(-alpha (S_ij - lam)))
        + 1/beta  * log(1 + sum_{k in N~_i} exp( beta (S_ik - lam)))
  batch loss: L = (1/B) sum_i L_i   (an anchor with no mined pair contributes 0 for that term)

Defaults alpha = 2, beta = 50, lam = 0.5, eps = 0.1 (the paper's and pytorch-metric-learning's values for
cosine similarity). `multi_similarity_loss` computes every anchor at once with masks on the B x B
similarity matrix; `multi_similarity_loss_reference` is the per-anchor loop that transcribes the formula,
used by the tests and forced with FASTTRAIN_RETRIEVAL=reference.
"""

from __future__ import annotations

import os

import torch

IMPLS = ("auto", "reference")


def _impl(requested: str | None) -> str:
    impl = requested or os.environ.get("FASTTRAIN_RETRIEVAL", "auto")
    if impl not in IMPLS:
        raise ValueError(f"FASTTRAIN_RETRIEVAL / impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _log1p_sum_exp(z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(1 + sum_{mask} exp(z)) per row, stable for large z; 0 for an empty row (gradient 0, not NaN)."""
    z = torch.where(mask, z, torch.full_like(z, float("-inf")))
    return torch.logsumexp(torch.cat([torch.zeros_like(z[:, :1]), z], dim=1), dim=1)


def multi_similarity_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    lam: float = 0.5,
    eps: float = 0.1,
    impl: str | None = None,
) -> torch.Tensor:
    """Mean multi-similarity loss of a batch of L2-normalised `embeddings` (B, D) with int `labels` (B,)."""
    if _impl(impl) == "reference":
        return multi_similarity_loss_reference(embeddings, labels, alpha=alpha, beta=beta, lam=lam, eps=eps)
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be (B, D) and labels (B,), got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")
    e = embeddings.float()
    sim = e @ e.T
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos, neg = same & ~eye, ~same
    inf = torch.tensor(float("inf"), device=sim.device)
    min_pos = torch.where(pos, sim, inf).amin(dim=1, keepdim=True)
    max_neg = torch.where(neg, sim, -inf).amax(dim=1, keepdim=True)
    # mining compares similarities only: no gradient flows through the thresholds
    hard_neg = neg & (sim + eps > min_pos.detach())
    hard_pos = pos & (sim - eps < max_neg.detach())
    pos_term = _log1p_sum_exp(-alpha * (sim - lam), hard_pos) / alpha
    neg_term = _log1p_sum_exp(beta * (sim - lam), hard_neg) / beta
    return (pos_term + neg_term).mean()


def multi_similarity_loss_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    lam: float = 0.5,
    eps: float = 0.1,
) -> torch.Tensor:
    """The formula above, one anchor at a time (slow; the ground truth for the batched version)."""
    e = embeddings.float()
    sim = e @ e.T
    total = sim.new_zeros(())
    s = sim.detach()  # mining reads values only
    n = len(labels)
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [k for k in range(n) if labels[k] != labels[i]]
        if pos and neg:
            min_pos = min(float(s[i, j]) for j in pos)
            max_neg = max(float(s[i, k]) for k in neg)
            hard_pos = [j for j in pos if float(s[i, j]) - eps < max_neg]
            hard_neg = [k for k in neg if float(s[i, k]) + eps > min_pos]
        else:
            hard_pos, hard_neg = [], []
        if hard_pos:
            total = total + torch.log(1 + torch.exp(-alpha * (sim[i, hard_pos] - lam)).sum()) / alpha
        if hard_neg:
            total = total + torch.log(1 + torch.exp(beta * (sim[i, hard_neg] - lam)).sum()) / beta
    return total / n


class MetricLearningTask:
    """Retrieval's phase 2 as a training task (see fasttrain.tasks): the embedding network and the
    multi-similarity loss over its batch. No logits: the running accuracy is not tracked."""

    def __init__(self, model: torch.nn.Module, forward, *, alpha: float, beta: float, lam: float, eps: float):
        self.model = model
        self.forward = forward  # the compiled network, or the model itself
        self.alpha, self.beta, self.lam, self.eps = alpha, beta, lam, eps

    def loss(self, inputs: torch.Tensor, targets, *, mix_features: bool = False):
        """`mix_features` is ignored: a pair loss takes no mixed labels (phase 2 batches are never mixed)."""
        loss = multi_similarity_loss(self.forward(inputs), targets.y_a, alpha=self.alpha, beta=self.beta,
                                     lam=self.lam, eps=self.eps)
        return loss, None, targets
