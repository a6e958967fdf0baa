"""`fasttrain run`'s options, generated from RunConfig, and the help that shows them.

One option per RunConfig field (the field's comment is the help, its `# --- ` section the help panel, the
option name the field name), plus the model and retrieval options of choices.py, so the command line is not a
second schema. This module turns the fields into typer parameters, the parsed options back into RunConfig
overrides, and formats `fasttrain run --help` in plain text, grouped by panel and readable at 80 columns.

It imports only the settings layer (config, choices): `fasttrain --help` and `fasttrain run --help` must not
load torch or the model zoo; `run MODEL --help` asks the model registry only for a model without a recipe.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core

try:  # typer 0.2x carries its own copy of click: its commands raise that copy's exceptions
    from typer._click import exceptions as click_errors
except ImportError:
    from click import exceptions as click_errors

from .choices import MODEL_OPTIONS, RETRIEVAL_OPTIONS, did_you_mean
from .config import (DEFAULT_RECIPES, FIELD_CHOICES, FIELD_TYPES, FIELDS, RECIPES, ConfigError, RunConfig,
                     default_recipe, field_help, parse_value, recipe_name)
from .words import count

# Earlier option spellings, still accepted: the one rename table.
OPTION_ALIASES = {"--min-lr-frac": "--end-lr-frac", "--attention-placement": "--placement"}
# Fields without an option: the MODEL argument; dicts filled by the options below; what the run records itself.
NOT_OPTIONS = ("model", "model_kwargs", "retrieval", "data_identity")
LIST_FIELDS = ("betas", "milestones", "color_jitter")  # given as comma-separated numbers, parsed by the field's type
HELP_OPTIONS = ("-h", "--help")  # every command's help
HELP = field_help()
CONFIG_PANEL, MODEL_PANEL = "config files and output", "model options"
RETRIEVAL_PANEL = HELP["task"][1]  # beside --task

RUN_HELP = (
    "Train MODEL; writes config, metrics, checkpoint, plots and a summary into the run directory.\n\n"
    "Settings resolve in this order, later winning: RunConfig defaults < the recipe (--recipe, else the model's "
    "own) < --config FILE < --set FIELD=VALUE and the options below. `fasttrain run MODEL --help` shows the "
    "defaults MODEL gets; --print-config prints the resolved settings (loadable with --config) and exits."
)


def unalias(args: list[str]) -> list[str]:
    """Command-line arguments with earlier option spellings replaced by today's."""
    out = []
    for arg in args:
        opt, eq, value = arg.partition("=")
        out.append(OPTION_ALIASES.get(opt, opt) + eq + value if opt in OPTION_ALIASES else arg)
    return out


