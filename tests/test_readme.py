"""Every `fasttrain` command in the README names a real command and real options (so the README cannot rot
when an option is renamed), and the cheap ones run as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fasttrain.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"
runner = CliRunner()


def readme_commands() -> list[list[str]]:
    """The `fasttrain ...` command lines of the README's bash blocks, as argument lists (comments, shell
    redirections, the brackets around `[optional parts]` and `$variables` removed; `;`-joined commands split)."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].split(" # ")[0]
            for part in line.split(";"):
                part = part.replace("[", " ").replace("]", " ").split(">")[0].strip()
                if part.startswith("fasttrain "):
                    out.append([w for w in shlex.split(part)[1:] if not w.startswith("$")])
    return out


COMMANDS = readme_commands()


def _options_of(argv: list[str]) -> tuple[list[str], str]:
    """(the --options on the line, the subcommand)."""
    sub = next((w for w in argv if not w.startswith("-")), "")
    return [w.split("=")[0] for w in argv if w.startswith("--")], sub


def test_the_readme_has_commands():
    assert len(COMMANDS) >= 20, COMMANDS


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_every_readme_command_names_real_options(argv):
    options, sub = _options_of(argv)
    options = [o for o in options if o not in ("--help", "--version")]  # every command has those
    if not options:
        return
    help_args = [sub, "--help"]
    if sub == "run":  # run's --help lists the options of the model named on the line (or every option)
        model = argv[1] if len(argv) > 1 and not argv[1].startswith("-") and argv[1] != "MODEL" else None
        help_args = ["run", *([model] if model else []), "--help"]
    res = runner.invoke(app, help_args, terminal_width=400)
    assert res.exit_code == 0, (help_args, res.output)
    text = res.output
    for opt in options:
        assert re.search(re.escape(opt) + r"\b", text), f"README: `fasttrain {' '.join(argv)}`: {opt} is not an " \
                                                         f"option of `fasttrain {sub}`"


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["recipes"], ["recipes", "myrtle24"],
                                  ["run", "resnet9", "--help"]])
def test_cheap_readme_commands_run_as_written(argv):
    proc = subprocess.run([sys.executable, "-m", "fasttrain", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_print_config_then_config_file_round_trip(tmp_path):
    """README: `fasttrain run resnet9 --print-config > run.yaml`, then `fasttrain run --config run.yaml ...`."""
    first = subprocess.run([sys.executable, "-m", "fasttrain", "run", "resnet9", "--print-config"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "run.yaml").write_text(first.stdout)
    again = subprocess.run([sys.executable, "-m", "fasttrain", "run", "--config", "run.yaml", "--set",
                            "lookahead=true", "--print-config"], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert '"lookahead": true' in again.stdout and '"model": "resnet9"' in again.stdout
