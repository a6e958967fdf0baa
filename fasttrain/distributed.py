"""Data-parallel training with PyTorch DDP, launched by torchrun.

Launch: `fasttrain run MODEL --nproc N` re-executes the same command under
`torchrun --standalone --nproc-per-node N` (one machine). Several machines: the same command on each with
`--nnodes M --node-rank R --master-addr HOST0 --master-port P` re-executes under torchrun's static
rendezvous (`torchrun --nnodes M --node-rank R --master-addr HOST0 --master-port P --nproc-per-node N`);
or run torchrun yourself with any rendezvous, e.g. `torchrun --nnodes 2 --nproc-per-node 8
--rdzv-backend c10d --rdzv-endpoint HOST0:29500 -m fasttrain run MODEL ...` (docs/imagenet.md: plain and
SLURM examples). Every process reads RANK / WORLD_SIZE / LOCAL_RANK from torchrun's environment; backend
NCCL on GPUs (device cuda:LOCAL_RANK), gloo on CPUs. Only global rank 0 (on node 0) writes the run folder.

Semantics: `--batch-size` is the global batch. Each of W processes runs batch_size / W samples per step
and DDP averages the gradients, so a step equals one process's step on the whole global batch. Training
metrics (loss, accuracy, sample counts) and evaluation sums are all-reduced; only rank 0 writes files.
BatchNorm statistics are per process unless `--sync-bn` (SyncBatchNorm, CUDA only).

Sharding, per pipeline:
  tensor      every rank holds the dataset and draws the same permutation (same seed). At step k rank r
              takes the index range [k*B + r*B/W, k*B + (r+1)*B/W) of it: its slice of the global batch.
              The augmentation parameters are drawn for the global batch (same seed everywhere) and sliced
              the same way; a mixup/cutmix partner on another rank's slice is augmented locally as well.
              So with SyncBN, or a model without BatchNorm, W processes compute what one computes (up to
              float summation order), and a run may resume with a different W.
  ffcv, dali, torchvision
              built with rank / world_size and batch_size / W they yield this rank's batches directly
              (FFCV Loader(distributed=True), DALI readers shard_id=rank / num_shards=W, a contiguous
              rank share of the permutation for torchvision; fasttrain.pipelines.shard_indices first cuts
              the set to a multiple of W so every rank runs the same number of steps). Each rank draws its
              own augmentation (seed + rank). A new pipeline must take rank / world_size the same way;
              `DistContext.pipeline_args` decides the mode (global batches for "tensor" only).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .config import ConfigError

# ============================================================================ launching
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def in_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK)."""
    return all(k in os.environ for k in ENV_KEYS)


def is_main_process() -> bool:
    """Rank 0, or not distributed at all."""
    return not in_torchrun() or os.environ["RANK"] == "0"


@dataclass(frozen=True)
class Nodes:
    """Where the job's processes run: `nnodes` machines, this one `node_rank`, node 0 at master_addr:port."""

    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    def torchrun_args(self) -> list[str]:
        """torchrun's rendezvous options: standalone on one machine, else the static rendezvous at node 0."""
        if self.nnodes == 1:
            return ["--standalone"]
        return [f"--nnodes={self.nnodes}", f"--node-rank={self.node_rank}", f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}"]


def torchrun_command(nproc: int, argv: list[str], nodes: Nodes = Nodes()) -> list[str]:
    """The command `--nproc N` (and `--nnodes M ...`) runs: this same fasttrain command line under torchrun."""
    # "--" keeps torchrun's own parser off our options (it would read --nproc as an abbreviation of
    # --nproc-per-node, --monitor of --monitor-interval)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *nodes.torchrun_args(),
        f"--nproc-per-node={nproc}",
        "-m",
        "fasttrain",
        "--",
        *argv,
    ]