def show(value: Any) -> str:
    """A setting's value as a person writes it on the command line (true, 0.4, 0.9,0.99, none)."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value) or "none"
    return str(value)


def _option_help(text: str, default: Any = None, origin: str = "", choices: tuple[str, ...] = ()) -> str:
    """Help text with its choices and default."""
    if choices and not all(c in text for c in choices):
        text = f"{text}: {' | '.join(choices)}" if text else " | ".join(choices)
    if default is None and "default" in text:
        return text  # the text says what happens when it is not set
    shown = f" [default: {show(default)}{f' from {origin}' if origin else ''}]"
    return text + shown if text else shown.strip()


def _field_default(name: str) -> Any:
    field = FIELDS[name]
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _field_option(name: str) -> inspect.Parameter:
    tp = FIELD_TYPES[name]
    if name in LIST_FIELDS:
        base = str  # parsed by the field's type
    else:
        base = tp if tp in (bool, int, float, str) else next(a for a in tp.__args__ if a is not type(None))
    flag = "--" + name.replace("_", "-")
    decls = [f"{flag}/--no-{name.replace('_', '-')}"] if base is bool else [flag]  # bool and bool | None
    text, section = HELP.get(name, ("", "settings"))
    metavar = "N,N" if name in LIST_FIELDS else None
    option = typer.Option(None, *decls, help=_option_help(text, _field_default(name), "", FIELD_CHOICES.get(name, ())),
                          rich_help_panel=section, show_default=False, metavar=metavar)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[base])


def _extra_option(name: str, tp: type, text: str, panel: str) -> inspect.Parameter:
    flag = "--" + name.replace("_", "-")
    decl = f"{flag}/--no-{flag[2:]}" if tp is bool else flag  # a bool is a flag: --pretrained
    option = typer.Option(None, decl, help=text, rich_help_panel=panel, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[tp])


class RunCommand(typer.core.TyperCommand):
    """`run --help` in plain text, one section per panel; `run MODEL --help` shows the defaults MODEL (or
    --recipe) actually gets."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if any(a in HELP_OPTIONS for a in args):
            self._show_defaults_for(*_peek_model_and_recipe(self, args))
        return super().parse_args(ctx, args)

    def format_options(self, ctx: typer.Context, formatter: Any) -> None:
        """The options in their panels (the `# --- ` sections of RunConfig, in its order), each a plain
        definition list: long flags get their own line instead of being cut."""
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            panel = "arguments" if param.param_type_name == "argument" else getattr(param, "rich_help_panel", None)
            panels.setdefault(panel or "help", []).append(record)
        for panel, records in panels.items():
            with formatter.section(panel):
                formatter.write_dl(records)

    def _show_defaults_for(self, model: str | None, recipe: str | None) -> None:
        try:
            name = recipe_name(recipe) if recipe else (default_recipe(model) if model else None)
        except ConfigError:
            name = None
        values = RECIPES.get(name, {}) if name else {}
        for param in self.params:
            if not isinstance(param, typer.core.TyperOption) or param.name not in FIELDS and param.name not in MODEL_OPTIONS:
                continue
            if param.name in MODEL_OPTIONS:
                kwargs = values.get("model_kwargs", {})
                if param.name not in kwargs:
                    continue  # the model's own default, as the static help says
                default, origin, text = kwargs[param.name], name, MODEL_OPTIONS[param.name][1]
            elif param.name == "recipe":
                default, origin, text = name, "", HELP["recipe"][0]
            else:
                default = values.get(param.name, _field_default(param.name))
                origin = name if param.name in values else ""
                text = HELP[param.name][0]
            param.help = _option_help(text, default, origin, FIELD_CHOICES.get(param.name, ()))
        problem = _model_problem(model) if model else None
        if problem:
            note = problem
        elif model and name:
            note = f"{model} gets recipe {name} (`fasttrain recipes {name}`); the defaults below are its values."
        elif model:
            d = {k: FIELDS[k].default for k in ("optimizer", "lr", "batch_size", "schedule", "epochs")}
            note = (f"{model} has no recipe of its own: it gets the RunConfig defaults shown below "
                    f"({d['optimizer']} lr {d['lr']}, batch {d['batch_size']}, {d['schedule']}, "
                    f"{count(d['epochs'], 'epoch')}) unless you pass --recipe or options.")
        else:
            note = ""
        self.help = RUN_HELP + (f"\n\n{note}" if note else "")


def _model_problem(model: str) -> str | None:
    """Why the registry cannot build `model` (a zoo name, timm/<name>, path/file.py:Class, an installed
    package's model), or None when it can. A model with a recipe of its own is a zoo model (a test keeps the
    recipe table and the registry in step), so its help needs no registry: that would import torch."""
    if model in DEFAULT_RECIPES:
        return None
    from .models import ModelError, get_entry

    try:
        get_entry(model)
    except ModelError as e:
        return str(e)
    return None


def _peek_model_and_recipe(cmd: typer.core.TyperCommand, args: list[str]) -> tuple[str | None, str | None]:
    """MODEL and --recipe from raw arguments (before click parses them, for --help)."""
    takes_value = {o for p in cmd.params if isinstance(p, typer.core.TyperOption) and not p.is_flag for o in p.opts}
    model = recipe = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-"):
            opt, eq, value = arg.partition("=")
            if opt in takes_value and not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            if opt == "--recipe":
                recipe = value
        elif model is None:
            model = arg
        i += 1
    return model, recipe


def _parse_set(text: str) -> tuple[str, Any]:
    """`--set field=value` (typed by the field) or `--set model_kwargs.key=value` / `retrieval.key=value`
    (a JSON value, or else a string)."""
    key, eq, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not eq or not key:
        raise ConfigError(f"--set {text!r}: expected FIELD=VALUE, e.g. --set lookahead=true")
    field, dot, sub = key.partition(".")
    if dot:
        if field not in ("model_kwargs", "retrieval"):
            raise ConfigError(f"--set {text!r}: only model_kwargs.KEY and retrieval.KEY take a dotted name")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        return field, {sub: parsed}
    if field not in FIELDS:
        raise ConfigError(f"--set {text!r}: unknown setting {field!r}{did_you_mean(field, FIELDS)}")
    return field, parse_value(field, value, source=f"--set {field}")


