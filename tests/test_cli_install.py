""".ci/install.sh keeps the console short: one line per step, apt's and pip's output in a log under the cache
directory, the log's path on failure, and the venv path as the last stdout line (the Makefile reads it).
Run against stand-ins for dpkg, apt-get and pip on PATH, so nothing is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "install.sh"
NOISE = "".join(f"Get:{i} http://deb.example bookworm/main package-{i}\\n" for i in range(900))


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture()
def sandbox(tmp_path):
    """A ready venv (marked complete) whose pip is a stand-in, and dpkg / apt-get / id stand-ins."""
    bin_dir, venv, cache = tmp_path / "bin", tmp_path / "venv", tmp_path / "cache"
    bin_dir.mkdir()
    (venv / "bin").mkdir(parents=True)
    (venv / ".complete").touch()
    fake(venv / "bin", "pip", f'printf "{NOISE}"; [[ -z "$PIP_FAILS" ]]')
    fake(bin_dir, "apt-get", f'printf "{NOISE}"')
    fake(bin_dir, "id", "echo 0")  # as root: no sudo
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FASTTRAIN_VENV=str(venv),
               FASTTRAIN_CACHE=str(cache))
    return bin_dir, venv, cache, env


def install(env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_installed_venv_is_reused_quietly(sandbox):
    bin_dir, venv, cache, env = sandbox
    fake(bin_dir, "dpkg", "exit 0")  # every apt package present
    proc = install(env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(venv)] and proc.stderr == ""
    assert "package-899" in (cache / "install.log").read_text()  # pip's output went to the log


def test_apt_output_goes_to_the_log_and_failures_name_it(sandbox):
    bin_dir, venv, cache, env = sandbox
    fake(bin_dir, "dpkg", "exit 1")  # nothing installed yet: the apt step runs
    proc = install(env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["[install] apt packages: pkg-config libturbojpeg0-dev libopencv-dev g++ "
                                        "ninja-build"]
    assert proc.stdout.splitlines()[-1] == str(venv)
    assert (cache / "install.log").read_text().count("package-") >= 1800  # apt-get and pip
    proc = install(dict(env, PIP_FAILS="1"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == (f"[install] failed: pip: fasttrain itself (editable); the full output "
                                            f"is in {cache / 'install.log'} (tail -n 50 {cache / 'install.log'})")
