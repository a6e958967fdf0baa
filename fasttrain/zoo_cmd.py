"""`fasttrain zoo`: one row per registered model with its size, cost and (optionally) measured speed.

Columns: trainable parameters; parameters counting BatchNorm running mean/var (Keras "total params",
the reference table's convention); forward FLOPs of one 32x32 image (torch.utils.flop_counter, which counts a
multiply-add as 2 FLOPs; MACs = FLOPs/2 is the reference table's "FLOPs/2" column). Counting runs on the meta
device, so it allocates nothing and takes about a second for the whole zoo.

With `measure`, training imgs/sec (forward + backward + SGD step on random normalised 32x32 inputs, so
data loading is excluded) and inference imgs/sec on the chosen device, in the fast configuration (bf16
autocast, channels_last, torch.compile where it helps: both eager and compiled are timed and the faster
is reported) and, as a baseline, eager fp32 NCHW training with PyTorch's default numerics (cuDNN may use
TF32 for convolutions). Warm-up steps (and compilation) are excluded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .choices import did_you_mean
from .words import count
from .models import create_model, get_entry, list_models
from .runtime import resolve_device


@dataclass
class ZooRow:
    name: str
    family: str
    params: int  # trainable parameters
    params_with_bn_stats: int  # all parameters + BatchNorm running mean/var (Keras "total params")
    flops: int  # forward FLOPs for one image at `image_size` (multiply-add = 2)
    image_size: int = 32
    train_imgs_per_s: float | None = None  # fast config: bf16 autocast + channels_last (+ compile if faster)
    infer_imgs_per_s: float | None = None
    compiled: bool | None = None  # whether the reported fast numbers are the compiled ones
    eager_fp32_train_imgs_per_s: float | None = None  # baseline: fp32, NCHW, eager
    speedup_vs_fp32: float | None = None
    error: str | None = None  # why measuring failed, if it did

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, all parameters + BatchNorm running statistics)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            total += m.running_mean.numel() + m.running_var.numel()
    return trainable, total


def count_flops(model: nn.Module, image_size: int = 32, device: str | torch.device = "meta") -> int:
    """Forward FLOPs of `model` for one image of image_size x image_size (model must live on `device`)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def describe(name: str, num_classes: int = 10, image_size: int = 32, **model_kwargs) -> ZooRow:
    """Size and cost of one model, built on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        model = create_model(name, num_classes, **model_kwargs)
    trainable, total = count_params(model)
    return ZooRow(name, get_entry(name).family, trainable, total, count_flops(model, image_size), image_size)


# ------------------------------------------------------------------------------------------- timing
def _timer(device: torch.device) -> Callable[[Callable[[], None], int], float]:
    """Seconds for `n` calls of `fn`, synchronised (CUDA events on a GPU)."""

    def run(fn: Callable[[], None], n: int) -> float:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0

    return run


def time_training(model: nn.Module, device: torch.device, batch_size: int, steps: int, warmup: int,
                  amp_dtype: torch.dtype | None, channels_last: bool, compile: bool, image_size: int = 32,
                  num_classes: int = 10) -> tuple[float, float]:
    """(train imgs/s, inference imgs/s) of `model` on random inputs; the first `warmup` steps are not timed."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # both configurations get the autotuned conv algorithms
    model = model.to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if compile:
        # A fresh dynamo cache per model: measuring many models that share block classes in one process
        # would otherwise hit the recompile limit and silently fall back to eager.
        torch._dynamo.reset()
    net = torch.compile(model) if compile else model
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def train_step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer_step() -> None:
        with torch.no_grad(), autocast:
            net(x)

    timer = _timer(device)
    model.train()
    timer(train_step, warmup)
    train_s = timer(train_step, steps)
    model.eval()
    timer(infer_step, warmup)
    infer_s = timer(infer_step, steps)
    return batch_size * steps / train_s, batch_size * steps / infer_s


