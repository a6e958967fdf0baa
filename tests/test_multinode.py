"""Two "nodes" on localhost: two torchrun agents (one process each, gloo) meeting at a c10d rendezvous on
127.0.0.1, as two machines would. The ranks train on disjoint shares that together cover each epoch, and
the run computes what one process computes with the same global batch.

Tolerance, and why it holds on any CPU: the model has no BatchNorm (nothing per process in its forward)
and computes in float64, and the run is deterministic. The two runs differ only in how sums are grouped:
one process sums a 40-image gradient; two sum 20 each and all-reduce. The inputs are bit-identical either
way (the rank slices of an augmented global batch equal its rows: tests/test_ddp.py checks it), so the
float64 weights differ after a step by at most n * 2^-53 relative for a sum of n <= 1e5 terms, about
1e-11, and 8 SGD steps at lr 0.2 cannot grow that past 1e-8. What is reported is coarser: the epoch's
loss sums and the evaluation sums are float32 accumulators (about 10 additions of 2^-24 relative rounding
each, ~1e-6), so losses are compared at 1e-5 relative (rounding of those float32 sums, with 10x room),
accuracies exactly (a flip would need two logits within 1e-8 of each other). A wrong shard, a missing
gradient average or a learning rate off by the world size moves the losses by 1e-3 or more. None of this
depends on the instruction set: float64 reductions reordered by AVX2 or AVX-512 kernels stay within the
same 1e-11.

This file is also the torchrun worker (`python -m torch.distributed.run ... test_multinode.py TENSOR_DATA
JPEG_STORE OUT`): it trains on both, then writes each rank's samples per epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

MODEL = "test_multinode_no_bn_fp64"
REL_TOL = 1e-5  # float32 loss accumulators, see the module docstring


def register_model() -> None:
    from fasttrain.models.registry import MODELS, register_model as register

    if MODEL in MODELS:
        return

    class Float64Net(nn.Module):
        """A small conv net without BatchNorm that computes in float64 (inputs arrive as float32)."""

        def __init__(self, num_classes: int):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(16, num_classes)).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x.double())

    register(MODEL, family="test")(lambda num_classes=10: Float64Net(num_classes))


@contextlib.contextmanager
def model_registered():
    from fasttrain.models.registry import MODELS

    register_model()
    try:
        yield
    finally:
        MODELS.pop(MODEL, None)


def run_config(data: str, out: str, pipeline: str = "tensor"):
    from fasttrain.config import resolve

    settings = dict(data=data, out=out, epochs=2, batch_size=40, train_subset=160, test_subset=100, lr=0.2,
                    momentum=0.9, schedule="linear", warmup_frac=0.25, crop_pad=2, flip=True, cutout=4,
                    label_smoothing=0.1, tta="flip", eval_every=1, amp="off", compile=False, device="cpu",
                    threads=1, seed=3, deterministic=True, tensorboard=False)
    if pipeline == "stream":  # a miniature jpeg store: 24 train images of every size, decoded at 32 px
        settings.update(pipeline="stream", batch_size=8, train_subset=None, test_subset=None, min_res=32,
                        val_res=32, crop_pad=0)
    return resolve(MODEL, None, settings)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def close(a, b) -> bool:
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-7)


def start_nodes(port: int, worker_args: list[str], *, rendezvous: str) -> list[subprocess.Popen]:
    """Two agents, as on two machines: node 0 and node 1 of the same job."""
    procs = []
    for node in (0, 1):
        if rendezvous == "c10d":
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
                   "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                   "--rdzv-id=fasttrain-test", "--max-restarts=0", *worker_args]
        else:  # fasttrain's own launch: `fasttrain run ... --nnodes 2 --node-rank R --master-addr --master-port`
            cmd = [sys.executable, "-m", "fasttrain", *worker_args, "--nnodes", "2", "--node-rank", str(node),
                   "--master-addr", "127.0.0.1", "--master-port", str(port)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
        if node == 0:  # on one host both agents could take themselves for the store's host: node 0 first
            wait_for_listener(port, procs[0])
    return procs


def wait_for_listener(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"node 0 never listened on port {port}: {proc.communicate()[1][-2000:]}")


def wait_all(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, stdout, stderr))
    return out


def check_shares(shards: dict, per_rank: int) -> None:
    """Each epoch: the ranks' samples are disjoint and together the whole (trimmed) training set."""
    assert shards["ranks"] == [0, 1] and len(shards["epochs"]) == 2
    for r0, r1 in shards["epochs"]:
        assert not set(r0) & set(r1)
        assert sorted(r0 + r1) == sorted(shards["train_idx"]) and len(r0) == len(r1) == per_rank
    assert shards["epochs"][0] != shards["epochs"][1]  # a new order each epoch


