"""The `fasttrain` command line: thin commands that parse options, build a config and call the library.

`fasttrain run`'s options are generated from RunConfig (fasttrain/cli_options.py), so the CLI is not a
second schema. This module holds the commands, the one launch path of every run (`_train`) and the exit
policy. It imports only the settings layer at start-up; each command imports its heavy modules (torch, the
trainer, the data writers) when it runs, so `--help`, `--version` and option errors answer at once and
`convert` never loads torch.

Errors: a user-caused failure (bad option, file, checkpoint, dataset; click's own usage errors too) ends with
one `error: ...` line on stderr and exit code 2; anything else is a bug and prints its traceback with a
request to report it.

Longer than 400 lines because it holds every command's signature (typer reads them) and their help text;
each command body is a few lines that call the library.
"""

from __future__ import annotations

import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Optional, TextIO

import typer
import typer.core

from . import __version__
from .choices import CHECKPOINTS, EVAL_SPLITS, PLOT_FORMATS, RETRIEVAL_OPTIONS, TTA_MODES
from .cli_options import (HELP_OPTIONS, RUN_HELP, RunCommand, click_errors, make_run_command, overrides, show, unalias,
                          usage_error_line)
from .config import (DEFAULT_RECIPES, FIELDS, RECIPE_ALIASES, RECIPES, ConfigError, RunConfig, check_against_data,
                     did_you_mean, load_config_file, recipe_name, resolve)
from .recipes import recipe_source
from .words import command_line_spelling, count


NO_ARGS_IS_HELP = getattr(click_errors, "NoArgsIsHelpError", ())  # `fasttrain` alone: click's help, exit 2


class _Commands(typer.core.TyperGroup):
    """Every command's user-caused failure becomes one `error:` line and exit code 2, in one place: the
    library's errors, and click's usage errors (here instead of click's framed message)."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except NO_ARGS_IS_HELP:
            raise  # `fasttrain` alone: the help
        except click_errors.UsageError as e:  # `fasttrain --bogus`
            _fail(usage_error_line(e))

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            with command_line_spelling():  # messages name --options, also from the library it calls
                return super().invoke(ctx)
        except (typer.Exit, typer.Abort, NO_ARGS_IS_HELP):
            raise  # --help, --version, a command's own exit code
        except click_errors.UsageError as e:  # an unknown command, or a command's unknown option or missing argument
            _fail(usage_error_line(e))
        except MemoryError:
            typer.echo("error: out of memory; lower the sizes involved (--size, --batch-size, --train-subset) or "
                       "use a machine with more memory", err=True)
            raise typer.Exit(2) from None
        except Exception as e:
            if isinstance(e, _user_errors()):
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None
            raise


# Plain help (no rich panels): it wraps at any width without cutting flags; run's panels are RunCommand's.
app = typer.Typer(cls=_Commands, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": list(HELP_OPTIONS)},
                  help="Train image classifiers as fast as the hardware allows.")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the user's input is wrong": shown as one line, exit code 2. The run
    folder's, the checkpoint's and the models' errors are taken only once their modules are loaded (an error of
    a module never imported cannot have been raised): importing them would load torch into a command that never
    needed it, e.g. a `convert` refusing an archive bomb in bounded memory."""
    from .data.errors import DatasetError, SourceError
    from .outputs import OutputError

    errors: list[type[BaseException]] = [ConfigError, SourceError, DatasetError, OutputError]
    if "fasttrain.rundisk" in sys.modules:
        from .rundisk import RunDirError

        errors.append(RunDirError)
    if "fasttrain.checkpoint" in sys.modules:
        from .checkpoint import CheckpointError

        errors.append(CheckpointError)
    if "fasttrain.models.registry" in sys.modules:
        from .models import ModelError

        errors.append(ModelError)
    return tuple(errors)


def _json_stdout() -> TextIO:
    """For --json: returns the real stdout, kept for the one JSON document; until `_emit_json`, everything
    else printed (echo, rich consoles, the trainer's progress) goes to stderr."""
    out = sys.stdout
    sys.stdout = sys.stderr
    return out


def _emit_json(stream: TextIO | None, payload: Any) -> None:
    if stream is not None:
        sys.stdout = stream
        stream.write(json.dumps(payload) + "\n")
        stream.flush()


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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fasttrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                       help="Print the version and exit.")) -> None:
    """Train image classifiers as fast as the hardware allows."""