def overrides(settings: list[str] | None, options: dict[str, Any]) -> dict[str, Any]:
    """RunConfig overrides from --set and the options given (None = not given); options win over --set."""
    out: dict[str, Any] = {}
    for text in settings or []:
        key, value = _parse_set(text)
        out[key] = {**out.get(key, {}), **value} if key in ("model_kwargs", "retrieval") else value
    for name, value in options.items():
        if value is None:
            continue
        if name in FIELDS:
            out[name] = parse_value(name, value) if name in LIST_FIELDS else value
        else:
            group = "model_kwargs" if name in MODEL_OPTIONS else "retrieval"
            out[group] = {**out.get(group, {}), name: value}
    return out


def make_run_command(run: Callable[..., None]) -> Callable[..., None]:
    """A function calling `run(ctx, model, config, settings, print_config, json_out, resume, **options)`
    whose signature has one keyword option per RunConfig field (and per model / retrieval option): what
    typer reads to build the command."""
    fixed = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[str],
                          default=typer.Argument(None, metavar="MODEL", help="Model name (`fasttrain zoo` lists them); omit with "
                                                            "--resume or when --config names one.", show_default=False)),
        inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                          default=typer.Option(None, "--config", metavar="FILE", rich_help_panel=CONFIG_PANEL,
                                               help="Settings from a YAML, TOML or JSON file (e.g. from "
                                                    "--print-config or a run's config.json).")),
        inspect.Parameter("settings", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[list[str]],
                          default=typer.Option(None, "--set", metavar="FIELD=VALUE", rich_help_panel=CONFIG_PANEL,
                                               help="Set any setting by its field name, typed by the field "
                                                    "(repeatable), e.g. --set lookahead=true --set betas=0.9,0.99 "
                                                    "--set model_kwargs.width=0.5.")),
        inspect.Parameter("print_config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=bool,
                          default=typer.Option(False, "--print-config", rich_help_panel=CONFIG_PANEL,
                                               help="Print the resolved settings as JSON (loadable with --config) "
                                                    "and exit without training.")),
        inspect.Parameter("json_out", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=bool,
                          default=typer.Option(False, "--json", rich_help_panel=CONFIG_PANEL,
                                               help="Print the summary as one JSON document on stdout; logs go "
                                                    "to stderr.")),
        inspect.Parameter("resume", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Optional[Path],
                          default=typer.Option(None, metavar="RUN_DIR", rich_help_panel=CONFIG_PANEL,
                                               help="Continue the run in RUN_DIR from its last checkpoint, with "
                                                    "its saved config (give no other settings).")),
    ]
    fields = [_field_option(f.name) for f in dataclasses.fields(RunConfig) if f.name not in NOT_OPTIONS]
    model = [_extra_option(k, tp, f"{text} [default: the model's own]", MODEL_PANEL)
             for k, (tp, text) in MODEL_OPTIONS.items()]
    retrieval = [_extra_option(k, tp, text, RETRIEVAL_PANEL) for k, (tp, text) in RETRIEVAL_OPTIONS.items()]
    first = sum(1 for f in fields if f.default.rich_help_panel == fields[0].default.rich_help_panel)
    params = fixed + fields[:first] + model + fields[first:] + retrieval  # the model's options after what to train
    names = [p.name for p in params]
    assert len(names) == len(set(names)), "a model or retrieval option shadows a RunConfig field"

    def command(*args: Any, **kwargs: Any) -> None:
        run(**dict(zip(names, args), **kwargs))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = RUN_HELP
    return command


def usage_error_line(e: click_errors.UsageError) -> str:
    """Click's own usage errors (unknown option or command, missing argument, a value of the wrong type) as
    the text of the project's one `error:` line, with the did-you-mean and where the options are listed."""
    ctx = e.ctx
    where = f"`{ctx.command_path} --help`" if ctx is not None else "`fasttrain --help`"
    if isinstance(e, click_errors.NoSuchOption):
        return (f"{e.option_name}: no such option{did_you_mean(e.option_name, e.possibilities or ())} "
                f"({where} lists them)")
    if ctx is not None and hasattr(ctx.command, "list_commands") and e.message.startswith("No such command"):
        word = e.message.split("'")[1] if e.message.count("'") >= 2 else ""
        known = sorted(ctx.command.list_commands(ctx))
        return f"{word!r}: no such command{did_you_mean(word, known)} (known: {', '.join(known)})"
    message = e.format_message().strip().rstrip(".")
    return f"{message[:1].lower() + message[1:]} (see {where})"
