"""Named recipes kept as data outside config.py (which merges them into RECIPES): the ImageNet recipes after
FFCV's (libffcv/ffcv-imagenet rn18_configs/, rn50_configs/ and train_imagenet.py), and where every named
recipe's numbers come from (`fasttrain recipes` shows it as the `source` column). Imports nothing.

Plain dicts of RunConfig overrides, as in config.py. What FFCV's configs and script set, and how each maps
here:

    lr_schedule_type cyclic, lr_peak_epoch 2   linear warmup from 1e-4 x peak over 2 epochs, then linear to 0
                                               at the last epoch, per batch (FFCV interpolates per iteration)
                                               -> schedule linear, warmup_epochs 2, start_lr_frac 1e-4
    lr 0.5 at batch 1024 (rn18, 1 GPU)         -> lr_per_256 0.125 (the lr follows --batch-size)
    lr 1.7 at batch 512 x 8 GPUs (rn50)        -> batch_size 4096 (ours is the global batch), lr_per_256 1.7/16
    optimizer sgd, momentum 0.9                torch SGD without Nesterov -> nesterov False
    weight_decay 5e-5 (rn18) / 1e-4 (rn50),    no decay on BatchNorm parameters -> norm_bias_decay False (ours
    bn_wd 0                                    also spares the classifier's bias, FFCV decays it: 1000 numbers)
    label_smoothing 0.1                        -> label_smoothing 0.1
    use_blurpool 1                             -> model_kwargs blurpool (blur before each strided conv)
    torchvision resnet18 / resnet50            -> stem imagenet, init torchvision (resnet50 has both by default)
    resolution min 160, max 192, ramp epochs   -> min_res, max_res, start_ramp, end_ramp (fasttrain.resolution)
    validation resolution 256, ratio 224/256   -> val_res 256 (the stream pipeline's centre crop keeps 224/256)
    lr_tta true                                -> tta flip
    RandomResizedCrop + flip in the decoder    -> the stream pipeline's decode; crop_pad 0 (no pad-and-crop)
    log_level 0 (evaluate only at the end)     -> eval_every 0
    fp16 autocast + GradScaler, channels_last  -> amp auto (bf16 on GPUs that have it), channels_last

FFCV also publishes 56-epoch configs; they are here too. Published results (8 x A100 for ResNet-50, 1 x A100
for ResNet-18; top-1): docs/imagenet.md.
"""

from __future__ import annotations

from typing import Any

FFCV = "libffcv/ffcv-imagenet"
# (epochs, start_ramp, end_ramp) of FFCV's configs: rn18 and rn50 share them
FFCV_RAMPS = {16: (11, 13), 24: (17, 20), 32: (23, 27), 40: (29, 34), 56: (41, 48), 88: (65, 76)}
IMAGENET_DATA = "data/imagenet-jpeg"  # where `fasttrain convert imagenet` writes by default


def _ffcv_recipe(model: str, epochs: int, *, batch_size: int, lr: float, weight_decay: float) -> dict[str, Any]:
    start_ramp, end_ramp = FFCV_RAMPS[epochs]
    return dict(
        model=model, data=IMAGENET_DATA, pipeline="stream", epochs=epochs, batch_size=batch_size,
        lr=lr, lr_per_256=lr * 256 / batch_size,  # the lr at this batch; another --batch-size scales it
        optimizer="sgd", momentum=0.9, nesterov=False,
        weight_decay=weight_decay, norm_bias_decay=False, label_smoothing=0.1,
        schedule="linear", warmup_epochs=2, start_lr_frac=1e-4, end_lr_frac=0.0,
        min_res=160, max_res=192, start_ramp=start_ramp, end_ramp=end_ramp, val_res=256, tta="flip",
        crop_pad=0, flip=True, cutout=0, mixup=0.0, cutmix=0.0, eval_every=0, amp="auto", channels_last=True,
        model_kwargs={"stem": "imagenet", "init": "torchvision", "blurpool": True},
    )


IMAGENET_RECIPES: dict[str, dict[str, Any]] = {}
RECIPE_SOURCES: dict[str, str] = {}
for _epochs in FFCV_RAMPS:  # FFCV: batch 1024 on 1 GPU, lr 0.5
    IMAGENET_RECIPES[f"imagenet-resnet18-{_epochs}"] = _ffcv_recipe("resnet18", _epochs, batch_size=1024, lr=0.5,
                                                                     weight_decay=5e-5)
    RECIPE_SOURCES[f"imagenet-resnet18-{_epochs}"] = f"{FFCV} rn18_configs/rn18_{_epochs}_epochs.yaml"
for _epochs in FFCV_RAMPS:  # FFCV: 512 per GPU on 8 GPUs, lr 1.7 for the 4096-image step
    IMAGENET_RECIPES[f"imagenet-resnet50-{_epochs}"] = _ffcv_recipe("resnet50", _epochs, batch_size=4096, lr=1.7,
                                                                     weight_decay=1e-4)
    RECIPE_SOURCES[f"imagenet-resnet50-{_epochs}"] = f"{FFCV} rn50_configs/rn50_{_epochs}_epochs.yaml"

# Where the other recipes' numbers come from (their comments in config.py say more).
RECIPE_SOURCES.update({
    "myrtle24": "David Page, myrtle.ai 'How to train your ResNet' (DAWNBench ResNet9, 24 epochs)",
    "airbench94": "KellerJordan/cifar10-airbench airbench94.py",
    "speed94": "KellerJordan/cifar10-airbench airbench94_muon.py",
    "speed94-cpu": "KellerJordan/cifar10-airbench airbench94_muon.py (4 x 500 accumulated, fp32, for CPUs)",
    "resnet9-speed": "fasttrain: myrtle24 with airbench's tricks",
    "cpu-quick": "fasttrain: airbench94 at half width for 2 CPU cores",
    "cifar10-resnet9-adam": "the jovian.ai ResNet9 notebooks (Adam, OneCycleLR, clip by value)",
    "cifar100-resnet9-adam": "the jovian.ai ResNet9 notebooks (Adam, OneCycleLR, clip by value; 24 epochs ours)",
    "tinyimagenet-customcnn": "fasttrain (not measured on a GPU)",
    "tinyimagenet-resnet18": "fasttrain (not measured on a GPU)",
    "tinyimagenet-resnet18-attn": "fasttrain (not measured on a GPU)",
    "retrieval": "fasttrain; multi-similarity loss (Wang et al., CVPR 2019)",
    "cars196-retrieval": "fasttrain; multi-similarity loss (Wang et al., CVPR 2019)",
    "cars196-retrieval-rrc": "fasttrain; multi-similarity loss (Wang et al., CVPR 2019); torchvision's "
                             "RandomResizedCrop from the original photos",
})


def recipe_source(name: str) -> str:
    """Where recipe `name`'s numbers come from. The CIFAR ResNet table's rows (cifar10-*) follow the
    papers that table cites (config.py, above RESNET_TABLE_RECIPES)."""
    if name in RECIPE_SOURCES:
        return RECIPE_SOURCES[name]
    if name.startswith("cifar10-"):
        return "the CIFAR-10 ResNet reference table; optimiser settings from the papers it cites"
    return "fasttrain"
