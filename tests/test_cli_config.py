"""One schema: `fasttrain run` options are RunConfig's fields; config files, --set, --print-config and their
precedence; help that shows defaults; recipes, --version; choices written once."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import fasttrain
from fasttrain import choices
from fasttrain.cli import app
from fasttrain.cli_options import NOT_OPTIONS, OPTION_ALIASES, unalias
from fasttrain.config import RECIPES, RunConfig

PKG = Path(fasttrain.__file__).parent


def invoke(*args, **kw):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"}, **kw)


def printed_config(*args) -> dict:
    res = invoke("run", *args, "--print-config")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)  # stdout holds the config alone


# ------------------------------------------------------------------------------------------ one schema
def test_every_field_is_an_option_of_the_same_name():
    run = typer.main.get_command(app).commands["run"]
    options = {p.name: p for p in run.params}
    for f in dataclasses.fields(RunConfig):
        if f.name in NOT_OPTIONS:
            continue
        assert f.name in options, f"RunConfig.{f.name} has no option"
        assert "--" + f.name.replace("_", "-") in options[f.name].opts
        assert options[f.name].help, f"--{f.name} has no help"
    # fields that were recipe-only have options now; the lr floor is spelled like its field
    assert printed_config("resnet9", "--end-lr-frac", "0.05", "--lookahead", "--crop-pad", "2", "--pad-mode", "zero",
                          "--no-flip", "--warmup-frac", "0.1", "--betas", "0.8,0.9", "--min-delta", "0.01",
                          "--patchup-block", "5", "--muon-momentum", "0.9") == {
        **printed_config("resnet9"), "end_lr_frac": 0.05, "lookahead": True, "crop_pad": 2, "pad_mode": "zero",
        "flip": False, "warmup_frac": 0.1, "betas": [0.8, 0.9], "min_delta": 0.01, "patchup_block": 5,
        "muon_momentum": 0.9}
    assert unalias(["--min-lr-frac", "0.1", "--attention-placement=parallel"]) == \
        ["--end-lr-frac", "0.1", "--placement=parallel"]
    assert set(OPTION_ALIASES.values()) <= {o for p in run.params for o in getattr(p, "opts", [])}


def test_set_reaches_any_field_typed_by_the_field():
    cfg = printed_config("resnet9", "--set", "lookahead=yes", "--set", "betas=0.8,0.95", "--set", "clip_grad=none",
                         "--set", "model_kwargs.width=0.5", "--set", "ema_decay=0.99", "--set", "milestones=[3, 6]",
                         "--set", "epochs=2", "--epochs", "3")  # an option wins over --set
    assert cfg["lookahead"] is True and cfg["betas"] == [0.8, 0.95] and cfg["clip_grad"] is None
    assert cfg["model_kwargs"] == {"width": 0.5} and cfg["ema_decay"] == 0.99 and cfg["milestones"] == [3.0, 6.0]
    assert cfg["epochs"] == 3


def test_config_files_load_back_and_precedence(tmp_path):
    base = printed_config("airbench", "--recipe", "cpu-quick", "--lr", "0.7", "--width", "0.25")
    assert base["lr"] == 0.7 and base["model_kwargs"] == {"width": 0.25} and base["recipe"] == "cpu-quick"
    for name in ("run.json", "run.yaml"):  # JSON is YAML too: --print-config output loads as either
        (tmp_path / name).write_text(json.dumps(base))
        assert printed_config("--config", tmp_path / name) == base
    # a run's config.json (written by RunConfig.save) loads back as is, tuples included
    cfg = RunConfig.from_dict({k: v for k, v in base.items()})
    cfg.save(tmp_path / "config.json")
    assert printed_config("--config", tmp_path / "config.json") == base
    # precedence: defaults < recipe < file < options
    (tmp_path / "run.toml").write_text('model = "resnet9"\nepochs = 3\nlr = 0.1\n[model_kwargs]\nwidth = 0.5\n')
    cfg = printed_config("--config", tmp_path / "run.toml", "--lr", "0.2")
    assert (cfg["model"], cfg["recipe"], cfg["epochs"], cfg["lr"]) == ("resnet9", "myrtle24", 3, 0.2)
    assert cfg["label_smoothing"] == RECIPES["myrtle24"]["label_smoothing"]  # the recipe's value
    assert cfg["nesterov"] == RunConfig().nesterov and cfg["model_kwargs"] == {"width": 0.5}
    (tmp_path / "bad.yaml").write_text("lrr: 0.1\n")
    res = invoke("run", "resnet9", "--config", tmp_path / "bad.yaml")
    assert res.exit_code == 2 and "did you mean lr" in res.stderr and str(tmp_path / "bad.yaml") in res.stderr


# ------------------------------------------------------------------------------------------ help
def test_run_help_shows_defaults_per_model_and_recipe():
    plain = invoke("run", "--help").stdout
    assert "[default: 0.4]" in plain and "[default: onecycle]" in plain  # not eaten as rich markup
    assert "defaults < the recipe" in " ".join(plain.split()) or "RunConfig defaults <" in plain
    airbench = invoke("run", "airbench", "--help").stdout
    assert "airbench gets recipe airbench94" in airbench and "[default: 1.5 from airbench94]" in airbench
    assert "[default: airbench94]" in airbench and "[default: the model's own]" in airbench  # --recipe, --width
    quick = invoke("run", "airbench", "--recipe", "cpu-quick", "--help").stdout
    assert "[default: 0.5 from cpu-quick]" in quick  # --width, from the recipe's model_kwargs
    bare = invoke("run", "resnet18", "--help").stdout
    assert "resnet18 has no recipe of its own" in " ".join(bare.split()) and "recipe None" not in bare
    assert "did you mean resnet9" in invoke("run", "resnet_9", "--help").stdout
    both = invoke("run", "resnet9", "--print-config", "--json")  # still one JSON document on stdout
    assert both.exit_code == 0 and json.loads(both.stdout)["recipe"] == "myrtle24"


def test_recipes_command_and_version():
    table = invoke("recipes")
    assert table.exit_code == 0 and "cifar10-resnet9-adam" in table.stdout and "myrtle24" in table.stdout
    rows = json.loads(invoke("recipes", "--json").stdout)
    assert {r["recipe"] for r in rows} == set(RECIPES)
    one = json.loads(invoke("recipes", "seed001", "--json").stdout)  # an earlier name still answers
    assert one["recipe"] == "cifar10-resnet9-adam" and one["settings"]["optimizer"] == "adam"
    shown = invoke("recipes", "airbench94").stdout
    assert "lookahead" in shown and "default recipe of: airbench" in shown
    assert invoke("--version").stdout.strip() == f"fasttrain {fasttrain.__version__}"
    assert not any("seed0" in name for name in RECIPES)  # named for what they are


# ------------------------------------------------------------------------------------------ choices
def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
        elif isinstance(node, ast.Import):
            out += [(0, a.name) for a in node.names]
    return out


def test_choices_live_once_and_config_sits_low():
    assert all(level == 0 and not mod.startswith("fasttrain") for level, mod in _imports(PKG / "choices.py"))
    config_imports = {mod for level, mod in _imports(PKG / "config.py") if level}
    # no optim, monitor, regularizers, retrieval, models; recipes.py is plain data
    assert config_imports == {"choices", "recipes"}, config_imports
    from fasttrain import evaluate, optim, regularizers
    from fasttrain.pipelines import PIPELINES

    assert optim.OPTIMIZERS is choices.OPTIMIZERS and optim.SCHEDULES is choices.SCHEDULES
    assert evaluate.TTA_MODES is choices.TTA_MODES and regularizers.PATCHUP_MODES is choices.PATCHUP_MODES
    assert PIPELINES is choices.PIPELINE_SPECS and choices.PIPELINES == tuple(PIPELINES)  # one table
    assert choices.amp_name("torch.bfloat16") == "bf16" and choices.amp_name(None) == "off"
    # each recipe is defined once
    keys = [n.slice.value for n in ast.walk(ast.parse((PKG / "config.py").read_text()))
            if isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Store)
            and getattr(n.value, "id", "") == "RECIPES" and isinstance(n.slice, ast.Constant)]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:12", "cpu", "auto"])
def test_device_names(name):
    assert choices.is_device(name)
    assert not choices.is_device(name + "X")
