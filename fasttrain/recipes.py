"""Every named recipe, as data beside the schema (config.py holds RunConfig and resolves a run from a recipe,
a config file and options): the CIFAR-10/100, Tiny ImageNet and retrieval recipes, the ImageNet recipes after
FFCV's (libffcv/ffcv-imagenet rn18_configs/, rn50_configs/ and train_imagenet.py), the earlier names still
accepted, each model's default recipe, and where every recipe's numbers come from (`fasttrain recipes` shows
it as the `source` column). Imports nothing.

Each recipe is a plain dict of RunConfig overrides. What FFCV's configs and script set, and how each maps
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


# --------------------------------------------------------------------------------------------- the table
# Each recipe is a plain dict of RunConfig overrides. Units: lr is the peak rate for a batch-mean loss.
RECIPES: dict[str, dict[str, Any]] = {
    # Myrtle ResNet9, 24 epochs (David Page's DAWNBench schedule): 94% on CIFAR-10 on a GPU.
    "myrtle24": dict(
        model="resnet9", epochs=24, batch_size=512, lr=0.4, momentum=0.9, weight_decay=5e-4,
        schedule="piecewise", warmup_frac=5 / 24, label_smoothing=0.2, crop_pad=4, pad_mode="reflect",
        flip=True, cutout=8, tta="flip",
    ),
    # airbench94's hyperparameters in batch-mean units (lr 11.5 per 1024 with summed loss and its
    # momentum-adjusted scaling -> 1.5 peak; per-step decay 0.002; biases at 64x the lr).
    "airbench94": dict(
        model="airbench", epochs=9.9, batch_size=1024, lr=1.5, momentum=0.85, nesterov=True,
        weight_decay=0.002 / 1.5, norm_bias_decay=True, bias_lr_scale=64.0, label_smoothing=0.2,
        schedule="piecewise", warmup_frac=0.23, start_lr_frac=0.2, end_lr_frac=0.07, lookahead=True,
        crop_pad=2, pad_mode="reflect", flip=True, alternating_flip=True, tta="flip_translate", eval_every=0,
    ),
    # speed94: airbench94_muon's recipe (94.01% in 2.59 s on an A100) in batch-mean units. Muon (lr 0.24,
    # momentum 0.6, 3 Newton-Schulz steps, weights renormalised each step) on the conv filters; Nesterov SGD
    # on the rest: summed-loss lrs 0.67 (head) and 0.053 (biases) per sample x batch 2000 -> 1340 and
    # 1340 * 0.079; weight decay 2e-6 per sample x 2000 = 0.004 shrink per step = lr * 2.985e-6. Linear
    # decay to 0 over 8 epochs, no warmup; alternating flip + 2-px reflect translate; frozen patch-whitening
    # layer (its bias trains 3 epochs); label smoothing 0.2; logits / 256 from a unit-std head; 6-view TTA;
    # bf16 + channels_last + compile on a GPU. The Muon record drops airbench94's lookahead.
    "speed94": dict(
        model="airbench", epochs=8, batch_size=2000, optimizer="muon", muon_lr=0.24, muon_momentum=0.6,
        muon_ns_steps=3, muon_weight_norm=True, lr=1340.0, momentum=0.85, nesterov=True,
        weight_decay=0.004 / 1340.0, norm_bias_decay=True, bias_lr_scale=0.053 / 0.67, label_smoothing=0.2,
        schedule="linear", warmup_frac=0.0, end_lr_frac=0.0, lookahead=False, crop_pad=2, pad_mode="reflect",
        flip=True, alternating_flip=True, tta="flip_translate", eval_every=0, amp="auto", compile=True,
        model_kwargs={"logit_scale": 1 / 256, "head_unit_std": True},
    ),
    # The resnet9 24-epoch recipe with the same tricks: alternating flip, lookahead, 6-view TTA, compile.
    "resnet9-speed": dict(
        model="resnet9", epochs=24, batch_size=512, lr=0.4, momentum=0.9, weight_decay=5e-4,
        schedule="piecewise", warmup_frac=5 / 24, label_smoothing=0.2, crop_pad=4, pad_mode="reflect",
        flip=True, alternating_flip=True, cutout=8, lookahead=True, tta="flip_translate", amp="auto",
        compile=True,
    ),
    # The CPU quick recipe: fits convert + train + eval in 10 minutes on 2 cores (see README).
    "cpu-quick": dict(
        model="airbench", epochs=10, batch_size=512, lr=1.0, momentum=0.85, nesterov=True,
        weight_decay=0.002 / 1.0, norm_bias_decay=True, bias_lr_scale=64.0, label_smoothing=0.2,
        schedule="piecewise", warmup_frac=0.23, start_lr_frac=0.2, end_lr_frac=0.07, lookahead=True,
        crop_pad=2, pad_mode="reflect", flip=True, tta="flip_translate", eval_every=0, amp="auto",
        model_kwargs={"width": 0.5},
    ),
}


# speed94 for a CPU (the CPU side of benchmarks/time_to_accuracy.py): the same 2000-image optimiser
# step, accumulated over 4 micro-batches of 500 (BatchNorm statistics per 500, i.e. ghost batches),
# because on 2 cores a 500-image forward/backward runs ~1.3x more images/s than a 2000-image one (the
# activations fit the cache); fp32 (amp auto), since bf16 convolutions are slower without AMX; no compile
# (inductor gave no CPU speed-up on this net).
RECIPES["speed94-cpu"] = dict(RECIPES["speed94"], batch_size=500, accum_steps=4, compile=False)


# --- the CIFAR-10 ResNet table (pre-activation and bottleneck ResNets, MobileNetV2, WRN; 92.6-95.6%), named
# so that e.g. `fasttrain run resnet50b --recipe cifar10-sd-htd-cutmix` reproduces one row. The table does
# not state its optimiser settings; these follow its cited papers: SGD+Nesterov lr 0.1, batch 128,
# weight decay 5e-4, 200 epochs, 4-px zero-pad crop + flip; SD = stochastic depth with the paper's
# linear rule and p_L = 0.5 (1603.09382); CutMix alpha 1 applied with probability 0.5 (1905.04899);
# Cutout16 = 16-px squares. Rows without a schedule name use step decay: x0.1 at epochs 100 and 150 of
# 200 (the usual CIFAR ResNet steps). HTD uses L=-6, U=3 (RunConfig defaults, the HTD paper's).
def _resnet_table_row(schedule: str, model: str, *, activation: str | None = None, drop_path: float | None = None,
                      cutout: int = 0, mixup: float = 0.0, cutmix: float = 0.0, image_size: int | None = None) -> dict:
    model_kwargs = {k: v for k, v in dict(activation=activation, drop_path=drop_path, image_size=image_size).items()
                    if v is not None}
    steps = dict(milestones=[100.0, 150.0], gamma=0.1) if schedule == "step" else {}
    schedule = "multistep" if schedule == "step" else schedule
    return dict(model=model, epochs=200, batch_size=128, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
                schedule=schedule, warmup_frac=0.0, label_smoothing=0.0, crop_pad=4, pad_mode="zero", flip=True,
                cutout=cutout, mixup=mixup, cutmix=cutmix, mix_prob=0.5 if cutmix else 1.0, tta="none",
                model_kwargs=model_kwargs, **steps)


RESNET_TABLE_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10-step": _resnet_table_row("step", "resnet50b"),  # plain rows (ResNet34 92.64%, ResNet50b 93.18%, ...)
    "cifar10-mish": _resnet_table_row("step", "resnet50b", activation="mish"),
    "cifar10-htd": _resnet_table_row("htd", "resnet50b"),
    "cifar10-htd-cutmix": _resnet_table_row("htd", "resnet35b", cutmix=1.0),  # ResNet34 94.59%, ResNet35b 95.06%
    "cifar10-htd-cutout16": _resnet_table_row("htd", "wide_resnet18", cutout=16),  # WideResNet18 94.91%
    "cifar10-sd": _resnet_table_row("step", "resnet50b", drop_path=0.5),
    "cifar10-sd-mish": _resnet_table_row("step", "resnet50b", activation="mish", drop_path=0.5),
    "cifar10-sd-htd-mish": _resnet_table_row("htd", "resnet50b", activation="mish", drop_path=0.5),
    "cifar10-sd-cosine-mish": _resnet_table_row("cosine", "resnet50b", activation="mish", drop_path=0.5),
    "cifar10-sd-htd-cutout16": _resnet_table_row("htd", "resnet50b", drop_path=0.5, cutout=16),
    "cifar10-sd-htd-mixup0.2": _resnet_table_row("htd", "resnet50b", drop_path=0.5, mixup=0.2),
    "cifar10-sd-htd-mixup1": _resnet_table_row("htd", "resnet50b", drop_path=0.5, mixup=1.0),
    "cifar10-sd-htd-cutmix": _resnet_table_row("htd", "resnet50b", drop_path=0.5, cutmix=1.0),  # the headline 95.56%
    "cifar10-sd-mish-htd-cutout16": _resnet_table_row("htd", "resnet101b", activation="mish", drop_path=0.5,
                                                      cutout=16),
    "cifar10-mish-htd-cutmix": _resnet_table_row("htd", "resnet170b", activation="mish", cutmix=1.0),
    "cifar10-96px-htd-cutmix": _resnet_table_row("htd", "mobilenetv2", image_size=96, cutmix=1.0),  # MobileNetV2 95.17%
}
RECIPES.update(RESNET_TABLE_RECIPES)


# --- the jovian-lineage ResNet9 with Adam (CIFAR-10 ~90% val / 89% test; CIFAR-100 accuracy 0.7434,
# recall 0.7434, F1 0.7425): that lineage trains with Adam (torch's coupled weight decay 1e-4 on every
# parameter), torch's OneCycleLR (max lr 0.01, 30% cosine warmup from max/25, cosine down to max/25/1e4,
# stepped per batch), gradient clipping by value 0.1, batch 400, reflect-pad-4 crop + flip. Val is carved
# from train here (5,000 images), so selection never sees the test set. The CIFAR-100 epoch count is not
# stated (24 is ours).
_JOVIAN = dict(optimizer="adam", lr=0.01, weight_decay=1e-4, norm_bias_decay=True, schedule="onecycle",
               warmup_frac=0.3, start_lr_frac=1 / 25, end_lr_frac=1 / 25 / 1e4, clip_grad=0.1, clip_mode="value",
               batch_size=400, crop_pad=4, pad_mode="reflect", flip=True, cutout=0, label_smoothing=0.0,
               tta="none", val_split=5000, monitor="val_acc")
RECIPES["cifar10-resnet9-adam"] = dict(_JOVIAN, model="resnet9", epochs=8)
RECIPES["cifar100-resnet9-adam"] = dict(_JOVIAN, model="resnet9_c100", data="data/cifar100", epochs=24)


# --- Tiny ImageNet (custom CNN, ResNet18, ResNet18 with CBAM attention) and Cars196 retrieval.
# The Tiny ImageNet recipes hold out 10,000 of the 100,000 train images as val for early stopping and
# best.pt, so model selection never sees the test split (the official val). Hyperparameters are ours (not
# measured on a GPU here): SGD-Nesterov, cosine after a short warmup, label smoothing 0.1, 8-px reflect
# crop + flip.
_TINY = dict(data="data/tinyimagenet", batch_size=256, lr=0.1, momentum=0.9, weight_decay=5e-4,
             schedule="cosine", warmup_frac=0.05, label_smoothing=0.1, crop_pad=8, pad_mode="reflect", flip=True,
             tta="flip", eval_every=1, val_split=10_000, monitor="val_acc")
RECIPES["tinyimagenet-customcnn"] = dict(_TINY, model="customcnn", epochs=40, cutout=16, early_stop=8)
RECIPES["tinyimagenet-resnet18"] = dict(_TINY, model="resnet18", epochs=60, early_stop=10)
RECIPES["tinyimagenet-resnet18-attn"] = dict(_TINY, model="resnet18_attn", epochs=60, early_stop=10,
                                             model_kwargs={"attention": "both", "placement": "sequential"})
# Retrieval (any model, any dataset): phase 1 classifies the train classes, phase 2 trains the 512-d
# embedding with the multi-similarity loss (docs/retrieval.md). Cars196: 224 px with the ImageNet stem
# (7x7/2 + max-pool) and a 16-px crop.
RECIPES["retrieval"] = dict(
    task="retrieval", epochs=30, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine",
    warmup_frac=0.05, label_smoothing=0.1, crop_pad=4, pad_mode="reflect", flip=True, tta="none", eval_every=0,
    retrieval={"embed_lr": 0.01, "m_per_class": 4, "embedding_dim": 512},
)
RECIPES["cars196-retrieval"] = dict(
    RECIPES["retrieval"], model="resnet18_attn", data="data/cars196", epochs=60, crop_pad=16,
    model_kwargs={"stem": "imagenet"}, retrieval=dict(RECIPES["retrieval"]["retrieval"], embed_epochs=40),
)
# The same from the original photos (`fasttrain convert cars196 --format jpeg`): a new random-resized crop at
# 224 px of each photo every epoch, in the decode; evaluation on the centre crop at 224 px.
RECIPES["cars196-retrieval-rrc"] = dict(RECIPES["cars196-retrieval"], data="data/cars196-jpeg", pipeline="stream",
                                        crop_pad=0, min_res=224, val_res=224)
# ImageNet ResNet-18 / ResNet-50 after FFCV's configs (above).
RECIPES.update(IMAGENET_RECIPES)

# Earlier names, still accepted (older run folders, scripts and docs use them).
RECIPE_ALIASES: dict[str, str] = {
    "seed001": "cifar10-resnet9-adam", "seed004-c100": "cifar100-resnet9-adam",
    "t1-tinyimagenet": "tinyimagenet-customcnn", "t2-tinyimagenet": "tinyimagenet-resnet18",
    "t3-tinyimagenet": "tinyimagenet-resnet18-attn", "t4-cars196": "cars196-retrieval",
    **{"seed-" + k.removeprefix("cifar10-"): k for k in RESNET_TABLE_RECIPES},
}

# The recipe a model gets when no --recipe is given; other models get the RunConfig defaults.
DEFAULT_RECIPES: dict[str, str] = {
    "resnet9": "myrtle24", "resnet9_c100": "cifar100-resnet9-adam", "airbench": "airbench94",
    "customcnn": "tinyimagenet-customcnn", "resnet18_attn": "tinyimagenet-resnet18-attn",
}
