"""train_retrieval(cfg): the seed's T4, `fasttrain run MODEL --task retrieval`. One flat loop, two phases.

  data     every image of the dataset (all splits pooled), divided by class: the dataset's recorded
           "retrieval_split" (Cars196: classes 1-98 train, 99-196 test) or, without one, the first
           `train_classes` classes (default: half) train and the rest test. Whole uint8 sets on the device.
  phase 0  Recall@K of the untrained backbone's pooled features on the test classes (a floor).
  phase 1  classification: cross-entropy over the train classes (cfg's optimiser, schedule, augmentation,
           label smoothing; `cls_epochs`), then Recall@K of the backbone's pooled features: the number the
           seed asks for before the embedding head exists. Checkpoint: backbone.pt.
  phase 2  the classifier is cropped and a 512-d L2-normalised embedding added (EmbeddingNet); the whole
           network trains on class-balanced batches (P classes x m images) with the multi-similarity loss
           (`embed_epochs`, lr `embed_lr`; no mixup/cutmix: mixing labels means nothing to a pair loss).
           Recall@1/2/4/8 of the embedding on the test classes. Checkpoint: checkpoint.pt.

The run directory gets config.json, metrics.jsonl (one row per epoch and phase), recall.json, curves.png
and summary.json, whose `test_acc` is the final Recall@1 (= leave-one-out 1-NN accuracy on unseen classes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import AugmentConfig, AugmentSampler, augment_batch, norm_constants, normalize
from ..config import ConfigError, RunConfig
from ..data.splits import epoch_permutation, stratified_subset
from ..data.tensor_format import load_split, read_meta
from ..models import create_model
from ..optim import build_optimizer, lr_multiplier
from .. import rundir  # run folder: lock, refusals, failed-start cleanup
from ..runio import atomic_torch_save, write_json
from ..runtime import device_name, resolve_amp, resolve_device, sync
from .loss import multi_similarity_loss
from .metrics import DEFAULT_KS, recall_at_k
from .model import EmbeddingNet, backbone_features
from .sampler import ClassBalancedSampler


@dataclass
class RetrievalOptions:
    """`RunConfig.retrieval` (a dict in recipes and config.json), validated here."""

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


# ============================================================================ data
def class_split(meta: dict, opts: RetrievalOptions) -> tuple[list[int], list[int]]:
    """(train classes, test classes): the dataset's recorded retrieval split, else the first N / the rest."""
    recorded = meta.get("retrieval_split")
    if recorded and opts.train_classes is None:
        return list(recorded["train_classes"]), list(recorded["test_classes"])
    n = meta["num_classes"]
    k = opts.train_classes if opts.train_classes is not None else n // 2
    if not 2 <= k <= n - 2:
        raise ConfigError(f"retrieval.train_classes: need 2..{n - 2} train classes (and >= 2 test classes) "
                          f"out of {n}, got {k}")
    return list(range(k)), list(range(k, n))


