"""train_retrieval(cfg): the Cars196 retrieval task, `fasttrain run MODEL --task retrieval`. Two phases.

  data     every image of the dataset (all splits pooled), divided by class: the dataset's recorded
           "retrieval_split" (Cars196: classes 1-98 train, 99-196 test) or, without one, the first
           `train_classes` classes (default: half) train and the rest test. Whole uint8 sets on the device.
  phase 0  Recall@K of the untrained backbone's pooled features on the test classes (a floor).
  phase 1  classification: cross-entropy over the train classes (cfg's optimiser, schedule, augmentation,
           label smoothing; `cls_epochs`), then Recall@K of the backbone's pooled features: the number the
           task asks for before the embedding head exists. Checkpoint: backbone.pt.
  phase 2  the classifier is cropped and a 512-d L2-normalised embedding added (EmbeddingNet); the whole
           network trains on class-balanced batches (P classes x m images) with the multi-similarity loss
           (`embed_epochs`, lr `embed_lr`; no mixup/cutmix: mixing labels means nothing to a pair loss).
           Recall@1/2/4/8 of the embedding on the test classes. Checkpoint: checkpoint.pt.

The run directory gets config.json, metrics.jsonl (one row per epoch and phase), recall.json, curves.png
and summary.json, whose `test_acc` is the final Recall@1 (= leave-one-out 1-NN accuracy on unseen classes).

Both phases train through the classification trainer's pieces: a task object (ClassificationTask, then
MetricLearningTask) stepped by `fasttrain.steps.TrainStep` (per-batch schedule, AMP, gradient accumulation,
clipping, EMA, lookahead), the loss guard, and `fasttrain.checkpoint`'s writer. With --ema each phase ends on
its average: the backbone phase 2 starts from, and what Recall@K measures. Options that cannot apply are
refused by `refuse_unsupported` with a ConfigError naming them (resume, several processes, a val split,
test-time augmentation, per-epoch evaluation, a pipeline other than tensor or stream). On a jpeg store
(`--pipeline stream`) the images are the original photos, cropped anew every epoch (retrieval/streamed.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from functools import partial
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import checkpoint as ckpt_io
from ..augment import AugmentSampler, augment_batch, norm_constants, normalize
from ..config import ConfigError, RunConfig
from ..data.splits import epoch_permutation, stratified_subset
from ..data.tensor_format import load_split, read_meta
from ..distributed import in_torchrun
from ..ema import ModelEma
from ..models import create_model
from ..optim import Lookahead, build_optimizer
from ..stopping import LossGuard
from .. import rundir  # run folder: lock, refusals, failed-start cleanup
from ..fileio import write_json
from ..runtime import check_model_fits, device_name, sync
from ..runsetup import augment_config, build_patchup, build_runtime, prepare_run_dir, record_config
from ..steps import EpochTally, Precision, TrainStep
from ..tasks import ClassificationTask
from .loss import MetricLearningTask
from .metrics import recall_at_k
from .model import EmbeddingNet, backbone_features
from .options import RetrievalOptions
from .sampler import ClassBalancedSampler
from .streamed import DEFAULT_RES as STREAM_RES, StreamedPool

__all__ = ["RetrievalOptions", "class_split", "pooled_by_class", "refuse_unsupported", "train_retrieval"]


# ============================================================================ what retrieval refuses
def refuse_unsupported(cfg: RunConfig, *, resume: bool = False) -> None:
    """Options the retrieval task cannot honour, each refused with a ConfigError naming it (never dropped
    silently). Everything else (optimiser, schedule, AMP, compile, accumulation, clipping, EMA, lookahead,
    augmentation incl. switch_prob and mix_off_epoch, PatchUp in phase 1) applies to both phases."""
    if resume:
        raise ConfigError("--resume: a retrieval run cannot be resumed yet (its checkpoints hold weights only); "
                          "start it again without --resume")
    if cfg.nproc > 1 or in_torchrun():
        raise ConfigError("--nproc: the retrieval task runs in one process; drop --nproc (or torchrun)")
    if cfg.pipeline not in ("tensor", "stream"):
        raise ConfigError(f"--pipeline {cfg.pipeline}: retrieval runs on the tensor format, or on a jpeg store "
                          f"with --pipeline stream")
    if cfg.pipeline == "stream" and cfg.max_res not in (None, cfg.min_res):
        raise ConfigError(f"--max-res {cfg.max_res}: retrieval trains at one resolution (--min-res) and "
                          f"evaluates at --val-res; no progressive resizing")
    if cfg.val_split:
        raise ConfigError(f"--val-split {cfg.val_split}: retrieval selects no model on a val split (Recall@K is "
                          f"measured on classes never trained on); drop --val-split and --early-stop")
    if cfg.tta != "none":
        raise ConfigError(f"--tta {cfg.tta}: Recall@K is measured without test-time augmentation; pass --tta none")
    if cfg.eval_every:
        raise ConfigError(f"--eval-every {cfg.eval_every}: retrieval measures Recall@K at the end of each phase "
                          f"only; pass --eval-every 0")


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
    """Augmented batches (inputs, targets, whether the batch was mixed) from uint8 images on the device,
    for either phase. Mixing stops after `mix_off_epoch` epochs, as in classification."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, index_source, aug: AugmentSampler, scale, bias,
                 dtype: torch.dtype, mix_off_epoch: int | None = None, recrop: Callable[[int], torch.Tensor] | None = None):
        self.images, self.labels, self.index_source = images, labels, index_source
        self.aug, self.scale, self.bias, self.dtype = aug, scale, bias, dtype
        self.mix_off_epoch = mix_off_epoch
        self.mix = True
        self.recrop = recrop  # epoch -> that epoch's images (a jpeg store: new random-resized crops)

    def __len__(self) -> int:
        return len(self.index_source)

    def set_epoch(self, epoch: int) -> None:
        self.index_source.set_epoch(epoch)
        self.mix = self.mix_off_epoch is None or epoch < self.mix_off_epoch
        if self.recrop is not None:
            self.images = self.recrop(epoch)

    def __iter__(self) -> Iterator:
        h, w = self.images.shape[1:3]
        for idx in self.index_source:
            x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            params = self.aug.sample(len(x), h, w, mix=self.mix)
            yield *augment_batch(x, y, params, self.scale, self.bias, self.dtype), params.has_mix


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
def embed_all(fn: Callable[[nn.Module, torch.Tensor], torch.Tensor], model: nn.Module, images: torch.Tensor,
              scale, bias, precision: Precision, batch_size: int) -> torch.Tensor:
    """fn(model, x) for every image (eval mode, no augmentation), as fp32 rows on the device."""
    model.eval()
    out = []
    with precision.autocast():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size], scale, bias, precision.input_dtype)
            out.append(fn(model, x).float())
    return torch.cat(out)