def measure(row: ZooRow, device: torch.device, batch_size: int = 256, steps: int = 20, warmup: int = 5,
            compile: bool | None = None, baseline: bool = True, log: Callable[[str], None] = lambda s: None,
            **model_kwargs) -> ZooRow:
    """Fill the speed columns of `row` on `device` (see the module docstring for the configurations)."""
    compile = device.type == "cuda" if compile is None else compile
    amp = torch.bfloat16

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return create_model(row.name, 10, **model_kwargs)

    try:
        train, infer = time_training(fresh(), device, batch_size, steps, warmup, amp, True, False, row.image_size)
        row.compiled = False
        if compile:
            t0 = time.perf_counter()
            c_train, c_infer = time_training(fresh(), device, batch_size, steps, warmup, amp, True, True,
                                             row.image_size)
            log(f"  {row.name}: compiled in {time.perf_counter() - t0:.0f} s (incl. timing)")
            if c_train > train:
                train, infer, row.compiled = c_train, max(infer, c_infer), True
        row.train_imgs_per_s, row.infer_imgs_per_s = train, infer
        if baseline:
            base, _ = time_training(fresh(), device, batch_size, steps, warmup, None, False, False, row.image_size)
            row.eager_fp32_train_imgs_per_s = base
            row.speedup_vs_fp32 = train / base
    except Exception as e:  # noqa: BLE001  (one failing model must not sink the table)
        row.error = f"{type(e).__name__}: {e}"[:300]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def zoo_rows(names: Iterable[str] | None = None, measure_speed: bool = False, device: str = "auto",
             batch_size: int = 256, steps: int = 20, warmup: int = 5, compile: bool | None = None,
             baseline: bool = True, log: Callable[[str], None] = lambda s: None) -> list[ZooRow]:
    """The zoo table, one row per model (all registered models by default)."""
    names = list(names) if names is not None else select(None)
    dev = resolve_device(device)
    rows = []
    for name in names:
        row = describe(name)
        if measure_speed:
            log(f"measuring {name} on {dev} ...")
            measure(row, dev, batch_size, steps, warmup, compile, baseline, log)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ output
def row_dict(row: ZooRow) -> dict:
    return {**asdict(row), "macs": row.macs}


def _si(n: float | None, digits: int = 2) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return f"{n:.0f}"


def table_cells(rows: list[ZooRow]) -> tuple[list[str], list[list[str]]]:
    """The zoo table's header and cells (plain text); speed columns only when any row was measured."""
    measured = any(r.train_imgs_per_s is not None or r.error for r in rows)
    head = ["model", "family", "params", "params + BN stats", "FLOPs (32 px)", "MACs (reference FLOPs/2)"]
    if measured:
        head += ["train img/s", "infer img/s", "compiled", "eager fp32 train img/s", "speed-up"]
    table = []
    for r in rows:
        cells = [r.name, r.family, f"{r.params:,}", f"{r.params_with_bn_stats:,}", _si(r.flops), _si(r.macs)]
        if measured:
            if r.error:
                cells += [f"error: {r.error[:60]}", "", "", "", ""]
            else:
                cells += [f"{r.train_imgs_per_s:,.0f}" if r.train_imgs_per_s else "-",
                          f"{r.infer_imgs_per_s:,.0f}" if r.infer_imgs_per_s else "-",
                          "yes" if r.compiled else "no",
                          f"{r.eager_fp32_train_imgs_per_s:,.0f}" if r.eager_fp32_train_imgs_per_s else "-",
                          f"{r.speedup_vs_fp32:.2f}x" if r.speedup_vs_fp32 else "-"]
        table.append(cells)
    return head, table


