"""The `fasttrain` command line: thin wrappers that parse options, build a config and call the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train image classifiers as fast as the hardware allows.")



def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data.sources import SourceError
    from .data.tensor_format import DatasetError

    return (ConfigError, SourceError, DatasetError)


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _progress_factory():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def factory(label: str, total: int):
        progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            transient=True)
        progress.start()
        task = progress.add_task(label, total=total)
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            progress.update(task, advance=n)
            if done[0] >= total:
                progress.stop()

        return advance

    return factory


@app.command()
def convert(
    dataset: str = typer.Argument(..., help="cifar10 | cifar100 | tinyimagenet | cars196 | imagefolder"),
    source: Optional[Path] = typer.Option(None, help="Official archive, image folder, or tar(s) of one. "
                                          "Default: download the official archive."),
    out: Optional[Path] = typer.Option(None, help="Output directory [default: ./data/<dataset>]"),
    format: str = typer.Option("tensor", "--format", help="Output format: tensor (default; uint8 arrays) | "
                               "ffcv (.beton) | dali (JPEG files + list, nvJPEG-decodable)."),
    force: bool = typer.Option(False, help="Rebuild even if a complete dataset exists at --out."),
    # --- ffcv/dali formats
    jpeg_quality: Optional[int] = typer.Option(None, help="ffcv: store JPEG at this quality instead of raw "
                                               "pixels; dali: JPEG quality [default: 95]."),
    max_resolution: Optional[int] = typer.Option(None, help="ffcv/dali: shrink images whose longer side "
                                                 "exceeds this (larger images, e.g. ImageNet-like folders)."),
    timeout: Optional[float] = typer.Option(None, help="ffcv/dali: kill the writer after this many seconds "
                                            "[default: 3600]; nothing partial is left behind."),
    # --- tinyimagenet, cars196, imagefolder: reader options, passed on only when given
    name: Optional[str] = typer.Option(None, help="imagefolder: dataset name (meta.json, default --out "
                                       "./data/<name>)."),
    size: Optional[int] = typer.Option(None, help="Resize the short side to SIZE and centre-crop SIZE x SIZE "
                                       "(imagefolder, tinyimagenet; cars196 default 224)."),
    val_fraction: Optional[float] = typer.Option(None, help="imagefolder without val/test folders: hold out "
                                                 "this share of each class as 'test' [default: 0.1]."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip files that do not decode and record them "
                                  "(count and list) in meta.json, instead of stopping with an error."),
) -> None:
    """Convert a dataset once into a training-ready format (default ./data/<dataset>, or
    ./data/<dataset>-<format> for ffcv/dali)."""
    from .data.formats import convert_dataset

    reader_options = _reader_options(name=name, size=size, val_fraction=val_fraction, skip_bad=skip_bad)
    try:
        convert_dataset(dataset, fmt=format, source=source, out=out, force=force, jpeg_quality=jpeg_quality,
                        max_resolution=max_resolution, timeout_s=timeout, progress_factory=_progress_factory(),
                        log=typer.echo, **reader_options)
    except _user_errors() as e:
        _fail(str(e))


def _reader_options(**given) -> dict:
    """the dataset-reader options the user actually gave (None/False dropped)."""
    return {k: v for k, v in given.items() if v is not None and v is not False}



@app.command()
def run(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help="Model name (see `fasttrain zoo`); omit with --resume."),
    data: Optional[str] = typer.Option(None, help="Converted dataset directory [default: data/cifar10]"),
    epochs: Optional[float] = typer.Option(None, help="Epochs (may be fractional)."),
    batch_size: Optional[int] = typer.Option(None, help="Batch size."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (batch-mean loss)."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
    amp: Optional[str] = typer.Option(None, help="auto | bf16 | fp16 | off"),
    train_subset: Optional[int] = typer.Option(None, help="Train on N samples (stratified, seeded)."),
    test_subset: Optional[int] = typer.Option(None, help="Evaluate on N test samples."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    out: Optional[str] = typer.Option(None, help="Run directory [default: runs/<model>-<time>]"),
    recipe: Optional[str] = typer.Option(None, help="Named recipe (default: the model's own)."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing."),
    weight_decay: Optional[float] = typer.Option(None, help="Weight decay."),
    cutout: Optional[int] = typer.Option(None, help="Cutout square side (0 = off)."),
    mixup: Optional[float] = typer.Option(None, help="Mixup Beta alpha (0 = off)."),
    cutmix: Optional[float] = typer.Option(None, help="CutMix Beta alpha (0 = off)."),
    tta: Optional[str] = typer.Option(None, help="none | flip | flip_translate"),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate every N epochs (0 = only at the end)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    width: Optional[float] = typer.Option(None, help="Model width multiplier (models that take one)."),
    # --- model options: merged into cfg.model_kwargs, checked against the model's signature
    activation: Optional[str] = typer.Option(None, help="relu | mish | swish | gelu (every zoo model)."),
    drop_path: Optional[float] = typer.Option(None, help="Stochastic depth rate of the last residual block "
                                              "(linear in depth; residual families)."),
    image_size: Optional[int] = typer.Option(None, help="Upscale inputs to this size inside the model "
                                             "(mobilenetv2, efficientnet_b0; e.g. 96)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON at the end."),
    # --- pipelines
    pipeline: Optional[str] = typer.Option(None, help="tensor (default, whole dataset on the device) | ffcv | "
                                           "dali | torchvision; --data must be in the matching format."),
    # --- training features: each maps to the RunConfig field of the same name
    optimizer: Optional[str] = typer.Option(None, help="sgd (Nesterov) | adam | adamw | muon (conv/linear weights)."),
    momentum: Optional[float] = typer.Option(None, help="SGD momentum (also Muon's aux optimiser)."),
    muon_lr: Optional[float] = typer.Option(None, help="Muon: peak lr of conv/hidden-linear weights."),
    muon_ns_steps: Optional[int] = typer.Option(None, help="Muon: Newton-Schulz iterations (default 5)."),
    muon_weight_norm: Optional[bool] = typer.Option(None, "--muon-weight-norm/--no-muon-weight-norm",
                                                    help="Muon: renormalise each weight before its step."),
    alternating_flip: Optional[bool] = typer.Option(None, "--alternating-flip/--no-alternating-flip",
                                                    help="Flip each image every other epoch (tensor pipeline)."),
    schedule: Optional[str] = typer.Option(None, help="onecycle | cosine | step | multistep | htd | linear | "
                                           "constant | piecewise (per batch, after linear warmup)."),
    warmup_epochs: Optional[float] = typer.Option(None, help="Linear warmup length in epochs."),
    min_lr_frac: Optional[float] = typer.Option(None, help="Final lr as a fraction of the peak (cosine, linear, "
                                                "onecycle, piecewise)."),
    step_epochs: Optional[float] = typer.Option(None, help="step schedule: decay every N epochs."),
    milestones: Optional[str] = typer.Option(None, help="multistep schedule: comma-separated epochs, e.g. 100,150."),
    gamma: Optional[float] = typer.Option(None, help="step / multistep decay factor."),
    htd_lower: Optional[float] = typer.Option(None, help="HTD schedule lower bound L (default -6)."),
    htd_upper: Optional[float] = typer.Option(None, help="HTD schedule upper bound U (default 3)."),
    clip_grad: Optional[float] = typer.Option(None, help="Clip gradients at this norm / value (see --clip-mode)."),
    clip_mode: Optional[str] = typer.Option(None, help="norm | value"),
    accum_steps: Optional[int] = typer.Option(None, help="Accumulate gradients over N batches per step."),
    mix_prob: Optional[float] = typer.Option(None, help="Probability a batch is mixed (mixup / cutmix)."),
    switch_prob: Optional[float] = typer.Option(None, help="With mixup and cutmix: probability of cutmix."),
    mix_off_epoch: Optional[int] = typer.Option(None, help="Stop mixup / cutmix / PatchUp after N epochs."),
    patchup: Optional[str] = typer.Option(None, help="none | hard | soft: PatchUp on hidden feature maps."),
    patchup_prob: Optional[float] = typer.Option(None, help="Probability a batch is PatchUp-mixed."),
    ema: Optional[bool] = typer.Option(None, "--ema/--no-ema", help="EMA of weights; evaluation uses it."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay per optimiser step (default 0.999)."),
    val_split: Optional[int] = typer.Option(None, help="Carve N train images into a stratified val split."),
    monitor: Optional[str] = typer.Option(None, help="Metric for best.pt / early stopping: val_acc | val_loss | "
                                          "val_f1 | val_top5 | val_precision | val_recall."),
    early_stop: Optional[int] = typer.Option(None, help="Stop after N evals without improvement (needs --val-split)."),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard",
                                               help="TensorBoard event files (when tensorboard is installed)."),
    # --- resume, determinism, DDP
    resume: Optional[Path] = typer.Option(None, help="Continue the run in RUN_DIR from its last checkpoint, "
                                          "with its saved config (give no other options).", metavar="RUN_DIR"),
    deterministic: Optional[bool] = typer.Option(None, "--deterministic/--no-deterministic",
                                                 help="Deterministic kernels: with --seed, bit-identical CPU runs."),
    nproc: Optional[int] = typer.Option(None, help="Train with N processes on this machine (DDP via torchrun; "
                                        "--batch-size stays the global batch). Several machines: README."),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn",
                                           help="SyncBatchNorm across processes (CUDA only)."),
    # --- seed 003: retrieval task, attention blocks
    task: Optional[str] = typer.Option(None, help="classification (default) | retrieval: train on the first "
                                       "classes, report Recall@1/2/4/8 on the held-out ones (recipe t4-cars196)."),
    cls_epochs: Optional[float] = typer.Option(None, help="retrieval: classification epochs before the "
                                               "embedding head [default: --epochs]."),
    embed_epochs: Optional[float] = typer.Option(None, help="retrieval: epochs of the 512-d embedding with "
                                                 "the multi-similarity loss [default: --epochs]."),
    embed_lr: Optional[float] = typer.Option(None, help="retrieval: peak lr of the embedding phase."),
    m_per_class: Optional[int] = typer.Option(None, help="retrieval: images per class in a batch."),
    attention: Optional[str] = typer.Option(None, help="resnet18_attn: both | channel | spatial (CBAM blocks)."),
    attention_placement: Optional[str] = typer.Option(None, help="resnet18_attn: sequential | parallel."),
) -> None:
    """Train MODEL; writes config, metrics, checkpoint, plots and a summary into the run directory."""
    from .config import resolve

    if resume is not None:
        summary = _resume_run(ctx, model, resume, nproc)
        if json_out:
            typer.echo(json.dumps(summary))
        return
    if model is None:
        _fail("MODEL: missing; name a model (`fasttrain zoo` lists them) or pass --resume RUN_DIR")

    overrides = dict(data=data, epochs=epochs, batch_size=batch_size, lr=lr, device=device, compile=compile,
                     amp=amp, train_subset=train_subset, test_subset=test_subset, seed=seed, out=out,
                     label_smoothing=label_smoothing, weight_decay=weight_decay, cutout=cutout, mixup=mixup,
                     cutmix=cutmix, tta=tta, eval_every=eval_every, threads=threads)
    overrides["pipeline"] = pipeline
    overrides.update(deterministic=deterministic, nproc=nproc, sync_bn=sync_bn)
    try:
        overrides.update(
            optimizer=optimizer, momentum=momentum, muon_lr=muon_lr, muon_ns_steps=muon_ns_steps,
            muon_weight_norm=muon_weight_norm, alternating_flip=alternating_flip, schedule=schedule,
            warmup_epochs=warmup_epochs,
            end_lr_frac=min_lr_frac, step_epochs=step_epochs, gamma=gamma, htd_lower=htd_lower, htd_upper=htd_upper,
            milestones=[float(m) for m in milestones.split(",") if m.strip()] if milestones is not None else None,
            clip_grad=clip_grad, clip_mode=clip_mode, accum_steps=accum_steps, mix_prob=mix_prob,
            switch_prob=switch_prob, mix_off_epoch=mix_off_epoch, patchup=patchup, patchup_prob=patchup_prob,
            ema=ema, ema_decay=ema_decay, val_split=val_split, monitor=monitor, early_stop=early_stop,
            tensorboard=tensorboard)
    except ValueError:
        _fail(f"--milestones: expected comma-separated epochs such as 100,150, got {milestones!r}")
    overrides["task"] = task
    from .models.attention import ATTENTION_BLOCKS, PLACEMENTS

    if attention is not None and attention not in ATTENTION_BLOCKS:
        _fail(f"--attention: must be one of {', '.join(ATTENTION_BLOCKS)}, got {attention!r}")
    if attention_placement is not None and attention_placement not in PLACEMENTS:
        _fail(f"--attention-placement: must be one of {', '.join(PLACEMENTS)}, got {attention_placement!r}")
    if task == "retrieval" and recipe is None:
        from .config import default_retrieval_recipe

        recipe = default_retrieval_recipe(model)
    try:
        cfg = resolve(model, recipe, overrides)
        from .models.options import merge_model_options  # model options

        merge_model_options(cfg, width=width, activation=activation, drop_path=drop_path, image_size=image_size,
                            attention=attention, placement=attention_placement)  # attention
        _merge_retrieval_options(cfg, cls_epochs=cls_epochs, embed_epochs=embed_epochs, embed_lr=embed_lr,
                                 m_per_class=m_per_class)
        summary = _train_retrieval(cfg) if cfg.task == "retrieval" else _train(cfg)  # --task
    except _user_errors() as e:
        _fail(str(e))
    if json_out:
        typer.echo(json.dumps(summary))


# ---------------------------------------------------------------------------- retrieval
def _merge_retrieval_options(cfg, **given) -> None:
    """Put the retrieval options that were given into cfg.retrieval and re-validate."""
    given = {k: v for k, v in given.items() if v is not None}
    if given and cfg.task != "retrieval":
        _fail(f"{', '.join('--' + k.replace('_', '-') for k in given)}: only with --task retrieval")
    cfg.retrieval = {**cfg.retrieval, **given}
    cfg.validate()


def _train_retrieval(cfg) -> dict:
    from .retrieval import train_retrieval

    if cfg.nproc > 1:
        _fail("--nproc: the retrieval task runs in one process")
    return train_retrieval(cfg)


# ---------------------------------------------------------------------------- resume / DDP / failures
def _train(cfg, *, resume: bool = False) -> dict:
    """train(cfg), or with cfg.nproc > 1 outside torchrun: re-execute this command under torchrun. A stop
    signal exits 130/143 with a resume hint; a diverged loss exits 3; run-dir/checkpoint problems exit 2."""
    from . import distributed
    from .checkpoint import CheckpointError
    from .resilience import NonFiniteLoss, RunDirError, RunInterrupted
    from .train import train

    if cfg.nproc > 1 and not distributed.in_torchrun():
        distributed.check_launch(cfg.nproc, cfg.device)
        distributed.launch(cfg.nproc, sys.argv[1:])  # replaces this process
    try:
        summary = train(cfg, resume=resume)
        if not distributed.is_main_process():
            raise typer.Exit(0)  # rank 0 alone reports
        return summary
    except RunInterrupted as e:
        if not distributed.is_main_process():
            raise typer.Exit(e.exit_code) from None
        typer.echo(f"interrupted by {e.signame} at step {e.step} (epoch {e.epoch + 1}); checkpoint saved in "
                   f"{e.run_dir}\nresume with: fasttrain run --resume {e.run_dir}", err=True)
        raise typer.Exit(e.exit_code) from None
    except NonFiniteLoss as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3) from None
    except (CheckpointError, RunDirError) as e:
        _fail(str(e))


def _resume_run(ctx: typer.Context, model: str | None, run_dir: Path, nproc: int | None) -> dict:
    """--resume RUN_DIR: the run's own config.json and nothing else (--nproc and --json excepted)."""
    from .config import ConfigError, RunConfig

    allowed = {"resume", "nproc", "json_out", "model"}
    given = [p for p in ctx.params if p not in allowed and ctx.params[p] is not None
             and ctx.get_parameter_source(p).name != "DEFAULT"]
    if given:
        names = ", ".join("--" + p.replace("_", "-") for p in sorted(given))
        _fail(f"--resume restores every option from {run_dir / 'config.json'}; drop {names} "
              f"(or start a new run with --out)")
    path = run_dir / "config.json"
    if not path.is_file():
        _fail(f"--resume {run_dir}: no config.json there; pass the directory of a run started by `fasttrain run`")
    try:
        cfg = RunConfig.from_dict(json.loads(path.read_text()))
        if model is not None and model != cfg.model:
            raise ConfigError(f"MODEL: {model!r} contradicts the resumed run's model {cfg.model!r}; omit MODEL")
        cfg.out = str(run_dir)
        if nproc is not None:
            cfg.nproc = nproc
        cfg.validate()
        return _train(cfg, resume=True)
    except _user_errors() as e:
        _fail(str(e))


