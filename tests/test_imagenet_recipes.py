"""The ImageNet recipes after FFCV's configs: their models are torchvision's ResNets (with FFCV's BlurPool),
their learning rate follows FFCV's cyclic schedule step by step, and `fasttrain run resnet18 --recipe
imagenet-resnet18-16` trains end to end on a miniature ILSVRC-2012 layout on the CPU: converted to the
jpeg store, streamed with random-resized crops, the resolution ramped per epoch and logged, evaluated at
val_res with flip TTA, no graph compiled inside the timed epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from fasttrain.config import RECIPES, resolve
from fasttrain.models import create_model
from fasttrain.optim import lr_multiplier, warmup_steps
from fasttrain.recipes import FFCV_RAMPS, IMAGENET_RECIPES, recipe_source


# ---------------------------------------------------------------------------- FFCV's code, verbatim
class BlurPoolConv2d(torch.nn.Module):
    """libffcv/ffcv-imagenet train_imagenet.py (the reference for our blurpool option)."""

    def __init__(self, conv):
        super().__init__()
        default_filter = torch.tensor([[[[1, 2, 1], [2, 4, 2], [1, 2, 1]]]]) / 16.0
        filt = default_filter.repeat(conv.in_channels, 1, 1, 1)
        self.conv = conv
        self.register_buffer("blur_filter", filt)

    def forward(self, x):
        blurred = F.conv2d(x, self.blur_filter, stride=1, padding=(1, 1), groups=self.conv.in_channels, bias=None)
        return self.conv.forward(blurred)


def ffcv_apply_blurpool(mod: torch.nn.Module) -> None:
    for name, child in mod.named_children():
        if isinstance(child, torch.nn.Conv2d) and (np.max(child.stride) > 1 and child.in_channels >= 16):
            setattr(mod, name, BlurPoolConv2d(child))
        else:
            ffcv_apply_blurpool(child)


def ffcv_cyclic_lr(epoch: float, lr: float, epochs: int, lr_peak_epoch: int = 2) -> float:
    """get_cyclic_lr, evaluated at a fractional epoch: FFCV interpolates it linearly within each epoch."""
    return float(np.interp([epoch], [0, lr_peak_epoch, epochs], [1e-4 * lr, lr, 0])[0])


# ---------------------------------------------------------------------------- the recipes
def test_every_ffcv_config_has_a_recipe_with_its_source():
    for arch in ("resnet18", "resnet50"):
        for epochs in (16, 24, 32, 40, 56, 88):
            name = f"imagenet-{arch}-{epochs}"
            assert name in RECIPES and RECIPES[name] is IMAGENET_RECIPES[name]
            rn = arch.replace("resnet", "rn")
            assert recipe_source(name) == f"libffcv/ffcv-imagenet {rn}_configs/{rn}_{epochs}_epochs.yaml"
    assert recipe_source("airbench94").startswith("KellerJordan/cifar10-airbench")
    assert all(recipe_source(name) for name in RECIPES)


@pytest.mark.parametrize("name,lr,batch,wd", [("imagenet-resnet18-16", 0.5, 1024, 5e-5),
                                              ("imagenet-resnet50-88", 1.7, 4096, 1e-4)])
def test_recipe_settings_are_ffcvs(name, lr, batch, wd):
    cfg = resolve(name.split("-")[1], name, {})
    epochs = cfg.epochs
    assert (cfg.lr, cfg.batch_size, cfg.weight_decay, cfg.label_smoothing) == (lr, batch, wd, 0.1)
    assert (cfg.min_res, cfg.max_res, (cfg.start_ramp, cfg.end_ramp), cfg.val_res) == (160, 192, FFCV_RAMPS[epochs], 256)
    assert cfg.pipeline == "stream" and cfg.tta == "flip" and not cfg.nesterov and not cfg.norm_bias_decay
    assert cfg.model_kwargs["blurpool"] is True and cfg.crop_pad == 0
    # another global batch scales the lr linearly (FFCV's rn50: 512 per GPU; one GPU with 512 gets lr / 8)
    assert resolve("resnet50", name, dict(batch_size=batch // 8)).lr == pytest.approx(lr / 8)


@pytest.mark.parametrize("epochs", [16, 88])
def test_lr_follows_ffcvs_cyclic_schedule_per_step(epochs):
    """Linear from 1e-4 x peak to the peak over 2 epochs, then linear to 0 at the end. Ours reaches 0 at the
    last step, FFCV's one step later: the two differ by at most one step's worth of the decay."""
    cfg = resolve("resnet18", f"imagenet-resnet18-{epochs}", {})
    spe = 37  # steps per epoch
    total = epochs * spe
    ours = np.array([lr_multiplier(s, total, cfg, spe) for s in range(total)])
    ffcv = np.array([ffcv_cyclic_lr(s / spe, 1.0, epochs) for s in range(total)])
    assert warmup_steps(total, cfg, spe) == 2 * spe
    assert np.abs(ours - ffcv).max() <= 1 / (total - 2 * spe) + 1e-12
    assert ours.argmax() == 2 * spe and ours[-1] == 0.0


# ---------------------------------------------------------------------------- the models
@pytest.mark.parametrize("name,kw,reference", [
    ("resnet18", {"stem": "imagenet", "init": "torchvision"}, torchvision.models.resnet18),
    ("resnet50", {}, torchvision.models.resnet50)])
@pytest.mark.parametrize("blurpool", [False, True])
def test_models_are_torchvisions_with_ffcvs_blurpool(name, kw, reference, blurpool):
    """Same parameters in the same order, and with torchvision's weights the same outputs: bit for bit
    without blur (the same ops in the same order); with it (FFCV's BlurPoolConv2d applied to torchvision's
    model) to float rounding, since ours pads then convolves where FFCV's convolves with padding, which
    oneDNN may sum in another order."""
    torch.manual_seed(0)
    ours = create_model(name, 1000, blurpool=blurpool, **kw).eval()
    ref = reference().eval()
    if blurpool:
        ffcv_apply_blurpool(ref)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    params = [v for k, v in ref.state_dict().items() if not k.endswith("blur_filter")]  # ours: not saved
    ours.load_state_dict(dict(zip(ours.state_dict().keys(), params)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = ours(x), ref(x)
    if blurpool:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    else:
        assert torch.equal(got, want)


# ---------------------------------------------------------------------------- end to end on the CPU
@pytest.mark.slow
def test_imagenet_recipe_trains_on_a_miniature_ilsvrc_layout(tmp_path):
    """`fasttrain convert imagenet` then `fasttrain run resnet18 --recipe imagenet-resnet18-16` with tiny
    subsets and small resolutions: the ramp (64 px, then 96) is in metrics.jsonl, evaluation streams the
    test split at val_res with flip TTA, and no graph is compiled inside the timed epochs."""
    from test_jpeg_store import build_ilsvrc, cli

    build_ilsvrc(tmp_path / "ilsvrc", flat_val=True, per_class=8)
    data = tmp_path / "imagenet"
    cli("convert", "imagenet", "--source", str(tmp_path / "ilsvrc"), "--out", str(data), "--max-side", "160")
    out = tmp_path / "run"
    res = cli("run", "resnet18", "--recipe", "imagenet-resnet18-16", "--data", str(data), "--out", str(out),
              "--epochs", "2", "--start-ramp", "0", "--end-ramp", "1", "--min-res", "64", "--max-res", "96",
              "--val-res", "96", "--train-subset", "24", "--batch-size", "8", "--width", "0.25", "--device", "cpu",
              "--threads", "1", "--no-tensorboard", "--json")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["res"] for r in rows] == [64, 96]
    assert summary["recipe"] == "imagenet-resnet18-16" and summary["recompiles"] == 0
    assert summary["steps"] == 2 * 3 and summary["train_samples"] == 24 and summary["test_samples"] == 6
    assert summary["tta"] == "flip" and np.isfinite(summary["test_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["pipeline"] == "stream" and config["lr"] == pytest.approx(0.5 * 8 / 1024)


# ---------------------------------------------------------------------------- Cars196 from the original photos
@pytest.mark.slow
def test_cars196_retrieval_recipe_crops_the_original_photos_anew_each_epoch(tmp_path):
    """`convert cars196 --format jpeg` keeps each whole photo; the cars196-retrieval-rrc recipe trains
    retrieval on random-resized crops of them (new ones each epoch, the same for the same seed and epoch)
    and measures Recall@K on centre crops of the held-out classes."""
    pytest.importorskip("scipy")
    from test_datasets import make_cars_annos
    from test_jpeg_store import cli

    from fasttrain.retrieval.streamed import StreamedPool

    src, _ = make_cars_annos(tmp_path / "cars", np.random.default_rng(3))
    data = tmp_path / "cars-jpeg"
    cli("convert", "cars196", "--source", str(src), "--out", str(data), "--format", "jpeg")
    pool = StreamedPool.of_classes(str(data), [0, 1])
    assert sorted(pool.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # the store's retrieval split: classes 1-2 train
    again = StreamedPool.of_classes(str(data), [0, 1])  # a fresh pool: decodes, does not reuse the last set
    crops = [p.decode(e, res=24, device=torch.device("cpu"), seed=5) for p, e in ((pool, 0), (again, 0), (pool, 1))]
    assert crops[0].shape == (6, 24, 24, 3) and torch.equal(crops[0], crops[1]) and not torch.equal(crops[0], crops[2])
    assert crops[1] is not crops[0]
    assert pool.subset(np.array([4, 1])).labels.tolist() == pool.labels[[1, 4]].tolist()

    out = tmp_path / "run"
    res = cli("run", "resnet18_attn", "--recipe", "cars196-retrieval-rrc", "--data", str(data), "--out", str(out),
              "--epochs", "2", "--embed-epochs", "1", "--batch-size", "4", "--m-per-class", "2", "--min-res", "32",
              "--val-res", "32",
              "--width", "0.25", "--device", "cpu", "--threads", "1", "--no-tensorboard", "--json")
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["recipe"] == "cars196-retrieval-rrc" and 0 <= summary["test_acc"] <= 1
    config = json.loads((out / "config.json").read_text())
    assert config["pipeline"] == "stream" and config["crop_pad"] == 0 and config["min_res"] == 32