# ============================================================================ convert
MAX_CONVERT_SIZE = 1024  # pixels; a tensor dataset of larger images belongs in --format ffcv/dali


@app.command()
def convert(
    dataset: str = typer.Argument(..., metavar="DATASET", help="cifar10 | cifar100 | tinyimagenet | cars196 | imagefolder | imagenet"),
    source: Optional[Path] = typer.Option(None, help="Official archive, image folder, or tar(s) of one. "
                                          "Default: download the official archive."),
    out: Optional[Path] = typer.Option(None, help="Output directory [default: ./data/<dataset>]"),
    format: Optional[str] = typer.Option(None, "--format", help="Output format: tensor (default; uint8 arrays) | "
                                         "ffcv (.beton) | dali (JPEG files + list, nvJPEG-decodable) | jpeg (each "
                                         "image at its own size in packed shards, streamed from disk; the only "
                                         "format of imagenet)."),
    force: bool = typer.Option(False, help="Rebuild even if a complete dataset exists at --out."),
    # --- ffcv/dali/jpeg formats
    jpeg_quality: Optional[int] = typer.Option(None, help="ffcv: store JPEG at this quality instead of raw "
                                               "pixels; dali: JPEG quality [default: 95]; jpeg: quality of the "
                                               "images that are encoded (not copied) [default: 90]."),
    max_resolution: Optional[int] = typer.Option(None, "--max-side", help="ffcv/dali/jpeg: shrink images whose "
                                                 "longer side exceeds this [jpeg default: 512]; jpeg stores a JPEG "
                                                 "within it byte for byte."),
    timeout: Optional[float] = typer.Option(None, help="ffcv/dali: kill the writer after this many seconds "
                                            "[default: 3600]; nothing partial is left behind."),
    shard_mib: Optional[int] = typer.Option(None, help="jpeg: size of each tar shard in MiB [default: 256]."),
    # --- tinyimagenet, cars196, imagefolder: reader options, passed on only when given
    name: Optional[str] = typer.Option(None, help="imagefolder: dataset name (meta.json, default --out "
                                       "./data/<name>)."),
    size: Optional[int] = typer.Option(None, help=f"Resize the short side to SIZE and centre-crop SIZE x SIZE "
                                       f"(imagefolder, tinyimagenet; cars196 default 224; at most {MAX_CONVERT_SIZE})."),
    val_fraction: Optional[float] = typer.Option(None, help="imagefolder without val/test folders: hold out "
                                                 "this share of each class as 'test' [default: 0.1]."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip files that do not decode and record them "
                                  "(count and list) in meta.json, instead of stopping with an error."),
) -> None:
    """Convert a dataset once into a training-ready format (default ./data/<dataset>, or
    ./data/<dataset>-<format> for ffcv/dali/jpeg)."""
    from .data.convert import convert as convert_dataset, known_datasets

    known = known_datasets()
    if dataset not in known:
        _fail(f"DATASET: unknown dataset {dataset!r}{did_you_mean(dataset, known)}; known: {', '.join(known)}")
    if size is not None and not 8 <= size <= MAX_CONVERT_SIZE:
        _fail(f"--size: must lie in [8, {MAX_CONVERT_SIZE}] pixels, got {size}; for larger images use "
              f"--format jpeg (each image at its own size), or ffcv or dali with --max-side")
    reader_options = {k: v for k, v in dict(name=name, size=size, val_fraction=val_fraction, skip_bad=skip_bad).items()
                      if v is not None and v is not False}
    convert_dataset(dataset, fmt=format, source=source, out=out, force=force, jpeg_quality=jpeg_quality,
                    max_resolution=max_resolution, timeout_s=timeout, shard_mib=shard_mib,
                    progress_factory=_progress_factory(),
                    log=typer.echo, **reader_options)