@app.command()
def quickstart(
    source: Optional[Path] = typer.Option(None, help="CIFAR-10 source for the conversion (default: the "
                                          "offline copy at ../shared/data/cifar10-jpeg if present, else download)."),
    data: Path = typer.Option(Path("data/cifar10"), help="Where the converted dataset lives."),
    out: Optional[str] = typer.Option(None, help="Run directory."),
) -> None:
    """The main job: convert CIFAR-10, then train ResNet9 for 24 epochs on the GPU, or, without a GPU,
    the CPU quick recipe (about 10 minutes on 2 cores)."""
    import torch

    from .config import resolve
    from .data.convert import convert as do_convert

    if source is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
        source = shared if shared.is_dir() else None
    try:
        do_convert("cifar10", source=source, out=data, progress_factory=_progress_factory(), log=typer.echo)
        if torch.cuda.is_available():
            typer.echo(f"GPU found ({torch.cuda.get_device_name()}): training resnet9 for 24 epochs (recipe myrtle24)")
            cfg = resolve("resnet9", None, dict(data=str(data), epochs=24, out=out, compile=True))
        else:
            typer.echo("No CUDA GPU found: running the CPU quick recipe instead (airbench-style net, recipe "
                       "cpu-quick, about 10 minutes on 2 cores). On a GPU this command trains resnet9 for 24 epochs.")
            cfg = resolve("airbench", "cpu-quick", dict(data=str(data), out=out))
        _train(cfg)
    except _user_errors() as e:
        _fail(str(e))


