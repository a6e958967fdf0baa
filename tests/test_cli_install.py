""".ci/install.sh keeps the console short: one line per step, apt's and pip's output in a log under the cache
directory, the log's path on failure, and the checkout's venv path as the last stdout line (the Makefile reads
it). Run on a copy of the script in a scratch checkout, against stand-ins for dpkg, apt-get and pip on PATH, so
nothing is installed. And two clones of the repository, installed one after the other over one shared venv,
each run their own code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "install.sh"
NOISE = "".join(f"Get:{i} http://deb.example bookworm/main package-{i}\\n" for i in range(900))


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


@pytest.fixture()
def sandbox(tmp_path):
    """A scratch checkout holding a copy of .ci/, a ready shared venv (marked complete) whose pip is a
    stand-in, and dpkg / apt-get / id stand-ins."""
    bin_dir, venv, cache, checkout = tmp_path / "bin", tmp_path / "venv", tmp_path / "cache", tmp_path / "checkout"
    bin_dir.mkdir()
    shutil.copytree(REPO / ".ci", checkout / ".ci")
    (venv / "bin").mkdir(parents=True)
    (venv / ".complete").touch()
    fake(venv / "bin", "pip", f'printf "{NOISE}"; [[ -z "$PIP_FAILS" ]]')
    fake(bin_dir, "apt-get", f'printf "{NOISE}"')
    fake(bin_dir, "id", "echo 0")  # as root: no sudo
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FASTTRAIN_VENV=str(venv),
               FASTTRAIN_CACHE=str(cache), SCRIPT=str(checkout / ".ci" / "install.sh"))
    return bin_dir, venv, cache, env


def install(env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", env.get("SCRIPT", str(SCRIPT))], capture_output=True, text=True, env=env,
                          timeout=120)


def apt_packages() -> str:
    return re.search(r"^apt_packages=\((.*)\)$", SCRIPT.read_text(), re.M).group(1)


def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_installed_venv_is_reused_quietly(sandbox):
    bin_dir, venv, cache, env = sandbox
    fake(bin_dir, "dpkg", "exit 0")  # every apt package present
    proc = install(env)
    assert proc.returncode == 0, proc.stderr
    (checkout_venv,) = proc.stdout.splitlines()
    assert proc.stderr == "" and Path(checkout_venv).parent == cache / "checkouts"
    assert (Path(checkout_venv) / "bin" / "fasttrain").is_file()
    # an older install left fasttrain in the shared venv: removed once, pip's output in the log
    pth = next(Path(checkout_venv).glob("lib/python3*/site-packages/fasttrain-checkout.pth"))
    site = Path(re.search(r"addsitedir\('(.*)'\)", pth.read_text()).group(1))
    (site / "fasttrain-0.1.0.dist-info").mkdir(parents=True)
    proc = install(env)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [checkout_venv] and proc.stderr == ""
    assert "package-899" in (cache / "install.log").read_text()  # pip's output went to the log


def test_apt_output_goes_to_the_log_and_failures_name_it(sandbox):
    bin_dir, venv, cache, env = sandbox
    fake(bin_dir, "dpkg", "exit 1")  # nothing installed yet: the apt step runs
    proc = install(env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"[install] apt packages: {apt_packages()}"]
    assert proc.stdout.splitlines()[-1].startswith(str(cache / "checkouts"))
    assert (cache / "install.log").read_text().count("package-") >= 900  # apt-get's
    pth = next((cache / "checkouts").glob("*/lib/python3*/site-packages/fasttrain-checkout.pth"))
    site = Path(re.search(r"addsitedir\('(.*)'\)", pth.read_text()).group(1))
    (site / "fasttrain-0.1.0.dist-info").mkdir(parents=True)  # pip's uninstall of an older install will run
    proc = install(dict(env, PIP_FAILS="1"))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == (
        f"[install] failed: pip: removing fasttrain from the shared venv (each checkout has its own venv now); the "
        f"full output is in {cache / 'install.log'} (tail -n 50 {cache / 'install.log'})")


@pytest.mark.slow
def test_two_clones_each_run_their_own_code(tmp_path):
    """Two clones installed one after the other over one shared venv: each one's venv, its `fasttrain`
    command and its Python run that clone's code, whichever installed last (an editable install into the
    shared venv made both run the last one's)."""
    import typer

    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the repository's git history and git (the test clones it)")
    shared = tmp_path / "shared"  # a complete shared venv: this test's own packages, reached through a .pth
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(shared)], check=True)
    (site,) = shared.glob("lib/python3*/site-packages")
    (site / "packages.pth").write_text(f"import site; site.addsitedir({str(Path(typer.__file__).parents[1])!r})\n")
    (shared / ".complete").touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "dpkg", "exit 0")  # every apt package present
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}  # nothing but the venv
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FASTTRAIN_VENV=str(shared), FASTTRAIN_CACHE=str(tmp_path / "cache"))
    clones = {}
    for name in ("a", "b"):
        clone = tmp_path / name
        subprocess.run(["git", "clone", "-q", "--local", str(REPO), str(clone)], check=True)
        shutil.copy2(SCRIPT, clone / ".ci" / "install.sh")  # the script under test, committed or not
        clones[name] = clone
    init = clones["b"] / "fasttrain" / "__init__.py"
    init.write_text(re.sub(r'(?m)^__version__ = ".*"$', '__version__ = "0.0.0+clone-b"', init.read_text()))

    venvs = {}
    for name in ("a", "b", "a"):  # a, then b, then a again: the last install must not decide
        proc = subprocess.run(["bash", str(clones[name] / ".ci" / "install.sh")], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        venvs[name] = Path(proc.stdout.splitlines()[-1])
    assert venvs["a"] != venvs["b"]
    for name, clone in clones.items():
        for cmd in ([venvs[name] / "bin" / "fasttrain", "--version"],
                    [venvs[name] / "bin" / "python", "-c", "import fasttrain; print(fasttrain.__version__)"]):
            proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=tmp_path,
                                  timeout=120)
            assert proc.returncode == 0, proc.stderr
            assert ("clone-b" in proc.stdout) == (name == "b"), (name, cmd, proc.stdout)
        proc = subprocess.run([str(venvs[name] / "bin" / "python"), "-c", "import fasttrain.pipelines as p; "
                               "print(p.__file__)"], capture_output=True, text=True, env=env, cwd=tmp_path,
                              timeout=120)  # the subpackages mapped as an install maps them
        assert proc.returncode == 0 and proc.stdout.strip() == str(clone / "pipelines" / "__init__.py"), proc.stderr
