"""Retrieval: Recall@K and the multi-similarity loss against their references, the class-balanced sampler,
the embedding head, the attention blocks and custom CNN, and an end-to-end run on real CIFAR-10 JPEGs split
by class (train on 5 classes, retrieve among the other 5)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from fasttrain.models import create_model
from fasttrain.models.attention import AttentionBlock, ChannelAttention, SpatialAttention
from fasttrain.retrieval import (
    ClassBalancedSampler,
    multi_similarity_loss,
    multi_similarity_loss_reference,
    recall_at_k,
    recall_at_k_reference,
)
from fasttrain.retrieval.model import EmbeddingNet, backbone_features
from fasttrain.retrieval.trainer import RetrievalOptions, class_split


# ============================================================================ Recall@K
@pytest.mark.parametrize("n,d,classes,chunk", [(37, 8, 5, 7), (120, 16, 12, 1024), (9, 4, 3, 2)])
def test_recall_at_k_matches_brute_force(n, d, classes, chunk):
    g = torch.Generator().manual_seed(n)
    emb = torch.randn(n, d, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    ks = (1, 2, 4, 8, 16)
    fast = recall_at_k(emb, labels, ks, chunk=chunk)
    ref = recall_at_k_reference(emb, labels, ks)
    assert fast == pytest.approx(ref, abs=1e-12)
    assert all(fast[a] <= fast[b] for a, b in zip(ks, ks[1:]))  # monotone in K


def test_recall_at_k_by_hand_and_switch(monkeypatch):
    # 1-d embeddings on a circle: 0 and 1 are neighbours of the same class, 2's nearest is 3 (other class)
    angles = torch.tensor([0.0, 0.1, 1.0, 1.2, 3.0])
    emb = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    labels = torch.tensor([0, 0, 1, 2, 1])
    r = recall_at_k(emb, labels, (1, 2, 4))
    # queries: 0 -> 1 hit; 1 -> 0 hit; 2 -> 3 miss, then 1 (miss), then 0/4: 4 at rank 4 -> hit at K=4 only
    # 3 -> 2 miss (only label-2 image): never; 4 -> 3 miss, 2 hit at rank 2
    assert r == {1: 2 / 5, 2: 3 / 5, 4: 4 / 5}
    monkeypatch.setenv("FASTTRAIN_RETRIEVAL", "reference")
    assert recall_at_k(emb, labels, (1, 2, 4)) == r
    with pytest.raises(ValueError, match="embeddings must be"):
        recall_at_k(emb[0], labels)


# ============================================================================ multi-similarity loss
def _balanced_batch(p: int, m: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(p).repeat_interleave(m)
    emb = nn.functional.normalize(torch.randn(p * m, d, generator=g), dim=1)
    return emb, labels


@pytest.mark.parametrize("p,m,d,seed", [(4, 3, 8, 0), (6, 2, 16, 1), (3, 5, 4, 2)])
def test_ms_loss_matches_reference_values_and_grads(p, m, d, seed):
    emb, labels = _balanced_batch(p, m, d, seed)
    for eps, lam in ((0.1, 0.5), (1.0, 0.0), (0.0, 0.8)):  # eps=1 mines every pair
        a = emb.clone().requires_grad_(True)
        b = emb.clone().requires_grad_(True)
        fast = multi_similarity_loss(a, labels, eps=eps, lam=lam)
        ref = multi_similarity_loss_reference(b, labels, eps=eps, lam=lam)
        fast.backward()
        ref.backward()
        assert fast.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_ms_loss_edge_cases_and_direction(monkeypatch):
    # an anchor without positives (label 9) and large beta: finite loss, finite gradients, same as reference
    emb, labels = _balanced_batch(3, 2, 8, 3)
    labels = torch.cat([labels, torch.tensor([9])])
    emb = torch.cat([emb, nn.functional.normalize(torch.ones(1, 8), dim=1)])
    x = emb.clone().requires_grad_(True)
    loss = multi_similarity_loss(x, labels, beta=80.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert loss.item() == pytest.approx(multi_similarity_loss_reference(emb, labels, beta=80.0).item(), rel=1e-5)
    # clustered embeddings (classes on orthogonal axes) score far lower than random ones
    labels = torch.arange(4).repeat_interleave(3)
    clustered = torch.eye(8)[labels]
    rand, _ = _balanced_batch(4, 3, 8, 4)
    assert multi_similarity_loss(clustered, labels) < 0.1 * multi_similarity_loss(rand, labels)
    # the switch forces the reference
    monkeypatch.setenv("FASTTRAIN_RETRIEVAL", "reference")
    assert multi_similarity_loss(rand, labels).item() == multi_similarity_loss_reference(rand, labels).item()


# ============================================================================ sampler
def test_class_balanced_sampler():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 3 + [3] * 8 + [4] * 12)
    s = ClassBalancedSampler(labels, batch_size=12, m=4, seed=5)
    assert s.batch_size == 12 and len(s) == len(labels) // 12
    batches = list(s)
    assert len(batches) == len(s)
    for idx in batches:
        y = labels[idx].view(3, 4)  # P=3 classes x m=4, class by class
        assert (y == y[:, :1]).all() and len(set(y[:, 0].tolist())) == 3
        for row, members in zip(y[:, 0].tolist(), idx.view(3, 4)):
            if row != 2:  # classes with >= m images: no repeats
                assert len(set(members.tolist())) == 4
            else:  # class 2 has 3 images: all of them, one repeated
                assert set(members.tolist()) == {16, 17, 18}
    again = [b.clone() for b in s]
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # reproducible
    s.set_epoch(1)
    assert not all(torch.equal(a, b) for a, b in zip(batches, s))  # a new epoch draws new batches
    with pytest.raises(ValueError, match="m .* must be >= 2"):
        ClassBalancedSampler(labels, 12, m=1)


# ============================================================================ embedding head, features
def test_embedding_net_crops_the_classifier():
    torch.manual_seed(0)
    model = create_model("resnet18_attn", 7, width=0.125)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    feats = backbone_features(model, x)
    assert feats.shape == (4, model.num_features)
    net = EmbeddingNet(model, 512).eval()
    out = net(x)
    assert out.shape == (4, 512) and torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-5)
    assert isinstance(model.fc, nn.Identity)
    assert sum(isinstance(m, nn.Linear) and m.out_features == 7 for m in net.modules()) == 0
    # a model without forward_features: features are the classifier's input, taken by a hook
    r9 = create_model("resnet9", 5).eval()
    seen = []
    r9.modules  # noqa: B018
    lin = [m for m in r9.modules() if isinstance(m, nn.Linear)][-1]
    h = lin.register_forward_pre_hook(lambda mod, a: seen.append(a[0]))
    r9(x)
    h.remove()
    torch.testing.assert_close(backbone_features(r9, x), seen[0].flatten(1))


def test_class_split_and_options():
    meta = {"num_classes": 10}
    assert class_split(meta, RetrievalOptions()) == (list(range(5)), list(range(5, 10)))
    assert class_split(meta, RetrievalOptions(train_classes=3)) == ([0, 1, 2], list(range(3, 10)))
    cars = {"num_classes": 196, "retrieval_split": {"train_classes": list(range(98)),
                                                    "test_classes": list(range(98, 196))}}
    assert class_split(cars, RetrievalOptions()) == (list(range(98)), list(range(98, 196)))
    from fasttrain.config import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        RetrievalOptions.from_dict({"embed_dim": 3})
    with pytest.raises(ConfigError, match="m_per_class"):
        RetrievalOptions.from_dict({"m_per_class": 1})


# ============================================================================ attention, custom CNN
def test_attention_blocks():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 8, 8)
    for attention in ("both", "channel", "spatial"):
        for placement in ("sequential", "parallel"):
            blk = AttentionBlock(32, attention, placement).eval()
            assert blk(x).shape == x.shape
    seq = AttentionBlock(32, "both", "sequential").eval()
    par = AttentionBlock(32, "both", "parallel").eval()
    par.load_state_dict(seq.state_dict())
    ca, sa = seq.channel, seq.spatial
    torch.testing.assert_close(seq(x), sa(ca(x)))  # channel, then spatial on its output
    torch.testing.assert_close(par(x), x * torch.sigmoid(ca.logits(x) + sa.logits(x)))  # one gate from both
    assert not torch.allclose(seq(x), par(x))
    only = AttentionBlock(32, "channel").eval()
    assert only.spatial is None and isinstance(only.channel, ChannelAttention)
    assert isinstance(AttentionBlock(32, "spatial").spatial, SpatialAttention)
    with pytest.raises(ValueError, match="placement"):
        AttentionBlock(32, "both", "diagonal")


@pytest.mark.parametrize("name,kw", [("resnet18_attn", dict(width=0.125)),
                                     ("resnet18_attn", dict(width=0.125, attention="spatial", placement="parallel")),
                                     ("customcnn", dict(width=0.25, depth=1))])
def test_models_forward_backward(name, kw):
    torch.manual_seed(0)
    model = create_model(name, 200, **kw)
    if name == "resnet18_attn":
        assert sum(isinstance(m, AttentionBlock) for m in model.modules()) == 8  # after every residual block
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 200)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ============================================================================ the shared training step
def _phase_setup(batch_size: int, **cfg_kw):
    """Real uint8 images, a conv net without BatchNorm (so accumulated micro-batches equal one large batch)
    and phase-1 batches with augmentation off (so the data order alone decides the batches)."""
    from fasttrain.augment import AugmentConfig, AugmentSampler, norm_constants
    from fasttrain.config import RunConfig
    from fasttrain.retrieval.trainer import _Batches, _ShuffledIndices
    from fasttrain.steps import Precision
    from fasttrain.tasks import ClassificationTask

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 8, 8, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    cfg = RunConfig(batch_size=batch_size, lr=0.1, schedule="constant", warmup_frac=0.0, epochs=2, **cfg_kw)
    scale, bias = norm_constants([0.5] * 3, [0.25] * 3, "cpu")
    aug = AugmentSampler(AugmentConfig(crop_pad=0, flip=False), seed=1)
    batches = _Batches(images, labels, _ShuffledIndices(40, batch_size, torch.device("cpu"), seed=0), aug, scale,
                       bias, torch.float32)
    return model, ClassificationTask(model, model), cfg, batches, Precision(torch.device("cpu"), None)


def _train_phase(batch_size: int, **cfg_kw) -> dict:
    from fasttrain.retrieval.trainer import run_phase

    model, task, cfg, batches, precision = _phase_setup(batch_size, **cfg_kw)
    rows: list[dict] = []
    run_phase("classify", task, cfg, batches, epochs=2, precision=precision, log=lambda s: None, rows=rows)
    assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["train_loss"]) for r in rows)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_retrieval_phase_accumulates_gradients_like_a_large_batch():
    one_step = _train_phase(20)
    accumulated = _train_phase(10, accum_steps=2)  # two micro-batches of 10 per optimiser step
    for k in one_step:
        torch.testing.assert_close(accumulated[k], one_step[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(_train_phase(10).values(), one_step.values()))


def test_retrieval_phase_ends_on_the_ema_of_its_weights():
    init = _phase_setup(20)[0].state_dict()
    plain, averaged = _train_phase(20), _train_phase(20, ema=True, ema_decay=0.9, ema_warmup=False)
    moved = lambda w: sum(float((w[k] - init[k]).norm()) for k in init)  # noqa: E731
    assert 0 < moved(averaged) < 0.75 * moved(plain)  # the average lags the weights it averages


def test_retrieval_refuses_what_it_cannot_honour(cifar_tensor_slice, tmp_path):
    from fasttrain.config import ConfigError, RECIPES, RunConfig
    from fasttrain.retrieval.trainer import train_retrieval

    base = dict(RECIPES["retrieval"], model="customcnn", data=str(cifar_tensor_slice), device="cpu")
    cases = [({}, True, "--resume: a retrieval run cannot be resumed"),
             ({"val_split": 20}, False, "--val-split 20: retrieval selects no model"),
             ({"tta": "flip"}, False, "--tta flip: Recall@K is measured without"),
             ({"eval_every": 1}, False, "--eval-every 1: retrieval measures Recall@K")]
    for i, (change, resume, message) in enumerate(cases):
        out = tmp_path / f"run{i}"
        with pytest.raises(ConfigError, match=re.escape(message)):
            train_retrieval(RunConfig(**{**base, **change, "out": str(out)}), quiet=True, resume=resume)
        assert not out.exists()  # refused before any work


# ============================================================================ end to end on real data
@pytest.fixture(scope="module")
def cifar_by_class(tmp_path_factory):
    """60 + 20 real JPEGs per CIFAR-10 class, converted; retrieval pools them and splits 5 / 5 classes."""
    from conftest import extract_jpeg_slice

    from fasttrain.data.convert import convert

    src = extract_jpeg_slice(tmp_path_factory.mktemp("ret_jpeg"), 60, 20)
    return convert("cifar10", source=src, out=tmp_path_factory.mktemp("ret") / "cifar10", log=lambda s: None)


@pytest.mark.slow
def test_retrieval_end_to_end_on_cifar_split_by_class(cifar_by_class, tmp_path):
    out = tmp_path / "run"
    # no --recipe: --task retrieval picks the generic "retrieval" recipe for a model other than resnet18_attn
    cmd = [sys.executable, "-m", "fasttrain", "run", "customcnn", "--task", "retrieval", "--data", str(cifar_by_class),
           "--out", str(out), "--device", "cpu", "--amp", "off", "--threads", "1", "--width", "0.25",
           "--batch-size", "64", "--lr", "0.05", "--label-smoothing", "0", "--epochs", "4", "--embed-epochs", "3",
           "--embed-lr", "0.05", "--m-per-class", "8", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["task"] == "retrieval" and summary["train_classes"] == 5 and summary["test_classes"] == 5
    assert summary["recipe"] == "retrieval"
    labels = np.load(cifar_by_class / "train_labels.npy")
    # chance Recall@1 among the 400 test-class images: sum_c n_c (n_c - 1) / (N (N - 1)) = 79/399 ~ 0.198
    n = summary["test_samples"]
    chance = 5 * (n / 5) * (n / 5 - 1) / (n * (n - 1))
    assert n == 400 and len(labels) == 600
    r = summary["recall"]
    assert r["R@1"] > chance + 0.15, summary  # well above chance on classes never trained on
    assert r["R@1"] <= r["R@2"] <= r["R@4"] <= r["R@8"]
    assert summary["recall_backbone"]["R@1"] > chance + 0.1  # the classification-trained backbone's features
    assert summary["test_acc"] == r["R@1"]
    for f in ("config.json", "summary.json", "recall.json", "metrics.jsonl", "backbone.pt", "checkpoint.pt",
              "curves.png"):
        assert (out / f).is_file(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["classify"] * 4 + ["embed"] * 3
    config = json.loads((out / "config.json").read_text())  # resolved as for classification: what ran
    assert config["amp"] == "off" and config["threads"] == 1 and config["device"] == "cpu"
    assert Path(config["data"]).is_absolute() and config["data_identity"]


def test_tinyimagenet_and_retrieval_recipes_resolve():
    from fasttrain.config import RECIPES, default_retrieval_recipe, resolve

    for name in ("tinyimagenet-customcnn", "tinyimagenet-resnet18", "tinyimagenet-resnet18-attn",
                 "cars196-retrieval", "retrieval"):
        cfg = resolve(RECIPES[name].get("model", "customcnn"), name, {})
        assert cfg.recipe == name
    assert resolve("customcnn", "t1-tinyimagenet", {}).recipe == "tinyimagenet-customcnn"  # earlier name
    assert resolve("customcnn", None, {}).recipe == "tinyimagenet-customcnn"  # the model's default
    t1 = resolve("customcnn", None, {})
    assert t1.early_stop > 0 and t1.val_split > 0 and t1.cutout > 0 and t1.schedule == "cosine"
    t4 = resolve("resnet18_attn", default_retrieval_recipe("resnet18_attn"), {})
    assert t4.task == "retrieval" and t4.model_kwargs["stem"] == "imagenet" and t4.data == "data/cars196"
    assert default_retrieval_recipe("customcnn") == "retrieval"


@pytest.mark.gpu
def test_recall_and_loss_on_cuda_match_the_references():
    g = torch.Generator().manual_seed(7)
    emb = torch.randn(3000, 64, generator=g)
    labels = torch.randint(0, 40, (3000,), generator=g)
    cpu = recall_at_k(emb, labels, chunk=512)
    cuda = recall_at_k(emb.cuda(), labels.cuda(), chunk=512)
    assert cuda == pytest.approx(cpu, abs=2 / 3000)  # TF32 matmuls may swap near-tied neighbours
    batch, blabels = _balanced_batch(8, 4, 32, 8)
    x = batch.cuda().requires_grad_(True)
    loss = multi_similarity_loss(x, blabels.cuda())
    loss.backward()
    ref = multi_similarity_loss_reference(batch, blabels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4)
    assert torch.isfinite(x.grad).all()