# ---------------------------------------------------------------------------- zoo
@app.command()
def zoo(
    measure: bool = typer.Option(False, "--measure", help="Also time training and inference (imgs/sec)."),
    device: str = typer.Option("auto", help="Device for --measure: auto | cpu | cuda | cuda:N"),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model and/or family names [default: all]."),
    batch_size: int = typer.Option(256, help="Batch size for --measure."),
    steps: int = typer.Option(20, help="Timed steps per configuration for --measure."),
    warmup: int = typer.Option(5, help="Untimed warm-up steps (compilation happens here)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="Also try torch.compile [default: on CUDA only]."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also time eager fp32 training."),
    out: Optional[Path] = typer.Option(None, help="Write the rows as JSON to this file."),
    markdown: Optional[Path] = typer.Option(None, help="Write the Markdown page (table, seed comparison, "
                                            "notes) to this file, e.g. docs/zoo.md."),
) -> None:
    """List the model zoo: params, params counting BN statistics, FLOPs at 32x32, and with --measure
    training/inference imgs/sec (bf16, channels_last, compiled where faster) against eager fp32."""
    from . import zoo_cmd

    log = (lambda s: typer.echo(s, err=True)) if measure else (lambda s: None)
    try:
        names = zoo_cmd.select(models)
        rows = zoo_cmd.zoo_rows(names, measure, device, batch_size, steps, warmup, compile, baseline, log)
    except (KeyError, ValueError, RuntimeError) as e:  # unknown model/family, unusable --device
        _fail(e.args[0])
    note = ""
    if measure:
        note = (f"Measured on {zoo_cmd.device_description(device)}, batch {batch_size}, 32x32 random inputs, "
                f"{steps} timed steps after {warmup} warm-up steps, torch {__import__('torch').__version__}.")
    table = zoo_cmd.to_markdown(rows, note)
    payload = {"note": note, "rows": [zoo_cmd.row_dict(r) for r in rows]}
    if out is not None:
        from .runio import write_json

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, payload)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(zoo_cmd.zoo_doc(rows, note))
    typer.echo(json.dumps(payload, indent=2) if json_out else table)


