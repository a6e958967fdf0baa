"""The benchmarks' result files follow the output rule (fasttrain.outputs): a user's file at a result path is
refused before any work (one `error:` line naming it, exit 2, byte for byte untouched), `--force` replaces
it, and a benchmark's own earlier results (signed, as the committed ones are) are replaced without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import data as photos

from conftest import REPO
from fasttrain.data.tensor_format import Split, write_tensor_dataset
from fasttrain.outputs import written_by_fasttrain

USER_BYTES = b"the user's own result \x00\xff\n"
RESULT_KINDS = (".json", ".md", ".png")


def bench(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def user_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USER_BYTES)
    return path


def assert_refused(proc: subprocess.CompletedProcess, named: Path, says: str = "--force") -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(named) in errors[0] and says in errors[0], proc.stderr


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """32 crops of 32x32 px from two real photos, two classes: enough for one timed epoch."""
    crops = []
    for photo in (photos.astronaut(), photos.coffee()):
        crops += [photo[y:y + 32, x:x + 32] for y in range(0, 256, 64) for x in range(0, 256, 64)]
    images, labels = np.stack(crops).astype(np.uint8), np.arange(len(crops)) % 2
    return write_tensor_dataset(tmp_path_factory.mktemp("bench_outputs") / "data",
                                {"train": Split(images, labels), "test": Split(images[:4], labels[:4])},
                                ["astronaut", "coffee"], name="photos", source="skimage.data")


@pytest.mark.slow
def test_pipeline_benchmark_keeps_the_users_results_and_replaces_its_own(tiny_dataset, tmp_path):
    """A real benchmark run on tiny settings (one loop, one epoch of 32 images): its JSON, Markdown and PNG."""
    out = tmp_path / "results"
    cmd = ["benchmarks/pipeline_throughput.py", "--data", tiny_dataset, "--cache", tmp_path / "cache", "--n", "32",
           "--batch-size", "16", "--only", "tensor", "--warmup", "0", "--epochs", "1", "--threads", "1",
           "--out", out]
    users = [user_file(out / f"pipeline_throughput-cpu{kind}") for kind in RESULT_KINDS]
    assert_refused(bench(*cmd), users[0])
    assert all(p.read_bytes() == USER_BYTES for p in users)
    assert sorted(out.iterdir()) == users and not (tmp_path / "cache").exists()  # refused before any work

    for p in users:
        p.unlink()
    for _ in range(2):  # the second run replaces the first run's results: they are its own
        proc = bench(*cmd)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert all(written_by_fasttrain(out / f"pipeline_throughput-cpu{kind}") for kind in RESULT_KINDS)
    report = json.loads((out / "pipeline_throughput-cpu.json").read_text())
    assert report["writer"] == "fasttrain" and report["loops"]["tensor"]["img_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == [f"pipeline_throughput-cpu{kind}" for kind in RESULT_KINDS]

    user_file(out / "pipeline_throughput-cpu.md")
    proc = bench(*cmd, "--force")
    assert proc.returncode == 0 and written_by_fasttrain(out / "pipeline_throughput-cpu.md"), proc.stderr[-2000:]


# every other benchmark, refused before its work starts: (arguments, the user's file under tmp_path). gpu_check
# names its results by the time it starts: there, --out naming the user's file (a folder expected) is refused.
REFUSALS = {
    "augment_throughput": (["--device", "cpu", "--out", "{tmp}/aug.json"], "aug.json"),
    "gpu_decode": (["--what", "kernel", "--dry-run", "--out", "{tmp}/k.json"], "k.json"),
    "zoo_measure": (["--device", "cpu", "--no-compile", "--models", "resnet9", "--out", "{tmp}/zoo.json"],
                    "zoo.md"),
    "time_to_accuracy": (["--data", "{tmp}/no-data", "--device", "cpu", "--references", "none", "--out", "{tmp}"],
                         "time_to_accuracy_speed94-cpu_cpu.json"),
    "jpeg_pipeline": (["--store", "{tmp}/no-store", "--out", "{tmp}/jpeg"], "jpeg.md"),
    "gpu_check": (["--dry-run", "--only", "versions", "--out", "{tmp}/results"], "results"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(REFUSALS))
def test_every_benchmark_refuses_a_users_file_at_its_output_path(name, tmp_path):
    args, user = REFUSALS[name]
    user = user_file(tmp_path / user)
    proc = bench(f"benchmarks/{name}.py", *[a.format(tmp=tmp_path) for a in args], timeout=120)
    assert_refused(proc, user, "is a file, not a folder" if name == "gpu_check" else "--force")
    assert user.read_bytes() == USER_BYTES
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [user]  # nothing written beside it


def test_committed_results_are_signed():
    """So that re-running a benchmark replaces its own earlier results rather than refusing them."""
    listed = subprocess.run(["git", "ls-files", "benchmarks/results"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    results = [REPO / name for name in listed.stdout.split() if Path(name).suffix in RESULT_KINDS]
    assert results
    assert [p for p in results if not written_by_fasttrain(p)] == []