# ============================================================================ run
def _build_config(model: str | None, config: Path | None, settings: list[str] | None,
                  options: dict[str, Any]) -> RunConfig:
    """The resolved, validated RunConfig, with every check that needs the model registry or the dataset."""
    from .models import get_entry
    from .models.options import check_model_kwargs

    given = overrides(settings, options)
    file_values = load_config_file(config) if config is not None else {}
    model = model or given.get("model") or file_values.get("model")
    if not model:
        raise ConfigError("MODEL: missing; name a model (`fasttrain zoo` lists them), give `model:` in --config, "
                          "or pass --resume RUN_DIR")
    get_entry(model)  # unknown model: a suggestion before anything else
    cfg = resolve(model, None, given, file_values=file_values)
    check_model_kwargs(cfg.model, cfg.model_kwargs)
    if cfg.task == "retrieval":
        from .retrieval.trainer import RetrievalOptions

        RetrievalOptions.from_dict(cfg.retrieval)
        if cfg.nproc > 1 or cfg.nnodes > 1:
            raise ConfigError(f"--{'nproc' if cfg.nproc > 1 else 'nnodes'}: the retrieval task runs in one process")
    elif cfg.retrieval:
        given = [k for k in RETRIEVAL_OPTIONS if options.get(k) is not None] or ["retrieval"]
        raise ConfigError(f"{', '.join('--' + k.replace('_', '-') for k in given)}: only with --task retrieval")
    from .data.errors import DatasetError
    from .data.tensor_format import read_meta

    try:
        meta = read_meta(cfg.data)
    except DatasetError:
        meta = {}  # a missing or broken meta.json is reported by the data reader, with what to do
    if len(meta.get("shape") or []) >= 2:
        check_against_data(cfg, meta)
    return cfg