# ---------------------------------------------------------------------------- eval, predict, report
def _checkpoint_errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError

    return (CheckpointError, FileNotFoundError, ValueError)


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="RUN_DIR/checkpoint.pt or RUN_DIR/best.pt"),
    data: Path = typer.Option(..., help="Converted dataset directory (same classes as the checkpoint)."),
    split: str = typer.Option("test", help="Split to evaluate: test | train (| val where converted)."),
    tta: str = typer.Option("none", help="none | flip | flip_translate"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    batch_size: int = typer.Option(500, help="Evaluation batch size."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the checkpoint has them."),
    out: Optional[Path] = typer.Option(None, help="Write metrics.json, confusion.json and confusion.png here."),
    json_out: bool = typer.Option(False, "--json", help="Print all metrics as JSON."),
) -> None:
    """Loss, top-1/top-5, macro precision/recall/F1, per-class accuracy and the confusion matrix of a
    checkpoint on a split."""
    from .inference import evaluate_checkpoint

    try:
        m = evaluate_checkpoint(checkpoint, data, split=split, tta=tta, device=device, batch_size=batch_size,
                                use_ema=ema)
    except (*_user_errors(), *_checkpoint_errors()) as e:
        _fail(str(e))
    if out is not None:
        from .plots import plot_confusion
        from .runio import write_json

        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "metrics.json", {k: v for k, v in m.items() if k != "confusion"})
        write_json(out / "confusion.json", {"classes": m["classes"], "matrix": m["confusion"]})
        plot_confusion(m["confusion"], m["classes"], out / "confusion.png",
                       title=f"{checkpoint}: {split} (acc {100 * m['acc']:.2f}%)")
    if json_out:
        typer.echo(json.dumps(m))
        return
    typer.echo(f"{checkpoint} on {data} [{split}, {m['samples']} images, tta {tta}, {m['weights']} weights]")
    for key in ("loss", "acc", "top5", "precision", "recall", "f1"):
        value = m[key]
        typer.echo(f"  {key:<10} {value:.4f}" if key == "loss" else f"  {key:<10} {100 * value:.2f}%")
    worst = sorted(zip(m["per_class_acc"], m["classes"]))[:5]
    typer.echo("  weakest classes: " + ", ".join(f"{c} {100 * a:.1f}%" for a, c in worst))