def pooled_by_class(data_dir: str, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """All images (every split) whose label is in `classes`."""
    meta = read_meta(data_dir)
    images, labels = [], []
    wanted = np.asarray(sorted(classes))
    for split in sorted(meta["splits"]):
        s = load_split(data_dir, split)
        y = np.asarray(s.labels)
        sel = np.flatnonzero(np.isin(y, wanted))
        if len(sel):
            images.append(np.asarray(s.images[sel]))
            labels.append(y[sel])
    if not images:
        raise ConfigError(f"--data {data_dir}: no images of classes {classes[:5]}...")
    return np.concatenate(images), np.concatenate(labels)


class _Batches:
    """Augmented batches (inputs, targets) from uint8 images on the device, for either phase."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, index_source, aug: AugmentSampler, scale, bias,
                 dtype: torch.dtype):
        self.images, self.labels, self.index_source = images, labels, index_source
        self.aug, self.scale, self.bias, self.dtype = aug, scale, bias, dtype

    def __len__(self) -> int:
        return len(self.index_source)

    def set_epoch(self, epoch: int) -> None:
        self.index_source.set_epoch(epoch)

    def __iter__(self) -> Iterator:
        h, w = self.images.shape[1:3]
        for idx in self.index_source:
            x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            yield augment_batch(x, y, self.aug.sample(len(x), h, w), self.scale, self.bias, self.dtype)


class _ShuffledIndices:
    """Plain shuffled batches of indices (phase 1), one seeded permutation per epoch."""

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int):
        self.n, self.batch_size, self.device, self.seed, self.epoch = n, batch_size, device, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield from epoch_permutation(self.n, self.seed, self.epoch, self.device).split(self.batch_size)


@torch.no_grad()
def embed_all(fn: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, images: torch.Tensor, scale, bias,
              amp_dtype, batch_size: int) -> torch.Tensor:
    """fn(model, x) for every image (eval mode, no augmentation), as fp32 rows on the device."""
    model.eval()
    ctx = torch.autocast(images.device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    out = []
    with ctx:
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], scale, bias, amp_dtype or torch.float32)
            out.append(fn(model, x).float())
    return torch.cat(out)


# ============================================================================ one training phase
def _train_phase(phase: str, model: nn.Module, cfg: RunConfig, batches: _Batches, loss_of, *, epochs: float,
                 amp_dtype, device: torch.device, log: Callable[[str], None], rows: list[dict]) -> float:
    """Train `model` for `epochs` over `batches` with cfg's optimiser and per-batch schedule; returns seconds."""
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(batches)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    n_epochs = math.ceil(total / steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp_dtype == torch.float16 and device.type == "cuda"))
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    step, spent = 0, 0.0
    for epoch in range(n_epochs):
        model.train()
        batches.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        sync(device)
        t0 = time.perf_counter()
        for inputs, targets in batches:
            if step >= total:
                break
            mult = lr_multiplier(step, total, cfg)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * mult
            with autocast():
                loss = loss_of(model, inputs, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            loss_sum += loss.detach() * len(inputs)
            seen += len(inputs)
        sync(device)
        epoch_s = time.perf_counter() - t0
        spent += epoch_s
        row = {"phase": phase, "epoch": epoch + 1, "train_loss": loss_sum.item() / max(seen, 1),
               "lr": optimizer.param_groups[0]["lr"], "epoch_s": round(epoch_s, 4),
               "imgs_per_s": round(seen / max(epoch_s, 1e-9), 1)}
        rows.append(row)
        log(f"{phase} epoch {epoch + 1:>3}/{n_epochs} loss {row['train_loss']:.4f} {epoch_s:.1f}s "
            f"{row['imgs_per_s']:,.0f} img/s")
    return spent


def _cross_entropy(label_smoothing: float):
    def loss_of(model: nn.Module, inputs: torch.Tensor, targets) -> torch.Tensor:
        logits = model(inputs).float()
        loss = F.cross_entropy(logits, targets.y_a, reduction="none", label_smoothing=label_smoothing)
        if targets.y_b is not targets.y_a:
            loss_b = F.cross_entropy(logits, targets.y_b, reduction="none", label_smoothing=label_smoothing)
            loss = targets.lam * loss + (1 - targets.lam) * loss_b
        return loss.mean()

    return loss_of


def _multi_similarity(opts: RetrievalOptions):
    def loss_of(model: nn.Module, inputs: torch.Tensor, targets) -> torch.Tensor:
        return multi_similarity_loss(model(inputs), targets.y_a, alpha=opts.alpha, beta=opts.beta, lam=opts.lam,
                                     eps=opts.eps)

    return loss_of


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return backbone_features(model, x)


def _embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# ============================================================================ the run
@rundir.releases_run_folder  # the folder claimed below is released at exit; a failed start leaves nothing
def train_retrieval(cfg: RunConfig, *, quiet: bool = False) -> dict:

    cfg.validate()
    opts = RetrievalOptions.from_dict(cfg.retrieval)
    log = (lambda s: None) if quiet else print
    t_run = time.perf_counter()
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    amp_dtype = resolve_amp(cfg.amp, device)
    if cfg.pipeline != "tensor":
        raise ConfigError(f"--pipeline {cfg.pipeline}: retrieval runs on the tensor format only")
    out_dir = Path(cfg.out or f"runs/{cfg.model}-retrieval-{time.strftime('%Y%m%d-%H%M%S')}")
    rundir.claim(out_dir, force=cfg.force, log=log)
    cfg.out = str(out_dir)
    cfg.save(out_dir / "config.json")

    # --- data: train classes and held-out test classes, whole uint8 sets on the device
    meta = read_meta(cfg.data)
    train_classes, test_classes = class_split(meta, opts)
    tr_x, tr_y = pooled_by_class(cfg.data, train_classes)
    te_x, te_y = pooled_by_class(cfg.data, test_classes)
    tr_idx = stratified_subset(tr_y, cfg.train_subset or len(tr_y), cfg.seed)
    te_idx = stratified_subset(te_y, cfg.test_subset or len(te_y), cfg.seed)
    remap = np.full(meta["num_classes"], -1, dtype=np.int64)
    remap[train_classes] = np.arange(len(train_classes))  # train labels -> 0..C-1 for the classifier
    train_images = torch.from_numpy(tr_x[tr_idx]).to(device)
    train_labels = torch.from_numpy(remap[tr_y[tr_idx]]).to(device)
    test_images = torch.from_numpy(te_x[te_idx]).to(device)
    test_labels = torch.from_numpy(te_y[te_idx]).to(device)
    scale, bias = norm_constants(meta["mean"], meta["std"], device)
    in_dtype = amp_dtype or torch.float32
    h, w = train_images.shape[1:3]

    model = create_model(cfg.model, len(train_classes), **cfg.model_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if cfg.compile else model
    log(f"{cfg.model} retrieval on {meta['name']}: {len(train_classes)} train classes ({len(train_labels)} images) "
        f"/ {len(test_classes)} test classes ({len(test_labels)} images), {h}x{w} | device {device} | amp {amp_dtype}")

    rows: list[dict] = []
    recall: dict[str, dict[str, float]] = {}

    def measure(name: str, fn, net: nn.Module) -> None:
        emb = embed_all(fn, net, test_images, scale, bias, amp_dtype, opts.eval_batch_size)
        r = recall_at_k(emb, test_labels, opts.ks)
        recall[name] = {f"R@{k}": round(v, 6) for k, v in r.items()}
        log(f"{name}: " + "  ".join(f"R@{k} {v:.4f}" for k, v in r.items()))

    measure("init", _features, model)

    # --- phase 1: classification over the train classes
    cls_epochs = cfg.epochs if opts.cls_epochs is None else opts.cls_epochs
    aug_cfg = AugmentConfig(crop_pad=cfg.crop_pad, pad_mode=cfg.pad_mode, flip=cfg.flip, cutout=cfg.cutout,
                            mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, mix_prob=cfg.mix_prob)
    train_s = 0.0
    seen_imgs = 0
    if cls_epochs > 0:
        batches = _Batches(train_images, train_labels, _ShuffledIndices(len(train_labels), cfg.batch_size, device,
                                                                         cfg.seed),
                           AugmentSampler(aug_cfg, seed=cfg.seed + 1, device=device), scale, bias, in_dtype)
        phase_cfg = dataclasses.replace(cfg, epochs=cls_epochs)
        train_s += _train_phase("classify", step_model, phase_cfg, batches, _cross_entropy(cfg.label_smoothing),
                                epochs=cls_epochs, amp_dtype=amp_dtype, device=device, log=log, rows=rows)
        seen_imgs += math.ceil(cls_epochs * len(batches)) * cfg.batch_size
    atomic_torch_save({"model": model.state_dict(), "config": cfg.to_dict(), "train_classes": train_classes,
                       "classes": meta["classes"]}, out_dir / "backbone.pt")
    measure("backbone", _features, model)

    # --- phase 2: crop the classifier, add the embedding, train with the multi-similarity loss
    net = EmbeddingNet(model, opts.embedding_dim).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    step_net = torch.compile(net) if cfg.compile else net
    embed_epochs = cfg.epochs if opts.embed_epochs is None else opts.embed_epochs
    embed_lr = opts.embed_lr if opts.embed_lr is not None else cfg.lr / 10
    sampler = ClassBalancedSampler(train_labels, cfg.batch_size, opts.m_per_class, seed=cfg.seed + 2)
    no_mix = dataclasses.replace(aug_cfg, mixup_alpha=0.0, cutmix_alpha=0.0)
    batches = _Batches(train_images, train_labels, sampler, AugmentSampler(no_mix, seed=cfg.seed + 3, device=device),
                       scale, bias, in_dtype)
    phase = dict(epochs=embed_epochs, lr=embed_lr, warmup_frac=opts.embed_warmup_frac)
    if any(f.name == "warmup_epochs" for f in dataclasses.fields(cfg)):
        phase["warmup_epochs"] = None  # phase 2 warms up by embed_warmup_frac
    phase_cfg = dataclasses.replace(cfg, **phase)
    train_s += _train_phase("embed", step_net, phase_cfg, batches, _multi_similarity(opts), epochs=embed_epochs,
                            amp_dtype=amp_dtype, device=device, log=log, rows=rows)
    seen_imgs += math.ceil(embed_epochs * len(batches)) * sampler.batch_size
    measure("embedding", _embeddings, net)

    # --- run directory
    atomic_torch_save({"model": net.state_dict(), "config": cfg.to_dict(), "train_classes": train_classes,
                       "test_classes": test_classes, "classes": meta["classes"], "mean": meta["mean"],
                       "std": meta["std"], "recall": recall}, out_dir / "checkpoint.pt")
    with open(out_dir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_json(out_dir / "recall.json", recall)
    _plot(rows, recall, out_dir / "curves.png", f"{cfg.model} retrieval on {meta['name']}")
    final = recall["embedding"]
    summary = {
        "task": "retrieval", "model": cfg.model, "dataset": meta["name"], "recipe": cfg.recipe,
        "epochs": cfg.epochs, "cls_epochs": cls_epochs, "embed_epochs": embed_epochs,
        "test_acc": final.get("R@1"), "recall": final, "recall_backbone": recall["backbone"],
        "recall_init": recall["init"], "train_classes": len(train_classes), "test_classes": len(test_classes),
        "train_samples": len(train_labels), "test_samples": len(test_labels), "embedding_dim": opts.embedding_dim,
        "train_s": round(train_s, 3), "wall_s": round(time.perf_counter() - t_run, 3),
        "train_imgs_per_s": round(seen_imgs / max(train_s, 1e-9), 1), "device": device_name(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "compile": cfg.compile,
        "params": sum(p.numel() for p in net.parameters()), "batch_size": cfg.batch_size,
        "torch": torch.__version__,
    }
    write_json(out_dir / "summary.json", summary)
    log("summary: " + json.dumps({k: summary[k] for k in ("recall_backbone", "recall", "wall_s")}))
    return summary


def _plot(rows: list[dict], recall: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_rec) = plt.subplots(1, 2, figsize=(10, 4))
    for phase in ("classify", "embed"):
        pts = [(r["epoch"], r["train_loss"]) for r in rows if r["phase"] == phase]
        if pts:
            ax_loss.plot(*zip(*pts), marker="o", label=phase)
    ax_loss.set(xlabel="epoch (per phase)", ylabel="train loss", title="loss")
    ax_loss.legend()
    for name, r in recall.items():
        ks = [int(k[2:]) for k in r]
        ax_rec.plot(ks, list(r.values()), marker="s", label=name)
    ax_rec.set(xlabel="K", ylabel="Recall@K", title="Recall@K on the test classes", xscale="log", ylim=(0, 1))
    ax_rec.legend()
    for ax in (ax_loss, ax_rec):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