def _run(ctx: typer.Context, model: Optional[str], config: Optional[Path], settings: Optional[list[str]],
         print_config: bool, json_out: bool, resume: Optional[Path], **options: Any) -> None:
    stdout = _json_stdout() if json_out else None
    if resume is not None:
        _emit_json(stdout, _resume_run(ctx, model, resume, options.get("nproc")))
        return
    cfg = _build_config(model, config, settings, options)
    if print_config:
        if stdout is None:
            typer.echo(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        _emit_json(stdout, cfg.to_dict())
        return
    _check_data_exists(cfg.data)
    if cfg.recipe is None:
        typer.echo(f"{cfg.model} has no recipe: RunConfig defaults plus your options ({cfg.optimizer} lr {cfg.lr:g}, "
                   f"batch {cfg.batch_size}, {cfg.schedule}, {count(cfg.epochs, 'epoch')}); `fasttrain recipes` lists "
                   f"recipes", err=True)
    _emit_json(stdout, _train(cfg))


def _check_data_exists(data: str) -> None:
    """A --data directory that does not exist, named before any work (what is inside an existing directory
    is the data reader's to judge)."""
    from .data.tensor_format import not_a_dataset

    if not Path(data).exists():
        raise ConfigError(f"--data {not_a_dataset(Path(data))}")


app.command("run", cls=RunCommand, help=RUN_HELP)(make_run_command(_run))


# ---------------------------------------------------------------------------- the one launch path, resume
def _train(cfg: RunConfig, *, resume: bool = False) -> dict:
    """Every kind of run goes through here: the task's trainer (classification or retrieval), or with
    cfg.nproc > 1 outside torchrun: re-execute this command under torchrun. A stop signal exits 130/143 with
    a resume hint; a diverged loss exits 3; run-dir/checkpoint problems exit 2."""
    from . import distributed
    from .stopping import NonFiniteLoss, RunInterrupted

    if cfg.task == "retrieval":
        from .retrieval.trainer import train_retrieval as train
    else:
        from .train import train

    if (cfg.nproc > 1 or cfg.nnodes > 1) and not distributed.in_torchrun():
        distributed.check_launch(cfg.nproc, cfg.device)
        nodes = distributed.Nodes(cfg.nnodes, cfg.node_rank, cfg.master_addr, cfg.master_port)
        distributed.launch(cfg.nproc, sys.argv[1:], nodes)  # replaces this process
    try:
        summary = train(cfg, resume=resume)
        if not distributed.is_main_process():
            raise typer.Exit(0)  # rank 0 alone reports
        return summary
    except RunInterrupted as e:
        _ignore_further_stop_signals()
        if not distributed.is_main_process():
            raise typer.Exit(e.exit_code) from None
        typer.echo(f"interrupted by {e.signame} at step {e.step} (epoch {e.epoch + 1}); checkpoint saved in "
                   f"{e.run_dir}\nresume with: fasttrain run --resume {e.run_dir}", err=True)
        raise typer.Exit(e.exit_code) from None
    except NonFiniteLoss as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(3) from None


NODE_OPTIONS = ("nnodes", "node_rank", "master_addr", "master_port")  # where this process runs, not what


def _resume_run(ctx: typer.Context, model: str | None, run_dir: Path, nproc: int | None) -> dict:
    """--resume RUN_DIR: the run's own config.json and nothing else (--nproc, the node options, --json and
    --epochs excepted: --epochs N extends the run where its schedule allows it, see fasttrain.extend)."""
    allowed = {"resume", "nproc", "json_out", "model", "epochs", *NODE_OPTIONS}
    given = [p for p in ctx.params if p not in allowed and ctx.params[p] not in (None, False, [], ())
             and ctx.get_parameter_source(p).name != "DEFAULT"]
    if given:
        names = ", ".join("--" + p.replace("_", "-") for p in sorted(given))
        _fail(f"--resume restores every setting from {run_dir / 'config.json'}; drop {names} "
              f"(or start a new run with --out)")
    from .rundir import load_run_config

    cfg = load_run_config(run_dir)  # a damaged or edited config.json: a RunDirError naming it
    if ctx.params.get("epochs") is not None:
        cfg.epochs = ctx.params["epochs"]
    if model is not None and model != cfg.model:
        raise ConfigError(f"MODEL: {model!r} contradicts the resumed run's model {cfg.model!r}; omit MODEL")
    cfg.out = str(run_dir)
    if nproc is not None:
        cfg.nproc = nproc
    for name in NODE_OPTIONS:  # where this node runs is this command's to say (a requeued job moves)
        if ctx.params.get(name) is not None:
            setattr(cfg, name, ctx.params[name])
    cfg.validate()
    return _train(cfg, resume=True)


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

    from .data.convert import convert as do_convert

    if source is None:
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
        source = shared if shared.is_dir() else None
    do_convert("cifar10", source=source, out=data, progress_factory=_progress_factory(), log=typer.echo)
    if torch.cuda.is_available():
        typer.echo(f"GPU found ({torch.cuda.get_device_name()}): training resnet9 for 24 epochs (recipe myrtle24)")
        cfg = resolve("resnet9", None, dict(data=str(data), epochs=24, out=out, compile=True))
    else:
        typer.echo("No CUDA GPU found: running the CPU quick recipe instead (airbench-style net, recipe "
                   "cpu-quick, about 10 minutes on 2 cores). On a GPU this command trains resnet9 for 24 epochs.")
        cfg = resolve("airbench", "cpu-quick", dict(data=str(data), out=out))
    _train(cfg)


# ============================================================================ lr-find
@app.command("lr-find")
def lr_find_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="Model name, as for `fasttrain run`."),
    data: Optional[str] = typer.Option(None, help="Converted dataset directory (as for `fasttrain run`)."),
    recipe: Optional[str] = typer.Option(None, help="Recipe whose optimiser and batch size the sweep uses."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="Settings from a file, as for run."),
    settings: Optional[list[str]] = typer.Option(None, "--set", metavar="FIELD=VALUE",
                                                 help="Any run setting, as for run (repeatable)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step [default: the recipe's]."),
    optimizer: Optional[str] = typer.Option(None, help="sgd | adam | adamw | muon [default: the recipe's]."),
    train_subset: Optional[int] = typer.Option(None, help="Sample the steps' batches from this many images."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N"),
    start_lr: float = typer.Option(1e-6, help="First learning rate of the sweep."),
    end_lr: float = typer.Option(10.0, help="Last learning rate of the sweep (it stops early when the loss "
                                            "diverges)."),
    steps: int = typer.Option(100, help="Optimiser steps of the sweep."),
    out: Optional[Path] = typer.Option(None, help="Folder for lr_find.png and lr_find.json "
                                                        "[default: runs/lr-find-MODEL]."),
    force: bool = typer.Option(False, "--force", help="Replace lr_find.* files fasttrain did not write."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON document on stdout."),
) -> None:
    """Learning-rate range test: an exponential lr sweep over a few steps, the smoothed loss, the steepest
    descent and the minimum / 10; prints the --lr to pass to `fasttrain run` and plots the curve."""
    from .lr_find import lr_find

    stdout = _json_stdout() if json_out else None
    options = dict(data=data, recipe=recipe, batch_size=batch_size, optimizer=optimizer,
                   train_subset=train_subset, device=device)
    cfg = _build_config(model, config, settings, options)
    _check_data_exists(cfg.data)
    result = lr_find(cfg, start_lr=start_lr, end_lr=end_lr, steps=steps, out=out, force=force,
                     log=lambda s: typer.echo(s, err=stdout is not None))
    if stdout is not None:
        _emit_json(stdout, {k: v for k, v in result.items() if k not in ("lr", "loss", "smoothed")})
        return
    steepest = f"{result['steepest']:.3g}" if result["steepest"] is not None else "none found"
    typer.echo(f"steepest descent at lr {steepest}; minimum loss at lr {result['min_loss_lr']:.3g} "
               f"(/10: {result['min_over_10']:.3g}){'; stopped early: the loss diverged' if result['stopped_early'] else ''}")
    typer.echo(f"wrote {result['out']}/lr_find.png and lr_find.json")
    typer.echo(f"suggested: --lr {result['suggested']:.3g}")


# ============================================================================ recipes
RECIPE_COLUMNS = ("model", "data", "epochs", "batch_size", "optimizer", "lr", "schedule", "tta")


@app.command()
def recipes(
    name: Optional[str] = typer.Argument(None, metavar="NAME", help="A recipe: show every setting it makes."),
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """List the named recipes (`fasttrain run MODEL --recipe NAME`), or one recipe's settings."""
    from rich.table import Table

    from .tables import print_table, table_console

    console = table_console()
    users = {r: sorted(m for m, d in DEFAULT_RECIPES.items() if d == r) for r in RECIPES}
    aliases = {r: sorted(a for a, c in RECIPE_ALIASES.items() if c == r) for r in RECIPES}
    if name is None:
        rows = [{"recipe": r, **{k: RECIPES[r].get(k, FIELDS[k].default) for k in RECIPE_COLUMNS},
                 "default_for": users[r], "source": recipe_source(r)} for r in RECIPES]
        if json_out:
            typer.echo(json.dumps(rows))
            return
        columns = ("recipe", "model", "epochs", "lr", "batch_size", "optimizer", "schedule", "default_for", "tta",
                   "data")  # most telling first: a narrow terminal leaves out the last ones
        print_table(f"{len(rows)} recipes (`fasttrain recipes NAME` shows one with its source; unset fields take "
                    f"the RunConfig defaults)", columns,
                    [[", ".join(row[c]) if c == "default_for" else show(row[c]) for c in columns] for row in rows],
                    right=("epochs", "lr", "batch_size"), console=console)
        return
    canonical = recipe_name(name)
    recipe = RECIPES[canonical]
    if json_out:
        typer.echo(json.dumps({"recipe": canonical, "aliases": aliases[canonical], "default_for": users[canonical],
                               "source": recipe_source(canonical), "settings": recipe}))
        return
    table = Table(title=f"recipe {canonical}" + (f" (also: {', '.join(aliases[canonical])})" if aliases[canonical]
                                                  else ""))
    for col in ("setting", "value", "RunConfig default"):
        table.add_column(col)
    for key, value in recipe.items():
        table.add_row(key, show(value) if not isinstance(value, dict) else json.dumps(value),
                      show(FIELDS[key].default) if not isinstance(value, dict) else "{}")
    console.print(table)
    typer.echo(f"source: {recipe_source(canonical)}")
    if users[canonical]:
        typer.echo(f"default recipe of: {', '.join(users[canonical])}")


# ============================================================================ zoo
@app.command()
def zoo(
    measure: bool = typer.Option(False, "--measure", help="Also time training and inference (imgs/sec)."),
    device: str = typer.Option("auto", help="Device for --measure: auto | cpu | cuda | cuda:N"),
    json_out: bool = typer.Option(False, "--json", help="Print the rows as JSON instead of a table."),
    models: Optional[str] = typer.Option(None, help="Comma-separated model and/or family names "
                                                           "[default: all]."),
    batch_size: int = typer.Option(256, min=1, help="Batch size for --measure."),
    steps: int = typer.Option(20, min=1, help="Timed steps per configuration for --measure."),
    warmup: int = typer.Option(5, min=0, help="Untimed warm-up steps (compilation happens here)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                           help="Also try torch.compile [default: on CUDA only]."),
    baseline: bool = typer.Option(True, "--baseline/--no-baseline", help="Also time eager fp32 training."),
    out: Optional[Path] = typer.Option(None, help="Write the rows as JSON to this file."),
    markdown: Optional[Path] = typer.Option(None, help="Write the Markdown page (table, comparison with the "
                                            "published numbers, notes) to this file, e.g. docs/zoo.md."),
    force: bool = typer.Option(False, "--force", help="Replace --out / --markdown files even if fasttrain did not "
                               "write them (never a folder)."),
) -> None:
    """List the model zoo: params, params counting BN statistics, FLOPs at 32x32, and with --measure
    training/inference imgs/sec (bf16, channels_last, compiled where faster) against eager fp32."""
    from . import zoo_cmd

    from .outputs import claim, write_json, write_markdown

    stdout = _json_stdout() if json_out else None
    log = (lambda s: typer.echo(s, err=True)) if measure else (lambda s: None)
    out_target = claim(out, option="--out", force=force) if out is not None else None
    markdown_target = claim(markdown, option="--markdown", force=force) if markdown is not None else None
    try:
        names = zoo_cmd.select(models)
        rows = zoo_cmd.zoo_rows(names, measure, device, batch_size, steps, warmup, compile, baseline, log)
    except (KeyError, ValueError, RuntimeError) as e:  # unknown model/family, unusable --device
        _fail(str(e.args[0]))
    note = ""
    if measure:
        note = (f"Measured on {zoo_cmd.device_description(device)}, batch {batch_size}, 32x32 random inputs, "
                f"{steps} timed steps after {warmup} warm-up steps, torch {__import__('torch').__version__}.")
    payload = {"note": note, "rows": [zoo_cmd.row_dict(r) for r in rows]}
    if out_target is not None:
        write_json(out_target, payload)
    if markdown_target is not None:
        write_markdown(markdown_target, zoo_cmd.zoo_doc(rows, note))
    if stdout is not None:
        _emit_json(stdout, payload)
    else:  # a table for people (the Markdown page is --markdown's)
        from .tables import print_table

        head, cells = zoo_cmd.table_cells(rows)
        print_table(note or f"{count(len(rows), 'model')} (`fasttrain run MODEL`; --measure times them)", head,
                    cells, right=[h for h in head if h not in ("model", "family", "compiled")])


# ============================================================================ eval, predict, report
EVAL_OUTPUTS = ("metrics.json", "confusion.json", "confusion.png")  # what eval --out writes


@app.command("eval")
def eval_cmd(
    target: Path = typer.Argument(..., metavar="RUN_DIR_OR_CHECKPOINT",
                                  help="A run directory, or a checkpoint file (RUN_DIR/checkpoint.pt or best.pt)."),
    data: Optional[Path] = typer.Option(None, help="Converted dataset with the checkpoint's classes "
                                                          "[default: the run's own, from its config]."),
    checkpoint: Optional[str] = typer.Option(None, help="With a RUN_DIR: best (best.pt, selected on the val split) "
                                             "| last (checkpoint.pt) [default: best where the run made one, as "
                                             "its test accuracy was, else last]."),
    split: str = typer.Option("test", help="Split to evaluate: test | train (| val where the dataset has one)."),
    tta: Optional[str] = typer.Option(None, help="none | flip | flip_translate [default: the run's "
                                                        "own, as in its reported test accuracy]."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    batch_size: int = typer.Option(500, help="Evaluation batch size (>= 1)."),
    subset: Optional[int] = typer.Option(None, help="Evaluate on this many images of the split, drawn as run's "
                                         "--test-subset draws them (stratified, the run's seed) [default: all]."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the checkpoint has them."),
    out: Optional[Path] = typer.Option(None, help="Write metrics.json, confusion.json and confusion.png into "
                                       "this folder (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Replace those three files in --out even if fasttrain did "
                               "not write them."),
    json_out: bool = typer.Option(False, "--json", help="Print all metrics as one JSON document on stdout."),
) -> None:
    """Loss, top-1/top-5, macro precision/recall/F1, per-class accuracy and the confusion matrix of a
    checkpoint on a split."""
    from .inference import checkpoint_path, evaluate_checkpoint
    from .outputs import claim_in_folder

    stdout = _json_stdout() if json_out else None
    if batch_size < 1:
        _fail(f"--batch-size: must be >= 1, got {batch_size}")
    if split not in EVAL_SPLITS:
        _fail(f"--split: must be one of {' | '.join(EVAL_SPLITS)}, got {split!r}{did_you_mean(split, EVAL_SPLITS)}")
    if tta is not None and tta not in TTA_MODES:
        _fail(f"--tta: must be one of {' | '.join(TTA_MODES)}, got {tta!r}{did_you_mean(tta, TTA_MODES)}")
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        _fail(f"--checkpoint: must be best or last, got {checkpoint!r}")
    targets = claim_in_folder(out, EVAL_OUTPUTS, option="--out", force=force) if out is not None else None
    try:
        path = checkpoint_path(target, checkpoint)
        m = evaluate_checkpoint(path, data, split=split, tta=tta, device=device, batch_size=batch_size, use_ema=ema,
                                subset=subset)
    except (FileNotFoundError, ValueError) as e:  # what inference.py raises about the user's files and options
        _fail(str(e))
    if targets is not None:
        from .outputs import write_json
        from .plots import plot_confusion

        write_json(targets["metrics.json"], {k: v for k, v in m.items() if k != "confusion"})
        write_json(targets["confusion.json"], {"classes": m["classes"], "matrix": m["confusion"]})
        plot_confusion(m["confusion"], m["classes"], targets["confusion.png"],
                       title=f"{path}: {split} (acc {100 * m['acc']:.2f}%)")
    if stdout is not None:
        _emit_json(stdout, m)
        return
    typer.echo(f"{path} on {m['data']} [{split}, {m['samples']} images, tta {m['tta']}, {m['weights']} weights]")
    for key in ("loss", "acc", "top5", "precision", "recall", "f1"):
        value = m[key]
        typer.echo(f"  {key:<10} {value:.4f}" if key == "loss" else f"  {key:<10} {100 * value:.2f}%")
    worst = sorted(zip(m["per_class_acc"], m["classes"]))[:5]
    typer.echo("  weakest classes: " + ", ".join(f"{c} {100 * a:.1f}%" for a, c in worst))


@app.command()
def predict(
    checkpoint: Path = typer.Argument(..., help="A run directory (its best.pt where it wrote one, else "
                                      "checkpoint.pt), or a checkpoint file.", metavar="RUN_OR_CHECKPOINT"),
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files (any size; resized as in `fasttrain convert`), or "
                                        "folders of them."),
    top_k: int = typer.Option(5, help="Classes to show per image."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    tta: str = typer.Option("none", help="none | flip | flip_translate"),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the checkpoint has them."),
    json_out: bool = typer.Option(False, "--json", help="Print the predictions as one JSON document on stdout."),
) -> None:
    """Top-k classes with probabilities for each image."""
    from .api import load, predict as predict_images  # the one prediction path (the Python API's)
    from .data.archive import IMAGE_SUFFIXES
    from .inference import checkpoint_path

    stdout = _json_stdout() if json_out else None
    if top_k < 1:
        _fail(f"--top-k: must be >= 1, got {top_k}")
    if tta not in TTA_MODES:
        _fail(f"--tta: must be one of {' | '.join(TTA_MODES)}, got {tta!r}{did_you_mean(tta, TTA_MODES)}")
    files: list[Path] = []
    for path in images:  # a folder stands for the image files directly inside it
        inside = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        if not inside:
            _fail(f"{path}: a folder without image files ({', '.join(sorted(IMAGE_SUFFIXES))}); pass image files "
                  f"or a folder holding them")
        files += inside
    try:
        classifier = load(checkpoint_path(checkpoint), device=device, use_ema=ema)
        found = predict_images(classifier, files, tta=tta)
    except (FileNotFoundError, TypeError, ValueError) as e:  # what the API says about the user's files
        _fail(str(e))
    values, indices = found.probs.topk(min(top_k, found.probs.shape[1]), dim=1)
    results = [{"image": str(f), "top": [(found.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]}
               for f, vs, ix in zip(files, values, indices)]
    if stdout is not None:
        _emit_json(stdout, results)
        return
    for r in results:
        typer.echo(r["image"])
        for cls, p in r["top"]:
            typer.echo(f"  {100 * p:6.2f}%  {cls}")


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="Run directories to compare (others are skipped with a warning)."),
    plot: Optional[Path] = typer.Option(None, help=f"Write an overlay plot of the runs' accuracy against epochs and "
                                        f"wall-clock time here ({', '.join('.' + f for f in PLOT_FORMATS)})."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table rows as JSON here."),
    force: bool = typer.Option(False, "--force", help="Replace --plot / --json files even if fasttrain did not "
                               "write them (never a folder)."),
) -> None:
    """Comparison table of runs (best test accuracy first) and, with --plot, their accuracy curves."""
    from .report import ReportError, report as do_report

    if plot is not None and plot.suffix.lower().lstrip(".") not in PLOT_FORMATS:
        _fail(f"--plot {plot}: the file name must end in {', '.join('.' + f for f in PLOT_FORMATS)} (the picture's "
              f"format), e.g. --plot report.png")
    try:
        do_report(run_dirs, plot, json_path=json_path, force=force,
                  warn=lambda s: typer.echo(f"warning: {s}", err=True))
    except ReportError as e:
        _fail(str(e))
    if plot is not None:
        typer.echo(f"wrote {plot}", err=True)


@app.command()
def verify(
    data: Path = typer.Argument(..., metavar="DATA", help="A converted dataset directory."),
    quick: bool = typer.Option(False, "--quick", help="Structure only (shapes, dtypes, sizes, labels); skip the "
                               "sha256 of every file."),
) -> None:
    """Check a converted dataset against its meta.json: shapes, dtypes, sizes, label range, statistics and
    (unless --quick) the sha256 of every file. Exit 0 with one OK line, or 2 with the reason."""
    from .data.errors import DatasetError
    from .data.verify import check_dataset

    try:
        meta = check_dataset(data, full=not quick)
    except DatasetError as e:
        _fail(str(e))
    counts = ", ".join(f"{k} {v['count']}" for k, v in meta["splits"].items())
    typer.echo(f"OK {data}: {meta.get('name')} ({meta.get('format', 'tensor')}; {counts}; {meta['num_classes']} "
               f"classes; {'structure' if quick else 'structure and sha256 of every file'} checked)")


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
    except (ExportError, FileNotFoundError, ValueError) as e:  # the user's files and options
        _fail(str(e))
    typer.echo(f"wrote {path}")


def _ignore_further_stop_signals() -> None:
    """The command is ending on a stop signal: another Ctrl-C must not kill it on the way out (Python puts
    back the default handler while it shuts down, which would end the process by the signal, not exit 130)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _interrupt(signum, frame) -> None:
    """Ctrl-C (outside a run's own stop handling): KeyboardInterrupt, and from that very instant further stop
    signals are ignored. Ignoring them only once main() caught the first left a window: a second Ctrl-C a
    fraction of a millisecond later was raised inside the clean-up (a convert's temp folder left behind) or
    out of main() itself (a traceback, then the process killed by the signal)."""
    global _interrupted
    _interrupted = True
    _ignore_further_stop_signals()
    raise KeyboardInterrupt


_interrupted = False  # a Ctrl-C arrived (set by _interrupt)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:  # `torchrun -m fasttrain -- run ...` (some Pythons keep the "--")
        args = args[1:]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when started with Ctrl-C ignored
        signal.signal(signal.SIGINT, _interrupt)
    try:
        app(args=unalias(args), prog_name="fasttrain")
    except KeyboardInterrupt:
        _ignore_further_stop_signals()
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if _interrupted:  # a library turned the Ctrl-C into its own error (numpy's save does): still a Ctrl-C
            typer.echo("interrupted", err=True)
            sys.exit(130)
        # user errors were answered by _Commands: this is a bug
        traceback.print_exc()
        typer.echo(f"error: fasttrain {__version__} failed unexpectedly ({type(e).__name__}); this is a bug: "
                   f"please report it with the command line and the traceback above", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