@app.command()
def predict(
    checkpoint: Path = typer.Argument(..., help="RUN_DIR/checkpoint.pt or RUN_DIR/best.pt"),
    images: list[Path] = typer.Argument(..., help="Image files (any size; resized as in `fasttrain convert`)."),
    top_k: int = typer.Option(5, help="Classes to show per image."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    tta: str = typer.Option("none", help="none | flip | flip_translate"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the checkpoint has them."),
    json_out: bool = typer.Option(False, "--json", help="Print the predictions as JSON."),
) -> None:
    """Top-k classes with probabilities for each image."""
    from .inference import predict_images

    if top_k < 1:
        _fail(f"--top-k: must be >= 1, got {top_k}")
    try:
        results = predict_images(checkpoint, images, top_k=top_k, device=device, tta=tta, use_ema=ema)
    except (*_user_errors(), *_checkpoint_errors()) as e:
        _fail(str(e))
    if json_out:
        typer.echo(json.dumps(results))
        return
    for r in results:
        typer.echo(r["image"])
        for cls, p in r["top"]:
            typer.echo(f"  {100 * p:6.2f}%  {cls}")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run directories to compare."),
    plot: Path = typer.Option(Path("report.png"), help="Overlay plot of the runs' accuracy curves."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table rows as JSON here."),
) -> None:
    """Comparison table of runs (best test accuracy first) and an overlay plot of their accuracy curves."""
    from .report import report as do_report

    try:
        do_report(run_dirs, plot, json_path=json_path)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(f"wrote {plot}")


# ---------------------------------------------------------------------------- export
@app.command("export")
def export_cmd(
    run_or_checkpoint: Path = typer.Argument(..., help="Run directory, or a checkpoint file (RUN_DIR/best.pt, "
                                             "RUN_DIR/checkpoint.pt).", metavar="RUN_OR_CHECKPOINT"),
    format: str = typer.Option("onnx", "--format", help="onnx | torchscript (uint8 NHWC images in, logits out, "
                               "normalisation folded in) | safetensors (the network's weights; metadata holds "
                               "mean/std/classes)."),
    out: Optional[Path] = typer.Option(None, help="File to write. Default: beside the checkpoint, named after it "
                                       "(RUN_DIR/best.onnx, RUN_DIR/checkpoint.torchscript.pt, ...)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out even if fasttrain did not write it."),
    checkpoint: Optional[str] = typer.Option(None, help="For a run directory: best (best.pt, written with a val "
                                             "split) | last (checkpoint.pt) [default: best.pt where the run "
                                             "wrote one, else checkpoint.pt]."),
) -> None:
    """Export a trained model to ONNX, TorchScript or safetensors (written atomically; docs/python_api.md)."""
    from .exporting import ExportError, export

    try:
        path = export(run_or_checkpoint, format, out, force=force, checkpoint=checkpoint)
    except (ExportError, *_checkpoint_errors()) as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


def main() -> None:
    if sys.argv[1:2] == ["--"]:  # `torchrun -m fasttrain -- run ...` (some Pythons keep the "--")
        del sys.argv[1]
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