def to_markdown(rows: list[ZooRow], title_note: str = "") -> str:
    """A Markdown table of the rows (table_cells), model names as code."""
    head, table = table_cells(rows)
    lines = []
    if title_note:
        lines += [title_note, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, *cells in table:
        lines.append("| " + " | ".join([f"`{name}`", *cells]) + " |")
    return "\n".join(lines) + "\n"


# The CIFAR model-zoo reference table's own columns (ResNetV2/bottleneck CIFAR models) for the rows it filled
# in: (params as it printed them, "FLOPs/2" = MACs at 32 px, training imgs/sec on its hardware; None = blank).
REFERENCE_TABLE = {
    "resnet34v2": (1_327_226, 72.40e6, 4160), "resnet35b": (873_722, 51.83e6, 3012),
    "resnet50b": (1_309_210, 74.11e6, 2171), "resnet101b": (2_530_426, 149.87e6, 1387),
    "resnet152b": (3_528_314, 225.63e6, 1161), "resnet170b": (4_414_202, 252.37e6, None),
    "wide_resnet18": (11_205_578, 609.96e6, None), "densenet250_k24": (15_300_000, None, None),
    "densenet190_k40": (25_600_000, None, None),
}


def reference_comparison(rows: list[ZooRow]) -> str:
    """Markdown table: the reference table's params / MACs / imgs/sec next to ours, for the rows it filled in."""
    by_name = {r.name: r for r in rows}
    head = ["model", "reference params", "ours (+BN stats)", "ours (trainable)", "reference MACs", "our MACs",
            "reference train img/s", "our train img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, (params, macs, speed) in REFERENCE_TABLE.items():
        r = by_name.get(name)
        if r is None:
            continue
        lines.append("| " + " | ".join([
            f"`{name}`", f"{params:,}", f"{r.params_with_bn_stats:,}", f"{r.params:,}", _si(macs), _si(r.macs),
            f"{speed:,}" if speed else "-", f"{r.train_imgs_per_s:,.0f}" if r.train_imgs_per_s else "-",
        ]) + " |")
    return "\n".join(lines) + "\n"


DOC_NOTES = """\
Notes
- Every model is our own PyTorch implementation (no timm), sized for 32-64 px inputs; global average
  pooling lets all of them take larger images too. Rows use 10 classes.
- FLOPs come from `torch.utils.flop_counter` (a multiply-add counts 2; convolutions, matmuls, not
  activations or BatchNorm). The reference table's "FLOPs/2" column is MACs.
- "params + BN stats" counts BatchNorm running mean/var like Keras' "total params", as the reference table does
  (except in its ResNet50b rows, whose 1,309,210 is exactly our trainable count).
- Our bottleneck MACs exceed the reference table's by 0.13M: the fixed blur filters, which it did not count.
- ResNetV2 bottleneck nets (`resnet35b` ... `resnet170b`, ResNeXt, SE-ResNet) blur-downsample before the
  3x3 conv: that matches the reference table's FLOPs (see fasttrain/models/resnetv2.py); `blur="after"` is TResNet's
  literal order and costs 29% more for `resnet50b`.
- Adapted for CIFAR (stride-1 stems, no early max-pool): `resnet18`, `preact_resnet18`, `mobilenetv2`
  (`--image-size 96` gives the reference table's upscaled mode with ImageNet strides), `efficientnet_b0`,
  `inception_v3`, `xception`, `resnet50_ibn_a`, `resnest50`, `tresnet_m` (space-to-depth stem replaced by a
  3x3 conv; BatchNorm + the chosen activation instead of Inplace-ABN with leaky ReLU).
- Known gaps against the reference table: `resnet170b` (ours 4,190,330 with BN stats vs its 4,414,202) and
  `wide_resnet18` (11,007,946 vs 11,205,578) do not match the reference table's parameter column although their
  FLOPs (`resnet170b`) do; the reference table does not describe those two precisely enough to tell why.
"""


def zoo_doc(rows: list[ZooRow], note: str = "") -> str:
    """docs/zoo.md: the table, the comparison with the reference table and the notes."""
    return "\n".join([
        "# Model zoo", "",
        "Generated by `fasttrain zoo --markdown docs/zoo.md` (add `--measure` on a GPU for the speed columns; "
        "benchmarks/zoo_measure.py also checks the compiled bf16 speed-up over eager fp32).", "",
        to_markdown(rows, note), "## Against the reference table", "", reference_comparison(rows), DOC_NOTES,
    ])


def device_description(device: str = "auto") -> str:
    if device in ("auto", "cuda") or device.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(None if device in ("auto", "cuda") else torch.device(device))
    return f"CPU ({count(torch.get_num_threads(), 'thread')})"


# Table order: the core and reference-table families first, then the "planned" ones; registration order within a family.
FAMILY_ORDER = ("resnet9", "airbench", "resnet", "resnetv2", "resnext", "senet", "densenet", "mobilenetv2", "wrn",
                "pyramidnet", "resnest", "efficientnet", "inception", "xception", "ibn", "tresnet")


def table_order(names: Iterable[str]) -> list[str]:
    from .models import MODELS

    registered = list(MODELS)

    def key(name: str) -> tuple[int, int]:
        family = get_entry(name).family
        rank = FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)
        return rank, registered.index(name)

    return sorted(names, key=key)


def select(spec: str | None) -> list[str]:
    """Model names from a comma-separated list of names and/or family names (None: every model), in
    table order."""
    names = table_order(list_models())
    if not spec:
        return names
    chosen: list[str] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        matches = [item] if item in names else [n for n in names if get_entry(n).family == item]
        if not matches:
            families = sorted({get_entry(n).family for n in names})
            raise KeyError(f"--models: {item!r} is neither a model nor a family{did_you_mean(item, [*names, *families])}; "
                           f"families: {', '.join(families)}")
        chosen += [m for m in matches if m not in chosen]
    return table_order(chosen)
