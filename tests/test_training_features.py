"""The training features, each held to a reference or to an effect that a no-op would not have: optimisers,
schedules, accumulation / clipping, EMA, PatchUp, metrics, val split, early stopping, logs and plots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from fasttrain.config import ConfigError, RunConfig, resolve
from fasttrain.optim import (
    MuonWithAux,
    OptimizerStep,
    build_optimizer,
    lr_multiplier,
    param_groups,
    zeropower_newton_schulz,
)


def cfg_with(**kw) -> RunConfig:
    return RunConfig(**kw).validate()


# ============================================================================ optimisers
def test_param_groups_keep_decay_off_norms_and_biases():
    from fasttrain.models import create_model

    model = create_model("resnet18", 10, width=0.25)
    groups = param_groups(model, cfg_with(weight_decay=5e-4))
    decay, no_decay = groups
    assert all(p.dim() > 1 for p in decay["params"]) and decay["weight_decay"] == 5e-4
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][0]
    assert any(p is bn.weight for p in no_decay["params"])
    # norm_bias_decay turns it on (divided by bias_lr_scale)
    groups = param_groups(model, cfg_with(weight_decay=5e-4, norm_bias_decay=True, bias_lr_scale=2.0))
    assert groups[1]["weight_decay"] == pytest.approx(2.5e-4) and groups[1]["lr"] == pytest.approx(0.8)


def test_build_optimizer_kinds():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 6, 6))
    assert isinstance(build_optimizer(model, cfg_with(optimizer="sgd")), torch.optim.SGD)
    adam = build_optimizer(model, cfg_with(optimizer="adam", betas=(0.8, 0.99)))
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.99)
    assert type(build_optimizer(model, cfg_with(optimizer="adamw"))) is torch.optim.AdamW
    muon = build_optimizer(model, cfg_with(optimizer="muon", muon_lr=0.05))
    assert isinstance(muon, MuonWithAux)
    by_kind = {g["use_muon"]: g for g in muon.param_groups if g["use_muon"]}
    # the conv weight is Muon's; the classifier (last Linear) is left to the aux SGD
    assert by_kind[True]["params"] == [model[0].weight] and by_kind[True]["lr"] == 0.05
    with pytest.raises(ConfigError, match="--optimizer"):
        cfg_with(optimizer="lion")


def test_newton_schulz_orthogonalises():
    g = torch.randn(32, 72, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(zeropower_newton_schulz(g).float())
    # quintic NS maps every singular value into roughly [0.5, 1.5] (not exactly 1, by design)
    assert s.min() > 0.3 and s.max() < 1.6
    assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).min() > 3  # the input was far from it


def test_muon_matches_torch_muon_on_matrices():
    """Muon groups of MuonWithAux == torch.optim.Muon (adjust_lr_fn 'original') on 2-d weights."""
    gen = torch.Generator().manual_seed(1)
    w0 = [torch.randn(16, 24, generator=gen), torch.randn(40, 8, generator=gen)]
    grads = [
        [
            torch.randn_like(
                w,
            )
            for w in w0
        ]
        for _ in range(3)
    ]
    ours = [nn.Parameter(w.clone()) for w in w0]
    ref = [nn.Parameter(w.clone()) for w in w0]
    opt = MuonWithAux(
        [dict(params=ours, lr=0.02, momentum=0.95, weight_decay=0.1, use_muon=True)], nesterov=True,
        ns_dtype=torch.bfloat16,  # as torch.optim.Muon
    )
    opt_ref = torch.optim.Muon(
        ref, lr=0.02, momentum=0.95, weight_decay=0.1, nesterov=True, adjust_lr_fn="original"
    )
    for gs in grads:
        for p, q, g in zip(ours, ref, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    for p, q, w in zip(ours, ref, w0):
        assert torch.allclose(p, q, atol=1e-6), (p - q).abs().max()
        assert not torch.allclose(p, w)


def test_muon_aux_groups_match_torch_sgd():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(10, generator=gen)
    grads = [torch.randn(10, generator=gen) for _ in range(4)]
    p, q = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    opt = MuonWithAux(
        [dict(params=[p], lr=0.1, weight_decay=0.01, use_muon=False)], momentum=0.9, nesterov=True
    )
    ref = torch.optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for g in grads:
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.allclose(p, q, atol=1e-7)


def test_muon_updates_conv_filters_as_matrices():
    conv = nn.Conv2d(4, 6, 3, bias=False)
    w0 = conv.weight.detach().clone()
    conv.weight.grad = torch.randn_like(w0)
    MuonWithAux(
        [dict(params=[conv.weight], lr=1.0, momentum=0.0, weight_decay=0.0, use_muon=True)], nesterov=False
    ).step()
    delta = (w0 - conv.weight.detach()).reshape(6, -1)
    s = torch.linalg.svdvals(delta)
    assert s.min() > 0.3 and s.max() < 1.6  # an orthogonalised step, not the raw gradient


# ============================================================================ schedules
def lrs(cfg: RunConfig, total: int, spe: float | None = None) -> np.ndarray:
    return np.array([lr_multiplier(s, total, cfg, spe) for s in range(total)])


def torch_lrs(make, total: int) -> np.ndarray:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return np.array(out)


def test_onecycle_matches_torch_onecycle():
    total, warm = 100, 30
    cfg = cfg_with(schedule="onecycle", warmup_frac=0.3, start_lr_frac=1 / 25, end_lr_frac=1 / 25 / 1e4)
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o,
            max_lr=1.0,
            total_steps=total,
            pct_start=(warm + 1) / total,
            div_factor=25,
            final_div_factor=1e4,
            cycle_momentum=False,
        ),
        total,
    )
    np.testing.assert_allclose(lrs(cfg, total), ref, rtol=1e-6, atol=1e-9)


def test_cosine_step_multistep_linear_match_torch():
    total = 50
    lr_sched = torch.optim.lr_scheduler
    cases = [
        (
            cfg_with(schedule="cosine", warmup_frac=0, end_lr_frac=0.01),
            lambda o: lr_sched.CosineAnnealingLR(o, T_max=total - 1, eta_min=0.01),
        ),
        (
            cfg_with(schedule="linear", warmup_frac=0, end_lr_frac=0.1),
            lambda o: lr_sched.LinearLR(o, start_factor=1.0, end_factor=0.1, total_iters=total - 1),
        ),
        # 10 steps per epoch: step every 2 epochs = 20 steps; milestones at epochs 1.5 and 3 = steps 15, 30
        (
            cfg_with(schedule="step", warmup_frac=0, step_epochs=2, gamma=0.5, epochs=5),
            lambda o: lr_sched.StepLR(o, step_size=20, gamma=0.5),
        ),
        (
            cfg_with(schedule="multistep", warmup_frac=0, milestones=[1.5, 3], gamma=0.1, epochs=5),
            lambda o: lr_sched.MultiStepLR(o, milestones=[15, 30], gamma=0.1),
        ),
        (
            cfg_with(schedule="cosine", warmup_epochs=1, start_lr_frac=0.1, end_lr_frac=0.0, epochs=5),
            lambda o: lr_sched.SequentialLR(
                o,
                [
                    lr_sched.LinearLR(o, start_factor=0.1, total_iters=10),
                    lr_sched.CosineAnnealingLR(o, T_max=total - 1 - 10),
                ],
                milestones=[10],
            ),
        ),
    ]
    for cfg, make in cases:
        np.testing.assert_allclose(
            lrs(cfg, total, spe=10), torch_lrs(make, total), rtol=1e-6, atol=1e-9, err_msg=cfg.schedule
        )


def test_htd_follows_the_paper_formula():
    total = 200
    cfg = cfg_with(schedule="htd", warmup_frac=0, htd_lower=-6, htd_upper=3)
    got = lrs(cfg, total)
    t = np.arange(total) / (total - 1)
    np.testing.assert_allclose(got, (1 - np.tanh(-6 + 9 * t)) / 2, rtol=1e-12)
    assert got[0] > 0.9999 and got[-1] < 0.003 and np.all(np.diff(got) < 0)
    # different bounds give a different curve (the options are used)
    assert not np.allclose(
        got, lrs(cfg_with(schedule="htd", warmup_frac=0, htd_lower=-4, htd_upper=4), total)
    )


def test_constant_and_warmup():
    got = lrs(cfg_with(schedule="constant", warmup_epochs=1, start_lr_frac=0.0, epochs=4), 40, spe=10)
    np.testing.assert_allclose(got[:10], np.arange(10) / 10)
    assert np.all(got[10:] == 1.0)


def test_schedule_validation_names_the_option():
    with pytest.raises(ConfigError, match="--schedule"):
        cfg_with(schedule="exp")
    with pytest.raises(ConfigError, match="--milestones"):
        cfg_with(schedule="multistep")


# ============================================================================ the optimiser step
def _linear_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 5, generator=gen)
    y = torch.randn(8, 3, generator=gen)
    model = nn.Linear(5, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 5, generator=gen))
        model.bias.zero_()
    return model, x, y


def _run_steps(accum: int, micro: int, clip=None, mode="norm"):
    model, x, y = _linear_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cfg = cfg_with(accum_steps=accum, clip_grad=clip, clip_mode=mode)
    stepper = OptimizerStep(opt, torch.amp.GradScaler("cuda", enabled=False), cfg)
    stepped = []
    for i in range(0, len(x), micro):
        loss = ((model(x[i : i + micro]) - y[i : i + micro]) ** 2).mean()
        stepped.append(stepper.backward(loss))
    return model, stepped


def test_gradient_accumulation_equals_the_large_batch():
    full, s_full = _run_steps(accum=1, micro=8)
    acc, s_acc = _run_steps(accum=4, micro=2)
    assert s_full == [True] and s_acc == [False, False, False, True]
    assert torch.allclose(full.weight, acc.weight, atol=1e-6)
    one, _ = _run_steps(accum=1, micro=2)  # four small steps instead: differs
    assert not torch.allclose(full.weight, one.weight, atol=1e-4)


def test_updater_closes_accumulation_windows_at_epoch_end_and_at_the_last_step():
    from fasttrain.augment import Targets
    from fasttrain.config import RunConfig
    from fasttrain.steps import Precision, TrainStep
    from fasttrain.tasks import ClassificationTask

    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    cfg = RunConfig(lr=0.1, schedule="constant", warmup_frac=0.0, accum_steps=3)
    train_step = TrainStep(ClassificationTask(model, model), build_optimizer(model, cfg), cfg,
                      Precision(torch.device("cpu"), None), total_steps=6, steps_per_epoch=4)
    stepped, lrs = [], []
    for batch_i in [0, 1, 2, 3, 0, 1]:  # 4 batches in epoch 1, the run ends 2 batches into epoch 2
        y = torch.randint(0, 3, (5,))
        out = train_step(torch.randn(5, 6), Targets(y, y, torch.ones(5)), end_of_epoch=batch_i == 3)
        stepped.append(out.stepped)
        lrs.append(out.lr)
    assert stepped == [False, False, True, True, False, True] and train_step.done
    assert lrs == [0.1] * 6 and all(p.grad is None for p in model.parameters())  # nothing left behind


def test_clipping_by_norm_and_by_value():
    model0, x, y = _linear_problem()
    loss = ((model0(x) - y) ** 2).mean()
    loss.backward()
    raw = torch.cat([p.grad.flatten() for p in model0.parameters()])
    assert raw.norm() > 1.0 and raw.abs().max() > 0.05  # so both thresholds below bind
    free, _ = _run_steps(1, 8)
    by_norm, _ = _run_steps(1, 8, clip=1.0, mode="norm")
    by_value, _ = _run_steps(1, 8, clip=0.05, mode="value")
    w0 = model0.weight.detach()
    # first SGD step: delta = -lr * grad, so the applied gradient is visible in the weights
    g_norm = (w0 - by_norm.weight.detach()) / 0.1
    g_value = (w0 - by_value.weight.detach()) / 0.1
    g_free = (w0 - free.weight.detach()) / 0.1
    assert torch.allclose(g_free, model0.weight.grad, atol=1e-5)
    assert torch.allclose(g_norm, model0.weight.grad / raw.norm(), atol=1e-5)
    assert g_value.abs().max() <= 0.05 + 1e-5 and not torch.allclose(g_value, g_free)


# ============================================================================ EMA
def test_ema_matches_formula_and_reference_loop():
    from fasttrain.ema import ModelEma

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    fast = ModelEma(model, decay=0.9, warmup=False, foreach=True)
    slow = ModelEma(model, decay=0.9, warmup=False, foreach=False)
    expected = model[0].weight.detach().clone()
    for i in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model(torch.randn(5, 4))  # moves BN running stats and num_batches_tracked
        fast.update(model)
        slow.update(model)
        expected = 0.9 * expected + 0.1 * model[0].weight.detach()
    assert torch.allclose(fast.module[0].weight, expected, atol=1e-6)
    for a, b in zip(fast.module.state_dict().values(), slow.module.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert fast.module[1].num_batches_tracked.item() == 3  # integer buffers are copied
    assert not torch.allclose(fast.module[0].weight, model[0].weight)  # an average, not a copy
    warm = ModelEma(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)


# ============================================================================ PatchUp
def test_patchup_hard_and_soft_mix_feature_patches():
    from fasttrain.regularizers import block_holes, patchup_mix

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    holes = block_holes(3, 8, 8, 3, 0.5, gen, torch.device("cpu"))
    assert set(holes.unique().tolist()) <= {0.0, 1.0} and 0 < holes.mean() < 1
    perm = torch.tensor([1, 2, 3, 0])
    hard, own = patchup_mix(x, holes, perm, "hard", 1.0)
    inside = holes.bool()[None].expand_as(x)
    assert torch.equal(hard[inside], x[perm][inside]) and torch.equal(hard[~inside], x[~inside])
    assert own == pytest.approx(1 - holes.mean().item())
    soft, own_soft = patchup_mix(x, holes, perm, "soft", 0.25)
    assert torch.allclose(soft[inside], (0.25 * x + 0.75 * x[perm])[inside])
    assert own_soft == pytest.approx(1 - holes.mean().item() * 0.75)


def test_patchup_changes_the_forward_and_the_targets():
    from fasttrain.augment import Targets
    from fasttrain.models import create_model
    from fasttrain.regularizers import PatchUp

    torch.manual_seed(0)
    model = create_model("resnet9", 10, width=0.125).train()
    x = torch.randn(6, 3, 32, 32)
    pu = PatchUp(model, torch.zeros(2, 3, 32, 32), mode="hard", prob=1.0, block=3, gamma=0.5, seed=0)
    assert pu.layers and all(n.startswith("features.") for n in pu.layers)
    plain = model(x)
    assert torch.allclose(model(x), plain)  # unarmed: untouched
    y = torch.arange(6)
    assert pu.arm(6)
    mixed = model(x)
    t = pu.targets(Targets(y, y, torch.ones(6)))
    assert not torch.allclose(mixed, plain)
    assert torch.equal(t.y_b, y[pu.perm]) and 0 < t.lam[0] < 1
    assert pu.targets(Targets(y, y, torch.ones(6))).y_b is y  # consumed: the next batch is clean
    pu.remove()
    assert torch.allclose(model(x), plain)


# ============================================================================ metrics
class FixedLogits(nn.Module):
    """Logits = a fixed linear map of the mean colour of the image (deterministic, not flip-invariant)."""

    def __init__(self, classes: int):
        super().__init__()
        self.proj = nn.Linear(3 * 4, classes)

    def forward(self, x):
        h = x.shape[-1]
        cols = [x[..., : h // 4], x[..., h // 4 : h // 2], x[..., h // 2 :]]  # left-right asymmetric
        feats = torch.cat([x.mean((2, 3))] + [c.mean((2, 3)) for c in cols], 1)
        return self.proj(feats.float())


def test_metrics_match_the_reference_loops():
    from fasttrain.augment import norm_constants, normalize
    from fasttrain.evaluate import evaluate, reference_metrics

    torch.manual_seed(0)
    classes = 7
    images = torch.randint(0, 256, (300, 8, 8, 3), dtype=torch.uint8)
    labels = torch.randint(0, classes, (300,))
    model = FixedLogits(classes)
    scale, bias = norm_constants([0.5] * 3, [0.25] * 3)
    got = evaluate(
        model, images, labels, scale, bias, amp_dtype=None, batch_size=64, num_classes=classes, confusion=True
    )
    logits = model(normalize(images, scale, bias, torch.float32))
    ref = reference_metrics(labels.tolist(), logits.argmax(1).tolist(), classes)
    for key in ("acc", "precision", "recall", "f1"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert got["confusion"] == ref["confusion"]
    top5 = (logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item()
    assert got["top5"] == pytest.approx(top5)
    assert got["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    per_class = [(logits.argmax(1)[labels == k] == k).float().mean().item() for k in range(classes)]
    np.testing.assert_allclose(got["per_class_acc"], per_class, atol=1e-9)
    # flip TTA averages the two views: different from no TTA for this asymmetric model
    flip = evaluate(model, images, labels, scale, bias, amp_dtype=None, tta="flip", num_classes=classes)
    x = normalize(images, scale, bias, torch.float32)
    expected = 0.5 * model(x) + 0.5 * model(x.flip(-1))
    assert flip["loss"] == pytest.approx(nn.functional.cross_entropy(expected, labels).item(), rel=1e-5)
    assert abs(flip["loss"] - got["loss"]) > 1e-4


def test_macro_metrics_on_a_known_confusion():
    from fasttrain.evaluate import metrics_from_confusion

    m = metrics_from_confusion(np.array([[3, 1], [0, 4]]))
    # class 0: P 1, R 0.75, F1 6/7; class 1: P 0.8, R 1, F1 8/9
    assert m["precision"] == pytest.approx(0.9) and m["recall"] == pytest.approx(0.875)
    assert m["f1"] == pytest.approx((6 / 7 + 8 / 9) / 2) and m["acc"] == pytest.approx(7 / 8)


def test_val_split_is_stratified_disjoint_and_seeded():
    from fasttrain.data.splits import carve_val, val_split_indices

    labels = np.repeat(np.arange(10), 30)
    train, val = val_split_indices(labels, 50, seed=3)
    assert len(val) == 50 and len(train) == 250 and not set(train) & set(val)
    assert np.bincount(labels[val], minlength=10).tolist() == [5] * 10
    assert np.array_equal(val, val_split_indices(labels, 50, seed=3)[1])
    assert not np.array_equal(val, val_split_indices(labels, 50, seed=4)[1])
    idx = np.arange(0, 300, 2)  # carve from a subset: indices stay in the original numbering
    tr, va = carve_val(labels, idx, 20, seed=0)
    assert set(tr) | set(va) == set(idx) and len(va) == 20
    from fasttrain.data.errors import DatasetError

    with pytest.raises(DatasetError, match="--val-split"):
        val_split_indices(labels, 300, seed=0)


# ============================================================================ selection, logs, plots
def test_monitor_best_and_patience():
    from fasttrain.monitor import Monitor

    m = Monitor("val_acc", patience=2)
    assert m.update({"epoch": 1, "val_acc": 0.5}) and not m.update({"epoch": 2, "val_acc": 0.4})
    assert not m.should_stop and not m.update({"epoch": 3, "val_acc": 0.5}) and m.should_stop
    assert m.best_epoch == 1
    loss = Monitor("val_loss", patience=1, min_delta=0.1)
    assert loss.update({"epoch": 1, "val_loss": 1.0}) and not loss.update({"epoch": 2, "val_loss": 0.95})
    assert loss.should_stop
    assert not Monitor("val_acc").update({"epoch": 1, "val_acc": None})
    with pytest.raises(ConfigError, match="--val-split"):
        cfg_with(early_stop=3)


def test_runlog_writes_jsonl_csv_and_tensorboard(tmp_path):
    import csv
    import json

    from fasttrain.runlog import RunLog

    log = RunLog(tmp_path, tensorboard=True)
    log.log({"epoch": 1, "train_loss": 2.0, "test_acc": None})
    log.log({"epoch": 2, "train_loss": 1.5, "val_acc": 0.3})
    for s in range(5):
        log.log_lr(s, 0.1 * s)
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    table = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert table[1]["val_acc"] == "0.3" and table[0]["val_acc"] == "" and "test_acc" in table[0]
    assert (tmp_path / "lr.csv").read_text().splitlines()[3] == "2,0.2"
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pytest.skip("tensorboard not installed: event files are optional")
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_plots_write_pngs(tmp_path):
    from fasttrain.plots import plot_confusion, plot_lr, plot_overlay

    plot_lr(list(range(10)), [0.1 * i for i in range(10)], tmp_path / "lr.png")
    plot_confusion([[5, 1], [2, 7]], ["cat", "dog"], tmp_path / "c.png")
    plot_confusion(np.eye(100, dtype=int).tolist(), [str(i) for i in range(100)], tmp_path / "c100.png")
    hist = [{"epoch": e, "train_acc": 0.1 * e, "val_acc": 0.09 * e} for e in (1, 2, 3)]
    plot_overlay([("cifar10", [("a", hist, ("#1f77b4", "o")), ("b", hist, ("#ff7f0e", "o"))])], tmp_path / "o.png")
    for name in ("lr.png", "c.png", "c100.png", "o.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_label_smoothing_and_drop_path_reach_the_loss_and_model():
    from fasttrain.augment import Targets
    from fasttrain.models.options import merge_model_options
    from fasttrain.losses import mixed_cross_entropy

    logits = torch.tensor([[4.0, 0.0, 0.0]])
    t = Targets(torch.tensor([0]), torch.tensor([0]), torch.ones(1))
    t.y_b = t.y_a
    assert mixed_cross_entropy(logits, t, 0.2) > mixed_cross_entropy(logits, t, 0.0) + 0.1
    cfg = resolve("resnet18", None, {})
    merge_model_options(cfg, drop_path=0.3)
    assert cfg.model_kwargs["drop_path"] == 0.3


def test_table_recipes_resolve():
    s1 = resolve("resnet9", "seed001", {})
    assert (s1.optimizer, s1.schedule, s1.clip_mode, s1.clip_grad) == ("adam", "onecycle", "value", 0.1)
    assert s1.weight_decay > 0 and s1.val_split > 0
    s4 = resolve("resnet9_c100", "seed004-c100", {})
    assert s4.data.endswith("cifar100") and s4.model == "resnet9_c100"
    from fasttrain.recipes import RECIPES, RESNET_TABLE_RECIPES

    assert set(RESNET_TABLE_RECIPES) <= set(RECIPES)
    for name, r in RESNET_TABLE_RECIPES.items():
        resolve(r["model"], name, {})
    assert resolve("resnet50b", "seed-sd-htd-cutmix", {}).schedule == "htd"
    step = resolve("resnet50b", "seed-step", {})
    assert step.schedule == "multistep" and [math.floor(m) for m in step.milestones] == [100, 150]