def launch(nproc: int, argv: list[str], nodes: Nodes = Nodes()) -> None:
    """Replaces this process with torchrun (os.execv), so signals reach torchrun and its workers directly.
    The workers see RANK etc. and train instead of launching again."""
    cmd = torchrun_command(nproc, argv, nodes)
    where = f" on node {nodes.node_rank} of {nodes.nnodes}" if nodes.nnodes > 1 else ""
    print(
        f"launching {nproc} processes{where}: torchrun {' '.join(nodes.torchrun_args())} --nproc-per-node={nproc} "
        f"-m fasttrain -- {' '.join(argv)}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


def check_launch(nproc: int | None, device: str) -> None:
    """Before launching: --nproc fits the machine. Raises ConfigError naming the option."""
    if not nproc or nproc <= 1:
        return
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        n = torch.cuda.device_count()
        if nproc > n:
            raise ConfigError(
                f"--nproc {nproc}: only {n} CUDA device(s) visible; one process per GPU "
                f"(use --nproc {n}, or --device cpu)"
            )


# ============================================================================ the per-process context
@dataclass
class DistContext:
    """This process's place in the job. world_size 1 (the default) makes every method a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    global_batches: bool = True  # pipeline yields the global batch (tensor) vs this rank's shard
    control_group: Any = None  # gloo group for host-side flags when the main backend is NCCL

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ data
    def batch_slice(self, n: int) -> slice:
        """This rank's contiguous part of a global batch of n samples (n divisible by world_size)."""
        if not self.enabled or not self.global_batches:
            return slice(0, n)
        per = n // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def eval_slice(self, n: int) -> slice:
        """This rank's part of an evaluation set of n samples (sizes may differ by one; sums are reduced)."""
        if not self.enabled:
            return slice(0, n)
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def augment(self, augment_fn, x: torch.Tensor, y: torch.Tensor, params, *args, **kwargs):
        """augment_fn(x, y, params, ...) for this rank's slice of a global batch. Mixing partners that lie
        on another rank's slice are gathered and augmented here too (their rows are dropped after)."""
        sl = self.batch_slice(len(x))
        if sl == slice(0, len(x)):
            return augment_fn(x, y, params, *args, **kwargs)
        own = torch.arange(sl.start, sl.stop, device=x.device)
        if params.has_mix:
            partners = params.mix_index[own]
            rows = torch.cat([own, partners])
            n_own = len(own)
            local = params.take(rows)
            local.mix_index = torch.cat(
                [
                    torch.arange(n_own, 2 * n_own, device=x.device),
                    torch.arange(n_own, 2 * n_own, device=x.device),
                ]
            )
            # partner rows are only sources: no blending of their own
            local.mix_lam[n_own:] = 1.0
            local.cutmix[n_own:] = 0
            out, t = augment_fn(x.index_select(0, rows), y.index_select(0, rows), local, *args, **kwargs)
            return out[:n_own], dataclasses.replace(t, y_a=t.y_a[:n_own], y_b=t.y_b[:n_own], lam=t.lam[:n_own])
        local = params.take(own)
        local.mix_index = torch.arange(len(own), device=x.device)
        return augment_fn(x[sl], y[sl], local, *args, **kwargs)

    def pipeline_args(self, pipeline: str, batch_size: int) -> dict:
        """batch_size / rank / world_size to build `pipeline` with, and which sharding mode applies.
        Under torchrun the world size may come from outside (--nnodes x --nproc-per-node): checked here."""
        if self.enabled and batch_size % self.world_size:
            raise ConfigError(
                f"--batch-size {batch_size}: must be divisible by the {self.world_size} processes "
                f"(it is the global batch, split evenly)"
            )
        self.global_batches = pipeline == "tensor"
        if not self.enabled or self.global_batches:
            return {"batch_size": batch_size, "rank": 0, "world_size": 1}
        return {"batch_size": batch_size // self.world_size, "rank": self.rank, "world_size": self.world_size}

    def trim(self, indices):
        """Global batches: the training indices cut to a multiple of world_size (at most world_size - 1
        dropped) so every rank gets an equal slice of every batch, the last one included. Sharded
        pipelines cut their own (fasttrain.pipelines.shard_indices)."""
        if not self.enabled or not self.global_batches:
            return indices
        return indices[: len(indices) - len(indices) % self.world_size]

    def sampler_seed(self, seed: int) -> int:
        """Global batches: every rank draws the same parameters (then slices); sharded: a stream per rank."""
        return seed if self.global_batches else seed + 1_000_003 * self.rank

    def seed_process_streams(self, seed: int) -> None:
        """After the (identical) model init: distinct global torch streams per rank (dropout masks)."""
        if self.enabled:
            torch.manual_seed(seed + 7919 * (self.rank + 1))

    # ------------------------------------------------------------------ model
    def wrap(self, model: nn.Module, *, sync_bn: bool = False) -> nn.Module:
        """DDP around `model` (shares its parameters), with SyncBatchNorm layers when asked."""
        if not self.enabled:
            return model
        if sync_bn:
            nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps BN children in place, same parameters
        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers (BatchNorm statistics) follow rank 0 at every forward: DDP's default
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    @torch.no_grad()
    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere, so evaluation and the checkpoint agree across ranks."""
        if not self.enabled:
            return
        for b in model.buffers():
            torch_dist.broadcast(b, src=0)

    def main_only(self, fn, *args, **kwargs):
        """fn(...) on rank 0 only (e.g. checks of the run directory). If it raises, every rank raises, so
        no process waits forever in the next collective."""
        err = None
        result = None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except Exception as e:  # re-raised below, after the other ranks learnt of it
                err = e
        failed = self.any(err is not None)
        if err is not None:
            raise err
        if failed:
            raise RuntimeError(
                f"rank 0 failed in {getattr(fn, '__name__', fn)} (see its error); stopping rank {self.rank}"
            )
        return result

    def main_only_fn(self, fn):
        """fn wrapped by main_only (a writer such as save_best: rank 0 writes, every rank agrees)."""
        if not self.enabled:
            return fn
        return lambda *args, **kwargs: self.main_only(fn, *args, **kwargs)

    # ------------------------------------------------------------------ reductions
    def all_reduce_sum(self, *values):
        """Sums tensors (on the device) and numbers across ranks in one collective; returns the same types."""
        if not self.enabled:
            return values if len(values) > 1 else values[0]
        flat = torch.stack(
            [torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in values]
        )
        torch_dist.all_reduce(flat)
        out = []
        for v, s in zip(values, flat):
            if torch.is_tensor(v):
                out.append(s.to(v.dtype))
            else:
                out.append(type(v)(s.item()))
        return tuple(out) if len(out) > 1 else out[0]

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums `tensor` in place across ranks (evaluation sums, confusion matrices); returns it."""
        if self.enabled:
            torch_dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (stop requests). A CPU tensor over gloo (the
        control group beside NCCL), so polling it never waits for the GPU's queued work."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])
        torch_dist.all_reduce(t, group=self.control_group)
        return bool(t.item() > 0)

    def wait_for_all(self) -> None:
        """Returns when every rank has reached this point (host-side, over gloo)."""
        if self.enabled:
            torch_dist.barrier(group=self.control_group)

    def min_nonneg(self, value: torch.Tensor) -> torch.Tensor:
        """The smallest non-negative value across ranks, -1 if none (first bad step)."""
        if not self.enabled:
            return value
        big = torch.iinfo(torch.long).max
        v = torch.where(value < 0, torch.full_like(value, big), value).to(self.device)
        torch_dist.all_reduce(v, op=torch_dist.ReduceOp.MIN)
        return torch.where(v == big, torch.full_like(v, -1), v)

    def gather_object(self, obj) -> list:
        """obj from every rank (rank order) on every rank; [obj] in a single process."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size
        torch_dist.all_gather_object(out, obj)
        return out


class Discard:
    """Stands in for a writer (run log) on ranks other than 0: every method call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


# ============================================================================ setup / teardown
def setup(device: torch.device, *, timeout_s: float = 1800) -> DistContext:
    """Joins the process group when started by torchrun; otherwise returns a single-process context.
    On CUDA each process takes cuda:LOCAL_RANK (an explicit --device cuda:N contradicts that)."""
    if not in_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistContext(device=device)
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"--nproc: process {local} on this node has no GPU ({torch.cuda.device_count()} "
                f"visible); start at most one process per GPU"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
        atexit.register(shutdown)
    control = torch_dist.new_group(backend="gloo") if backend == "nccl" else None
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device, control_group=control)


def shutdown() -> None:
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
