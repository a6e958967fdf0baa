"""The training features end to end on the real CIFAR-10 slice: one short run with most features on, then `eval`,
`predict` and `report` on its run directory; plus early stopping and mixing-off inside the loop."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from fasttrain.config import resolve


def small_cfg(data, out, **kw):
    base = dict(
        data=str(data),
        out=str(out),
        epochs=2,
        batch_size=50,
        amp="off",
        device="cpu",
        tta="none",
        lr=0.05,
        schedule="cosine",
        warmup_epochs=0.5,
    )
    base.update(kw)
    cfg = resolve("resnet9", None, base)
    cfg.model_kwargs = {"width": 0.125}
    return cfg


@pytest.fixture(scope="module")
def feature_run(cifar_tensor_slice, tmp_path_factory):
    """2 epochs of 3 batches: val split, EMA, PatchUp, clipping, accumulation, mixup off after epoch 1."""
    from fasttrain.augment import reference
    from fasttrain.train import train

    out = tmp_path_factory.mktemp("feat") / "run"
    cfg = small_cfg(
        cifar_tensor_slice,
        out,
        train_subset=200,
        val_split=50,
        ema=True,
        ema_decay=0.9,
        patchup="hard",
        patchup_prob=1.0,
        clip_grad=2.0,
        accum_steps=2,
        mixup=0.4,
        mix_off_epoch=1,
        optimizer="adamw",
        lr=0.003,
    )
    mix_flags = []
    original = reference.AugmentSampler.sample

    def recording(self, n, h, w, *, mix=True, **kw):
        mix_flags.append(mix)
        return original(self, n, h, w, mix=mix, **kw)

    reference.AugmentSampler.sample = recording
    try:
        summary = train(cfg, quiet=True)
    finally:
        reference.AugmentSampler.sample = original
    return out, summary, mix_flags


def test_run_directory_has_every_artefact(feature_run):
    out, summary, _ = feature_run
    for name in (
        "metrics.jsonl",
        "metrics.csv",
        "lr.csv",
        "lr.png",
        "curves.png",
        "confusion.png",
        "confusion.json",
        "best.pt",
        "checkpoint.pt",
        "summary.json",
        "config.json",
    ):
        assert (out / name).is_file(), name
    try:
        import tensorboard  # noqa: F401

        assert list((out / "tb").glob("events.out.tfevents.*"))
    except ImportError:
        pass
    for key in ("test_acc", "test_top5", "test_precision", "test_recall", "test_f1"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["test_top5"] >= summary["test_acc"]
    assert summary["train_samples"] == 150 and summary["val_samples"] == 50
    assert summary["selected"] == "best" and summary["monitor"]["best_epoch"] in (1, 2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["val_acc"] is not None and r["test_acc"] is None for r in rows)  # test only at the end
    confusion = json.loads((out / "confusion.json").read_text())
    assert np.array(confusion["matrix"]).sum() == 100 and len(confusion["classes"]) == 10
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["model_ema"] is not None and ckpt["image_size"] == [32, 32]
    ema_w = next(iter(ckpt["model_ema"].values()))
    raw_w = next(iter(ckpt["model"].values()))
    assert not torch.equal(ema_w, raw_w)  # the EMA is an average, not the last weights


def test_lr_log_follows_the_schedule(feature_run):
    out, _, _ = feature_run
    lines = (out / "lr.csv").read_text().splitlines()[1:]
    lrs = np.array([float(line.split(",")[1]) for line in lines])
    assert len(lrs) == 6  # 150 train images / 50 per batch x 2 epochs
    peak = lrs.argmax()
    assert 1 <= peak <= 2 and np.all(np.diff(lrs[: peak + 1]) > 0) and np.all(np.diff(lrs[peak:]) <= 0)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_mixing_stops_after_the_given_epoch(feature_run):
    _, _, flags = feature_run
    assert flags == [True] * 3 + [False] * 3


def test_eval_of_best_checkpoint_reproduces_the_final_test_metrics(feature_run, cifar_tensor_slice):
    from fasttrain.inference import evaluate_checkpoint

    out, summary, _ = feature_run
    m = evaluate_checkpoint(out / "best.pt", cifar_tensor_slice, split="test", device="cpu")
    assert m["samples"] == 100 and len(m["per_class_acc"]) == 10
    assert m["acc"] == pytest.approx(summary["test_acc"]) and m["f1"] == pytest.approx(summary["test_f1"])


def fasttrain(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "fasttrain", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fasttrain {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_cli_eval_predict_report(feature_run, cifar_tensor_slice, cifar_jpeg_slice, tmp_path):
    from PIL import Image

    out, summary, _ = feature_run
    ev = json.loads(
        fasttrain(
            "eval",
            out / "checkpoint.pt",
            "--data",
            cifar_tensor_slice,
            "--device",
            "cpu",
            "--json",
            "--out",
            tmp_path / "ev",
        ).stdout
    )
    assert (
        ev["weights"] == "ema" and ev["samples"] == 100 and set(ev) >= {"top5", "f1", "recall", "confusion"}
    )
    assert (tmp_path / "ev" / "confusion.png").is_file()
    # predict: a CIFAR JPEG and the same picture blown up to 75x100 (resized back as in convert)
    jpeg = sorted((cifar_jpeg_slice / "test").rglob("*.jpg"))[0]
    big = tmp_path / "big.png"
    Image.open(jpeg).convert("RGB").resize((100, 75), Image.BICUBIC).save(big)
    preds = json.loads(
        fasttrain("predict", out / "best.pt", jpeg, big, "--top-k", 3, "--device", "cpu", "--json").stdout
    )
    assert [len(p["top"]) for p in preds] == [3, 3]
    for p in preds:
        probs = [prob for _, prob in p["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # report: two runs compared, overlay plot written
    rep = fasttrain("report", out, out, "--plot", tmp_path / "overlay.png", "--json", tmp_path / "rows.json")
    assert "run" in rep.stdout and (tmp_path / "overlay.png").is_file()
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert rows[0]["test_acc"] == pytest.approx(summary["test_acc"])
    bad = fasttrain("predict", out / "nope.pt", jpeg, check=False)
    assert bad.returncode == 2 and "nope.pt" in bad.stderr
    bad = fasttrain("run", "resnet9", "--milestones", "a,b", check=False)
    assert bad.returncode == 2 and "--milestones" in bad.stderr


def test_early_stopping_stops_on_the_val_metric(cifar_tensor_slice, tmp_path, monkeypatch):
    import fasttrain.train as train_mod

    accs = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    real = train_mod.evaluate

    def fake(model, images, labels, *a, **kw):
        m = real(model, images, labels, *a, **kw)
        if len(labels) == 30:  # the val split: getting worse every epoch
            m["acc"] = next(accs)
        return m

    monkeypatch.setattr(train_mod, "evaluate", fake)
    cfg = small_cfg(
        cifar_tensor_slice, tmp_path / "r", epochs=6, val_split=30, early_stop=2, train_subset=130
    )
    summary = train_mod.train(cfg, quiet=True)
    rows = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert (
        len(rows) == 3 and summary["monitor"]["stopped_epoch"] == 3 and summary["monitor"]["best_epoch"] == 1
    )
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    assert best["epoch"] == 1
