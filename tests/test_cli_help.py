"""The command line's help and start-up, through the real entry point (`python -m fasttrain`): help, version and
option errors answer without importing torch or the model zoo; help reads at 80 columns (no flag cut, every
option of `run` in the panel docs/cli.md gives it, no internal options, no object reprs, no metavar on flags);
`-h` is `--help` everywhere; click's usage errors are the project's one `error:` line; `convert` never
imports torch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fasttrain.cli import app
from fasttrain.config import DEFAULT_RECIPES

REPO = Path(__file__).resolve().parents[1]
# A command that only prints help or the version must start this fast even on a loaded 2-core CI machine
# (idle it takes ~0.15 s; importing torch alone takes 1-4 s).
START_UP_S = 2.0
HEAVY = ("torch", "numpy", "fasttrain.models", "fasttrain.train", "fasttrain.data")


def fasttrain(*args: str, columns: int = 80, importtime: bool = False, cwd: Path | None = None):
    """`python -m fasttrain ARGS` in a fresh process at a terminal width; with importtime, stderr lists
    every module the process imported (python -X importtime)."""
    env = {**os.environ, "COLUMNS": str(columns)}
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "fasttrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def imported(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def sections(text: str) -> dict[str, list[str]]:
    """A plain help text as {section title: the flags of its options, in order}."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^\S.*:$", line) and not line.startswith("Usage:"):
            current = line[:-1]
            out[current] = []
        elif current is not None and re.match(r"^  -", line):
            out[current] += [f for f in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", line.split("  ")[1]) if f]
    return out


def documented_panels() -> dict[str, list[str]]:
    page = (REPO / "docs" / "cli.md").read_text()
    table = page.split("## `fasttrain run --help`: the panels", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): re.findall(r"`(--[\w-]+)`", m.group(2))
            for m in re.finditer(r"^\| ([^|`]+?) \| (.+) \|$", table, re.M) if m.group(1) != "panel"}


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["run", "--help"], ["run", "-h"],
                                  ["run", "airbench", "--help"], ["convert", "-h"], ["run", "--lr-rate", "1"]])
def test_help_version_and_option_errors_import_no_torch(args):
    res = fasttrain(*args, importtime=True)
    assert res.returncode in (0, 2), res.stderr[-2000:]
    heavy = sorted(m for m in imported(res.stderr) if m.startswith(HEAVY))
    assert not heavy, f"`fasttrain {' '.join(args)}` imported {heavy[:10]}"


def test_help_starts_fast():
    """Best of three, so one scheduling hiccup on a busy machine does not fail it."""
    for args in (["--help"], ["--version"], ["run", "--help"]):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            res = fasttrain(*args)
            times.append(time.perf_counter() - start)
            assert res.returncode == 0, res.stderr
        print(f"fasttrain {' '.join(args)}: best {min(times):.2f} s")
        assert min(times) < START_UP_S, (args, times)


def test_dash_h_is_help_everywhere():
    group = typer.main.get_command(app)
    runner = CliRunner()
    for name in [None, *group.commands]:
        args = [name] if name else []
        long = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
        short = runner.invoke(app, [*args, "-h"], env={"COLUMNS": "80"})
        assert long.exit_code == short.exit_code == 0, (name, short.output)
        assert short.output == long.output and short.output.startswith("Usage: "), name


def test_every_help_reads_at_80_columns():
    """No line wider than the terminal, no flag cut short, no object repr, no type metavar on a flag."""
    group = typer.main.get_command(app)
    for name in [None, *group.commands]:
        res = fasttrain(*([name] if name else []), "--help")
        assert res.returncode == 0, res.stderr
        wide = [line for line in res.stdout.splitlines() if len(line) > 80]
        assert not wide, (name, wide)
        assert "…" not in res.stdout and "object at 0x" not in res.stdout and "<bool>" not in res.stdout, name
        assert "╭" not in res.stdout, name  # plain text, not boxes that cut what does not fit
        if name is None:
            continue
        shown = {f for flags in sections(res.stdout).values() for f in flags}
        for param in group.commands[name].params:
            for flag in [*param.opts, *param.secondary_opts]:
                assert not flag.startswith("-") or flag in shown, (name, flag)


def test_run_help_panels_match_the_docs():
    res = fasttrain("run", "--help")
    shown = {panel: flags for panel, flags in sections(res.stdout).items() if panel not in ("arguments", "help")}
    first = {panel: [f for f in flags if not f.startswith("--no-")] for panel, flags in shown.items()}
    assert first == documented_panels()
    assert "--recipe" in first["what to train, on what"] and "--optimizer" in first["optimiser"]
    assert "--warmup-epochs" in first["learning-rate schedule, stepped per batch"]
    assert "--data-identity" not in res.stdout  # recorded by the run itself, not a user's option
    assert "[default: none]" in res.stdout.split("--milestones", 1)[1].split("\n  --", 1)[0]


def test_run_model_help_shows_its_recipe_without_the_model_zoo():
    model = "airbench"
    res = fasttrain("run", model, "--help", importtime=True)
    assert res.returncode == 0 and f"{model} gets recipe {DEFAULT_RECIPES[model]}" in " ".join(res.stdout.split())
    assert "torch" not in imported(res.stderr)


def test_models_with_a_recipe_exist():
    """`run MODEL --help` trusts the recipe table instead of asking the registry (which imports torch)."""
    from fasttrain.models import get_entry

    for model in DEFAULT_RECIPES:
        get_entry(model)


@pytest.mark.parametrize("args,words", [
    (["run", "resnet9", "--lr-rate", "1"], ["--lr-rate: no such option", "did you mean", "--lr", "fasttrain run --help"]),
    (["rnu"], ["'rnu': no such command", "did you mean run?"]),
    (["--bogus"], ["--bogus: no such option", "fasttrain --help"]),
    (["convert"], ["missing argument", "DATASET", "fasttrain convert --help"]),
    (["run", "resnet9", "--epochs", "abc"], ["--epochs", "number", "fasttrain run --help"]),
    (["eval", "-x"], ["-x: no such option"]),
])
def test_usage_errors_are_one_error_line(args, words):
    res = fasttrain(*args)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert not res.stdout and "Usage:" not in res.stderr and "╭" not in res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_convert_never_imports_torch(tmp_path):
    """A real image-folder conversion (photos from scikit-image) to the tensor and the jpeg formats."""
    import numpy as np
    from PIL import Image
    from skimage import data

    for i, photo in enumerate((data.astronaut(), data.coffee(), data.chelsea(), data.rocket()) * 2):
        folder = tmp_path / "src" / ("ab"[i % 2])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(photo)).resize((24, 24)).save(folder / f"{i}.jpg")
    for fmt, size in (("tensor", ["--size", "16"]), ("jpeg", [])):
        res = fasttrain("convert", "imagefolder", "--source", str(tmp_path / "src"), "--name", "t", "--out",
                        str(tmp_path / fmt), "--format", fmt, *size, importtime=True)
        assert res.returncode == 0, res.stderr[-2000:]
        assert (tmp_path / fmt / "meta.json").is_file()
        torch_side = sorted(m for m in imported(res.stderr) if m == "torch" or m.startswith(("fasttrain.models",)))
        assert not torch_side, (fmt, torch_side)