# ============================================================================ one training phase
def run_phase(phase: str, task, cfg: RunConfig, batches: _Batches, *, epochs: float, precision: Precision,
              log: Callable[[str], None], rows: list[dict]) -> tuple[float, int]:
    """Trains `task` for `epochs` over `batches` with cfg's optimiser, per-batch schedule and step options;
    appends one metrics row per epoch; returns (training seconds, images seen). With EMA the phase ends
    on the average (copied into the model)."""
    model, device = task.model, precision.device
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = len(batches)
    total = max(1, math.ceil(epochs * steps_per_epoch))
    n_epochs = math.ceil(total / steps_per_epoch)
    ema = ModelEma(model, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema else None
    lookahead = Lookahead(model, total) if cfg.lookahead else None
    train_step = TrainStep(task, optimizer, cfg, precision, total_steps=total, steps_per_epoch=steps_per_epoch, ema=ema,
                      lookahead=lookahead)
    guard = LossGuard(device)
    spent, images = 0.0, 0
    for epoch in range(n_epochs):
        model.train()
        batches.set_epoch(epoch)
        sync(device)
        tally = EpochTally.start(device)
        for batch_i, (inputs, targets, mixed) in enumerate(batches):
            if train_step.done:
                break
            out = train_step(inputs, targets, end_of_epoch=batch_i + 1 == steps_per_epoch,
                          mix_features=batches.mix and not mixed)
            guard.observe(out.loss, train_step.step)
            tally.add(out, len(inputs))
        sync(device)
        guard.check(steps_per_epoch=steps_per_epoch)  # a diverged phase stops the run (NonFiniteLoss)
        epoch_s = tally.elapsed_s()
        spent, images = spent + epoch_s, images + tally.seen
        row = {"phase": phase, "epoch": epoch + 1, "train_loss": tally.loss_sum.item() / max(tally.seen, 1),
               "lr": optimizer.param_groups[0]["lr"], "epoch_s": round(epoch_s, 4),
               "imgs_per_s": round(tally.seen / max(epoch_s, 1e-9), 1)}
        rows.append(row)
        log(f"{phase} epoch {epoch + 1:>3}/{n_epochs} loss {row['train_loss']:.4f} {epoch_s:.1f}s "
            f"{row['imgs_per_s']:,.0f} img/s")
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return spent, images


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return backbone_features(model, x)


def _embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# ============================================================================ the run
@rundir.releases_run_folder  # the folder claimed below is released at exit; a failed start leaves nothing
def train_retrieval(cfg: RunConfig, *, quiet: bool = False, resume: bool = False) -> dict:
    """Trains and measures retrieval per `cfg` (see the module docstring); returns the summary."""
    cfg.validate()
    opts = RetrievalOptions.from_dict(cfg.retrieval)
    refuse_unsupported(cfg, resume=resume)
    log = (lambda s: None) if quiet else print
    t_run = time.perf_counter()
    rt = build_runtime(cfg)  # the setup every kind of run shares (fasttrain.runsetup)
    device, precision = rt.device, rt.precision
    out_dir, folder = prepare_run_dir(cfg, rt, resume=resume, log=log)
    meta = read_meta(cfg.data)
    record_config(cfg, meta, rt, out_dir, folder, resume=resume)

    # --- data: train classes and held-out test classes, whole uint8 sets on the device
    train_classes, test_classes = class_split(meta, opts)
    remap = np.full(meta["num_classes"], -1, dtype=np.int64)
    remap[train_classes] = np.arange(len(train_classes))  # train labels -> 0..C-1 for the classifier
    recrop: Callable[[int], torch.Tensor] | None = None
    if cfg.pipeline == "stream":  # photos of every size: a new random-resized crop of each every epoch
        train_pool, test_pool = (StreamedPool.of_classes(cfg.data, c) for c in (train_classes, test_classes))
        train_pool = train_pool.subset(stratified_subset(train_pool.labels, cfg.train_subset or len(train_pool.labels),
                                                         cfg.seed))
        test_pool = test_pool.subset(stratified_subset(test_pool.labels, cfg.test_subset or len(test_pool.labels),
                                                       cfg.seed))
        res = cfg.min_res or STREAM_RES
        recrop = partial(train_pool.decode, res=res, device=device, seed=cfg.seed, flip=cfg.flip)
        train_images, train_y = recrop(epoch=0), train_pool.labels
        test_images, test_y = test_pool.decode(res=cfg.val_res or res, device=device, seed=cfg.seed, train=False), \
            test_pool.labels
    else:
        tr_x, tr_y = pooled_by_class(cfg.data, train_classes)
        te_x, te_y = pooled_by_class(cfg.data, test_classes)
        tr_idx = stratified_subset(tr_y, cfg.train_subset or len(tr_y), cfg.seed)
        te_idx = stratified_subset(te_y, cfg.test_subset or len(te_y), cfg.seed)
        train_images, train_y = torch.from_numpy(tr_x[tr_idx]).to(device), tr_y[tr_idx]
        test_images, test_y = torch.from_numpy(te_x[te_idx]).to(device), te_y[te_idx]
    train_labels = torch.from_numpy(remap[train_y]).to(device)
    test_labels = torch.from_numpy(test_y).to(device)
    scale, bias = norm_constants(meta["mean"], meta["std"], device)
    h, w = train_images.shape[1:3]

    check_model_fits(cfg.model, len(train_classes), cfg.model_kwargs, device)
    model = create_model(cfg.model, len(train_classes), **cfg.model_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log(f"{cfg.model} retrieval on {meta['name']}: {len(train_classes)} train classes ({len(train_labels)} images) "
        f"/ {len(test_classes)} test classes ({len(test_labels)} images), {h}x{w} | device {device} | "
        f"amp {precision.name}")

    rows: list[dict] = []
    recall: dict[str, dict[str, float]] = {}

    def measure(name: str, fn, net: nn.Module) -> None:
        emb = embed_all(fn, net, test_images, scale, bias, precision, opts.eval_batch_size)
        r = recall_at_k(emb, test_labels, opts.ks)
        recall[name] = {f"R@{k}": round(v, 6) for k, v in r.items()}
        log(f"{name}: " + "  ".join(f"R@{k} {v:.4f}" for k, v in r.items()))

    def save(name: str, net: nn.Module, **extra) -> None:
        ckpt_io.save(out_dir / name, ckpt_io.weights_payload(net.state_dict(), cfg.to_dict(), meta,
                                                             train_classes=train_classes, **extra))

    measure("init", _features, model)

    # --- phase 1: classification over the train classes
    cls_epochs = cfg.epochs if opts.cls_epochs is None else opts.cls_epochs
    crops = recrop is not None  # the decode has cropped and flipped already
    aug_cfg = augment_config(cfg, decode_crops=crops)
    train_s, seen_imgs = 0.0, 0
    if cls_epochs > 0:
        patchup = build_patchup(cfg, model, (h, w), device)
        task = ClassificationTask(model, torch.compile(model) if cfg.compile else model,
                                  label_smoothing=cfg.label_smoothing, patchup=patchup)
        batches = _Batches(train_images, train_labels, _ShuffledIndices(len(train_labels), cfg.batch_size, device,
                                                                         cfg.seed),
                           AugmentSampler(aug_cfg, seed=cfg.seed + 1, device=device), scale, bias,
                           precision.input_dtype, mix_off_epoch=cfg.mix_off_epoch, recrop=recrop)
        spent, images = run_phase("classify", task, dataclasses.replace(cfg, epochs=cls_epochs), batches,
                                  epochs=cls_epochs, precision=precision, log=log, rows=rows)
        train_s, seen_imgs = train_s + spent, seen_imgs + images
        if patchup is not None:
            patchup.remove()
    save("backbone.pt", model)
    measure("backbone", _features, model)

    # --- phase 2: crop the classifier, add the embedding, train with the multi-similarity loss
    net = EmbeddingNet(model, opts.embedding_dim).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    embed_epochs = cfg.epochs if opts.embed_epochs is None else opts.embed_epochs
    embed_lr = opts.embed_lr if opts.embed_lr is not None else cfg.lr / 10
    sampler = ClassBalancedSampler(train_labels, cfg.batch_size, opts.m_per_class, seed=cfg.seed + 2)
    no_mix = dataclasses.replace(aug_cfg, mixup_alpha=0.0, cutmix_alpha=0.0)  # mixed labels mean nothing to pairs
    phase1_epochs = math.ceil(cls_epochs) if cls_epochs > 0 else 0  # phase 2's crops follow phase 1's epochs
    batches = _Batches(train_images, train_labels, sampler, AugmentSampler(no_mix, seed=cfg.seed + 3, device=device),
                       scale, bias, precision.input_dtype,
                       recrop=(lambda epoch: recrop(epoch=phase1_epochs + epoch)) if crops else None)
    # phase 2 warms up by embed_warmup_frac (its head starts random)
    phase_cfg = dataclasses.replace(cfg, epochs=embed_epochs, lr=embed_lr, warmup_frac=opts.embed_warmup_frac,
                                    warmup_epochs=None)
    task = MetricLearningTask(net, torch.compile(net) if cfg.compile else net, alpha=opts.alpha, beta=opts.beta,
                              lam=opts.lam, eps=opts.eps)
    spent, images = run_phase("embed", task, phase_cfg, batches, epochs=embed_epochs, precision=precision, log=log,
                              rows=rows)
    train_s, seen_imgs = train_s + spent, seen_imgs + images
    measure("embedding", _embeddings, net)

    # --- run directory
    save("checkpoint.pt", net, test_classes=test_classes, recall=recall)
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
        "amp": precision.name, "compile": cfg.compile,
        "params": sum(p.numel() for p in net.parameters()), "batch_size": cfg.batch_size,
        "torch": torch.__version__,
    }
    write_json(out_dir / "summary.json", summary)
    log("summary: " + json.dumps({k: summary[k] for k in ("recall_backbone", "recall", "wall_s")}))
    return summary


def _plot(rows: list[dict], recall: dict, path: Path, title: str) -> None:
    import matplotlib  # heavy: loaded only when a run finishes

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
