"""A faithful re-implementation of airbench94 (KellerJordan/cifar10-airbench, `airbench94.py`), device-agnostic.

Used as the same-run baseline in `time_to_accuracy.py`. The published `airbench` package is CUDA-only and
downloads CIFAR-10 itself; this copy keeps its network, initialisation, data loader (whole set as a float
tensor, reflect-pad translate, alternating flip), optimiser (SGD-Nesterov on a summed loss with its lr/wd
scaling), schedule, lookahead and TTA exactly, and reads our converted tensor dataset instead. On CUDA the
net runs in fp16 with fp32 BatchNorm as published; on a CPU in the precision fastest there by default
(fasttrain.runtime.resolve_amp: bf16 autocast with fp32 BatchNorm only on CPUs with AMX tiles, else fp32),
or as `--dtype` says. `warmup()` runs a few steps and both evaluations first, so cuDNN autotuning and
first-call costs stay outside the clock, as they do for every system time_to_accuracy.py compares.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fasttrain, from a source checkout
from fasttrain.runtime import resolve_amp  # noqa: E402

HYP = {
    "opt": {"train_epochs": 9.9, "batch_size": 1024, "lr": 11.5, "momentum": 0.85, "weight_decay": 0.0153,
            "bias_scaler": 64.0, "label_smoothing": 0.2, "whiten_bias_epochs": 3},
    "aug": {"flip": True, "translate": 2},
    "net": {"widths": {"block1": 64, "block2": 256, "block3": 256}, "batchnorm_momentum": 0.6,
            "scaling_factor": 1 / 9, "tta_level": 2},
}
CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))


# ----------------------------------------------------------------------------- data (airbench's CifarLoader)
def batch_flip_lr(inputs):
    flip_mask = (torch.rand(len(inputs), device=inputs.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, inputs.flip(-1), inputs)


def batch_crop(images, crop_size):
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2), device=images.device)
    images_out = torch.empty((len(images), 3, crop_size, crop_size), device=images.device, dtype=images.dtype)
    for sy in range(-r, r + 1):
        for sx in range(-r, r + 1):
            mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
            images_out[mask] = images[mask, :, r + sy : r + sy + crop_size, r + sx : r + sx + crop_size]
    return images_out


class CifarLoader:
    def __init__(self, images_nhwc: torch.Tensor, labels: torch.Tensor, train: bool, batch_size: int,
                 aug: dict | None = None, dtype=torch.float32):
        self.images = images_nhwc.permute(0, 3, 1, 2).to(dtype).div(255)  # (N, 3, H, W), float
        self.labels = labels
        self.mean, self.std = CIFAR_MEAN.to(images_nhwc.device, dtype), CIFAR_STD.to(images_nhwc.device, dtype)
        self.aug = aug or {}
        self.batch_size = batch_size
        self.drop_last = train
        self.shuffle = train
        self.epoch = 0
        self.proc_images: dict[str, torch.Tensor] = {}

    def normalize(self, x):
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def __len__(self):
        return len(self.images) // self.batch_size if self.drop_last else math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        if self.epoch == 0:
            images = self.proc_images["norm"] = self.normalize(self.images)
            if self.aug.get("flip", False):  # pre-flip a random half: every-other-epoch flipping
                images = self.proc_images["flip"] = batch_flip_lr(images)
            pad = self.aug.get("translate", 0)
            if pad > 0:
                self.proc_images["pad"] = F.pad(images, (pad,) * 4, "reflect")
        if self.aug.get("translate", 0) > 0:
            images = batch_crop(self.proc_images["pad"], self.images.shape[-2])
        elif self.aug.get("flip", False):
            images = self.proc_images["flip"]
        else:
            images = self.proc_images["norm"]
        if self.aug.get("flip", False) and self.epoch % 2 == 1:
            images = images.flip(-1)
        self.epoch += 1
        indices = (torch.randperm if self.shuffle else torch.arange)(len(images), device=images.device)
        for i in range(len(self)):
            idxs = indices[i * self.batch_size : (i + 1) * self.batch_size]
            yield images[idxs].contiguous(memory_format=torch.channels_last), self.labels[idxs]


# ----------------------------------------------------------------------------- network
class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features, momentum, eps=1e-12, weight=False, bias=True):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = weight
        self.bias.requires_grad = bias


class Conv(nn.Conv2d):
    def __init__(self, in_channels, out_channels, kernel_size=3, padding="same", bias=False):
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in, channels_out, batchnorm_momentum):
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out, batchnorm_momentum)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out, batchnorm_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def make_net(device, dtype):
    widths = HYP["net"]["widths"]
    bn_momentum = HYP["net"]["batchnorm_momentum"]
    whiten_kernel_size = 2
    whiten_width = 2 * 3 * whiten_kernel_size**2
    net = nn.Sequential(
        Conv(3, whiten_width, whiten_kernel_size, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, widths["block1"], bn_momentum),
        ConvGroup(widths["block1"], widths["block2"], bn_momentum),
        ConvGroup(widths["block2"], widths["block3"], bn_momentum),
        nn.MaxPool2d(3),
        Flatten(),
        nn.Linear(widths["block3"], 10, bias=False),
        Mul(HYP["net"]["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    net = net.to(device=device, dtype=dtype).to(memory_format=torch.channels_last)
    for mod in net.modules():
        if isinstance(mod, BatchNorm):
            mod.float()
    return net


def get_patches(x, patch_shape):
    c, (h, w) = x.shape[1], patch_shape
    return x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()


def get_whitening_parameters(patches):
    n, c, h, w = patches.shape
    patches_flat = patches.view(n, -1)
    est_patch_covariance = (patches_flat.T @ patches_flat) / n
    eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO="U")
    return eigenvalues.flip(0).view(-1, 1, 1, 1), eigenvectors.T.reshape(c * h * w, c, h, w).flip(0)


def init_whitening_conv(layer, train_set, eps=5e-4):
    patches = get_patches(train_set, patch_shape=layer.weight.data.shape[2:])
    eigenvalues, eigenvectors = get_whitening_parameters(patches)
    eigenvectors_scaled = eigenvectors / torch.sqrt(eigenvalues + eps)
    layer.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled)).to(layer.weight.dtype)


class LookaheadState:
    def __init__(self, net):
        self.net_ema = {k: v.clone() for k, v in net.state_dict().items()}

    def update(self, net, decay):
        for ema_param, net_param in zip(self.net_ema.values(), net.state_dict().values()):
            if net_param.dtype in (torch.half, torch.bfloat16, torch.float):
                ema_param.lerp_(net_param, 1 - decay)
                net_param.copy_(ema_param)


# ----------------------------------------------------------------------------- evaluation (TTA)
def infer(model, loader, tta_level, autocast):
    def infer_basic(inputs, net):
        return net(inputs).clone()

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,) * 4, "reflect")
        inputs_translate_list = [padded_inputs[:, :, 0:32, 0:32], padded_inputs[:, :, 2:34, 2:34]]
        logits_translate = torch.stack([infer_mirror(x, net) for x in inputs_translate_list]).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    test_images = loader.normalize(loader.images)
    infer_fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    with torch.no_grad(), autocast():
        return torch.cat([infer_fn(inputs.contiguous(memory_format=torch.channels_last), model)
                          for inputs in test_images.split(2000)])


def evaluate(model, loader, tta_level, autocast):
    logits = infer(model, loader, tta_level, autocast)
    return (logits.argmax(1) == loader.labels).float().mean().item()


# ----------------------------------------------------------------------------- one run
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(train_images, train_labels, test_images, test_labels, *, device="cpu", seed=0, dtype="auto",
        epochs: float | None = None, batch_size: int | None = None,
        progress: Callable[[int, float], None] | None = None) -> dict:
    """One airbench94 run on uint8 NHWC tensors; returns accuracy (with and without TTA) and timings.
    `batch_size` overrides the published 1024 (smoke runs on a few hundred images only). `progress(epoch,
    seconds)` is called after each epoch."""
    device = torch.device(device)
    torch.manual_seed(seed)
    if dtype == "auto":
        dtype = "fp16" if device.type == "cuda" else ("bf16" if resolve_amp("auto", device) else "fp32")
    if device.type == "cuda":
        net_dtype, autocast = torch.half, nullcontext
    elif dtype == "bf16":  # CPU: fp32 weights, bf16 autocast, BatchNorm stays fp32
        net_dtype, autocast = torch.float32, (lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    else:
        net_dtype, autocast = torch.float32, nullcontext
    batch_size = batch_size or HYP["opt"]["batch_size"]
    epochs = epochs or HYP["opt"]["train_epochs"]
    momentum = HYP["opt"]["momentum"]
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    lr = HYP["opt"]["lr"] / kilostep_scale
    wd = HYP["opt"]["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * HYP["opt"]["bias_scaler"]

    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["opt"]["label_smoothing"], reduction="none")
    loader_dtype = torch.half if device.type == "cuda" else torch.float32
    test_loader = CifarLoader(test_images.to(device), test_labels.to(device), False, 2000, dtype=loader_dtype)
    train_loader = CifarLoader(train_images.to(device), train_labels.to(device), True, batch_size,
                               aug=HYP["aug"], dtype=loader_dtype)
    total_train_steps = math.ceil(len(train_loader) * epochs)

    model = make_net(device, net_dtype)
    norm_biases = [p for k, p in model.named_parameters() if "norm" in k and p.requires_grad]
    other_params = [p for k, p in model.named_parameters() if "norm" not in k and p.requires_grad]
    param_configs = [dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
                     dict(params=other_params, lr=lr, weight_decay=wd / lr)]
    optimizer = torch.optim.SGD(param_configs, momentum=momentum, nesterov=True)

    def get_lr(step):
        warmup_steps = int(total_train_steps * 0.23)
        warmdown_steps = total_train_steps - warmup_steps
        if step < warmup_steps:
            frac = step / warmup_steps
            return 0.2 * (1 - frac) + 1.0 * frac
        frac = (step - warmup_steps) / warmdown_steps
        return 1.0 * (1 - frac) + 0.07 * frac

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, get_lr)
    alpha_schedule = 0.95**5 * (torch.arange(total_train_steps + 1) / total_train_steps) ** 3
    lookahead_state = LookaheadState(model)

    _sync(device)
    t0 = time.perf_counter()
    init_whitening_conv(model[0], train_loader.normalize(train_loader.images[:5000]))
    current_steps = 0
    for epoch in range(math.ceil(epochs)):
        model[0].bias.requires_grad = epoch < HYP["opt"]["whiten_bias_epochs"]
        model.train()
        for inputs, labels in train_loader:
            with autocast():
                outputs = model(inputs)
                loss = loss_fn(outputs.float(), labels).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            current_steps += 1
            if current_steps % 5 == 0:
                lookahead_state.update(model, decay=alpha_schedule[current_steps].item())
            if current_steps >= total_train_steps:
                lookahead_state.update(model, decay=1.0)
                break
        if progress is not None:
            progress(epoch + 1, time.perf_counter() - t0)
    _sync(device)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    tta_acc = evaluate(model, test_loader, HYP["net"]["tta_level"], autocast)
    _sync(device)
    eval_s = time.perf_counter() - t1
    acc = evaluate(model, test_loader, 0, autocast)
    return {"acc_tta": tta_acc, "acc": acc, "train_s": train_s, "eval_s": eval_s, "epochs": epochs,
            "steps": current_steps, "dtype": dtype}


def warmup(train_images, train_labels, test_images, test_labels, *, device="cpu", dtype="auto",
           batch_size: int | None = None) -> float:
    """A few steps on random labels and both evaluations on one test batch, with the shapes of a real run:
    cuDNN autotuning and first-call costs are paid here, before any clock. Returns the seconds taken."""
    t0 = time.perf_counter()
    batch = batch_size or HYP["opt"]["batch_size"]
    fake = torch.randint(0, 10, train_labels.shape, generator=torch.Generator().manual_seed(0))
    run(train_images, fake, test_images[:2000], test_labels[:2000], device=device, dtype=dtype,
        epochs=3 / max(1, len(train_images) // batch), batch_size=batch)
    return time.perf_counter() - t0


def load_tensor_dataset(data_dir: str, train_subset: int | None = None, test_subset: int | None = None):
    """uint8 NHWC tensors; subsets are the same stratified, seeded ones fasttrain's trainer uses."""
    from fasttrain.data.tensor_format import load_split
    from fasttrain.data.splits import stratified_subset

    out = []
    for split, n in (("train", train_subset), ("test", test_subset)):
        s = load_split(data_dir, split)
        idx = stratified_subset(np.asarray(s.labels), n or len(s.labels), seed=0)
        out += [torch.from_numpy(np.ascontiguousarray(s.images[idx])), torch.from_numpy(np.array(s.labels[idx]))]
    return tuple(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/cifar10")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-subset", type=int, default=None)
    ap.add_argument("--test-subset", type=int, default=None)
    args = ap.parse_args()
    data = load_tensor_dataset(args.data, args.train_subset, args.test_subset)
    print(json.dumps(run(*data, device=args.device, seed=args.seed, dtype=args.dtype, epochs=args.epochs)))


if __name__ == "__main__":
    main()