@pytest.mark.slow
def test_two_torchrun_nodes_shard_the_epoch_and_match_one_process(cifar_tensor_slice, tmp_path):
    """One two-node job runs two trainings (a job costs its start-up): the tensor pipeline on CIFAR images,
    compared with one process, then the streaming pipeline on a miniature jpeg store, which shards by rank
    itself (each rank decodes only its contiguous share of the epoch's order)."""
    from test_jpeg_store import build_ilsvrc, cli

    from fasttrain.train import train

    build_ilsvrc(tmp_path / "ilsvrc", flat_val=True, per_class=8)
    store = tmp_path / "imagenet"
    cli("convert", "imagenet", "--source", str(tmp_path / "ilsvrc"), "--out", str(store), "--max-side", "96")
    nodes = start_nodes(free_port(), [__file__, str(cifar_tensor_slice), str(store), str(tmp_path)],
                        rendezvous="c10d")
    with model_registered():  # the single process runs while the two nodes work
        single = train(run_config(str(cifar_tensor_slice), str(tmp_path / "single")), quiet=True)
    for code, _, stderr in wait_all(nodes):
        assert code == 0, stderr[-4000:]

    # tensor: each rank trains on its slice of every global batch (80 of the 160 samples an epoch)
    check_shares(json.loads((tmp_path / "tensor_shards.json").read_text()), per_rank=80)
    multi_dir, single_dir = tmp_path / "tensor_two_nodes", tmp_path / "single"
    multi = json.loads((multi_dir / "summary.json").read_text())
    assert multi["world_size"] == 2 and single["world_size"] == 1
    assert multi["steps"] == single["steps"] == 8 and multi["train_samples"] == single["train_samples"] == 160
    for key in ("test_loss", "test_acc_no_tta"):
        assert close(multi[key], single[key]), (key, multi[key], single[key])
    assert multi["test_acc"] == single["test_acc"] and multi["test_top5"] == single["test_top5"]
    for r1, r2 in zip(metric_rows(single_dir), metric_rows(multi_dir), strict=True):
        for key in ("train_loss", "test_loss", "lr"):
            assert close(r1[key], r2[key]), (r1["epoch"], key, r1[key], r2[key])
        assert r1["train_acc"] == r2["train_acc"] and r1["test_acc"] == r2["test_acc"]

    # stream: 24 images, 4 per rank and step
    check_shares(json.loads((tmp_path / "stream_shards.json").read_text()), per_rank=12)
    streamed = json.loads((tmp_path / "stream_two_nodes" / "summary.json").read_text())
    assert streamed["world_size"] == 2 and streamed["steps"] == 2 * 3 and math.isfinite(streamed["test_loss"])


@pytest.mark.slow
def test_fasttrain_run_nnodes_launches_each_node(cifar_tensor_slice, tmp_path):
    """`fasttrain run --nnodes 2 --node-rank R --master-addr --master-port` on each "machine": torchrun's
    static rendezvous; both nodes exit 0, node 0's rank 0 alone reports and writes the run folder."""
    out = tmp_path / "run"
    args = ["run", "resnet9", "--data", str(cifar_tensor_slice), "--out", str(out), *(
        "--epochs 1 --batch-size 50 --train-subset 100 --test-subset 50 --width 0.125 --device cpu --amp off "
        "--threads 1 --tta none --no-tensorboard --json").split()]
    results = wait_all(start_nodes(free_port(), args, rendezvous="static"))
    for code, _, stderr in results:
        assert code == 0, stderr[-4000:]
    assert "launching 1 processes on node 0 of 2" in results[0][2]
    assert "launching 1 processes on node 1 of 2" in results[1][2]
    reports = [json.loads(line) for _, stdout, _ in results for line in stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1 and reports[0]["world_size"] == 2 and reports[0]["steps"] == 2
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_node_options_are_checked_before_anything_starts(tmp_path):
    from fasttrain.config import ConfigError, resolve
    from fasttrain.distributed import Nodes, torchrun_command

    for bad, option in ((dict(nnodes=2), "--master-addr"), (dict(nnodes=2, node_rank=2, master_addr="h"), "--node-rank"),
                        (dict(nnodes=3, master_addr="h", batch_size=64), "--batch-size"),
                        (dict(master_port=70000), "--master-port")):
        with pytest.raises(ConfigError, match=option):
            resolve("resnet18", None, bad)
    cmd = torchrun_command(8, ["run", "resnet50"], Nodes(2, 1, "10.0.0.1", 29400))
    assert cmd[3:8] == ["--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29400",
                        "--nproc-per-node=8"]
    assert "--standalone" in torchrun_command(2, ["run", "resnet50"])


# ============================================================================ torchrun worker
def record_shards(cfg, path: str) -> None:
    """After training, in the same process group: the dataset indices this rank trains on in each epoch,
    read from the pipeline the trainer builds (its batch_indices, and this rank's slice of a global batch),
    gathered on rank 0 and written to `path`."""
    from fasttrain.runsetup import build_runtime
    from fasttrain.train import build_data

    rt = build_runtime(cfg)
    data = build_data(cfg, rt)
    epochs = []
    for epoch in range(2):
        data.pipeline.set_epoch(epoch)
        mine: list[int] = []
        for xb, _ in data.pipeline:
            keys = data.pipeline.batch_indices.cpu().numpy()
            if rt.dist.global_batches:  # this rank trains on its slice of positions in the training subset
                mine += data.train_idx[keys[rt.dist.batch_slice(len(xb))]].tolist()
            else:  # a sharded pipeline yields this rank's batches, keyed by dataset position
                mine += keys.tolist()
        epochs.append(rt.dist.gather_object(mine))
    ranks = rt.dist.gather_object(rt.dist.rank)
    if rt.dist.is_main:
        Path(path).write_text(json.dumps({"ranks": ranks, "epochs": epochs, "train_idx": data.train_idx.tolist()}))


if __name__ == "__main__":
    register_model()
    from fasttrain.train import train

    tensor_data, store, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    for pipeline, data in (("tensor", tensor_data), ("stream", store)):
        run_dir = str(out / f"{pipeline}_two_nodes")
        train(run_config(data, run_dir, pipeline), quiet=True)
        record_shards(run_config(data, run_dir, pipeline), str(out / f"{pipeline}_shards.json"))
