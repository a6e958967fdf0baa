"""Recall@K for retrieval, with chunked matrix products (no Python loop over queries).

Definition (the standard one for Cars196 / CUB, Song et al. 2016): every image of the evaluation set is a
query once; the gallery is every other image (the query itself is excluded). Recall@K is the fraction of
queries with at least one image of their own class among their K most similar gallery images (cosine
similarity of L2-normalised embeddings). The task's "number of relevant items in top K / total number of
items" reads the same way with an item counted as retrieved correctly when a relevant image is in its top K.
Recall@1 is the leave-one-out 1-nearest-neighbour accuracy on the held-out classes.

`recall_at_k` runs on the embeddings' device (GPU or CPU): queries in chunks of `chunk` rows, each chunk
a (chunk x N) similarity block, top-max(K) per row, label matches accumulated on the device; memory is
O(chunk N). `recall_at_k_reference` is the brute-force version (numpy, one query at a time, full sort),
used by the tests and forced with FASTTRAIN_RETRIEVAL=reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .loss import _impl

DEFAULT_KS = (1, 2, 4, 8)


def _check(embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> None:
    if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be (N, D) and labels (N,), got {tuple(embeddings.shape)} and "
                         f"{tuple(labels.shape)}")
    if len(labels) < 2:
        raise ValueError(f"Recall@K needs at least 2 images, got {len(labels)}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {list(ks)}")


@torch.no_grad()
def recall_at_k(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    *,
    chunk: int = 1024,
    normalize: bool = True,
    impl: str | None = None,
) -> dict[int, float]:
    """{K: Recall@K} over all images as queries against all others. K above N - 1 counts as N - 1."""
    _check(embeddings, labels, ks)
    if _impl(impl) == "reference":
        return recall_at_k_reference(embeddings, labels, ks, normalize=normalize)
    e = embeddings.float()
    if normalize:
        e = torch.nn.functional.normalize(e, dim=1)
    labels = labels.to(e.device)
    n = len(labels)
    kmax = min(max(ks), n - 1)
    hits = torch.zeros(len(ks), dtype=torch.long, device=e.device)
    for start in range(0, n, chunk):
        q = e[start : start + chunk]
        sim = q @ e.T
        rows = torch.arange(len(q), device=e.device)
        sim[rows, rows + start] = float("-inf")  # a query never retrieves itself
        top = sim.topk(kmax, dim=1).indices
        match = labels[top] == labels[start : start + chunk, None]
        first_hit = torch.cumsum(match.int(), dim=1) > 0  # (q, kmax): a hit within the first k+1
        for i, k in enumerate(ks):
            hits[i] += first_hit[:, min(k, kmax) - 1].sum()
    counts = hits.tolist()  # one host read per evaluation
    return {k: counts[i] / n for i, k in enumerate(ks)}


def recall_at_k_reference(
    embeddings: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = DEFAULT_KS, *, normalize: bool = True
) -> dict[int, float]:
    """Brute force: for each query, sort all other images by similarity and look at the first K labels."""
    _check(embeddings, labels, ks)
    e = embeddings.detach().float().cpu().numpy().astype(np.float64)
    if normalize:
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    y = labels.detach().cpu().numpy()
    n = len(y)
    hits = {k: 0 for k in ks}
    for i in range(n):
        others = [j for j in range(n) if j != i]
        sims = np.array([e[i] @ e[j] for j in others])
        ranked = [others[j] for j in np.argsort(-sims, kind="stable")]
        for k in ks:
            if any(y[j] == y[i] for j in ranked[: min(k, n - 1)]):
                hits[k] += 1
    return {k: hits[k] / n for k in ks}
