"""The streaming pipeline (pipelines/stream.py) over a tiny jpeg store of real photos of mixed sizes:
batches are a pure function of (seed, epoch, batch): the same bytes with 1 or 2 decode threads and any
prefetch depth, every sample once per epoch, ranks share it; start_at skips batches without decoding them;
evaluation is the centre crop; a corrupt sample is named; the reference decoder is the switch. Then through
the trainer: a run trains end to end on the CPU, a stop mid-epoch then --resume replays the identical
batches (hashed) and ends with the uninterrupted run's weights bit for bit; so does kill -9 (slow, CLI)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fasttrain.data.crops import centre_crop_box
from fasttrain.data.errors import DatasetError
from fasttrain.data.jpeg_store import JpegStore, write_jpeg_store
from fasttrain.pipelines import make_pipeline
from fasttrain.pipelines.stream import StreamPipeline
from fasttrain.pipelines.stream_cpu import ReferenceCropDecoder

skimage_data = pytest.importorskip("skimage.data")
pytestmark = pytest.mark.usefixtures("cpu_jpeg_decoder")  # built by the first test here, not at collection


CLASSES = ["astronaut", "coffee", "chelsea", "rocket"]
RES = 48


def photo_jpegs(n: int, seed: int, lo: int = 120, hi: int = 400) -> list[tuple[bytes, int]]:
    """n JPEGs cut from scikit-image's photos at random sizes, labelled by the photo they come from."""
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage_data, c)() for c in CLASSES]
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = int(rng.integers(lo, min(hi, p.shape[0]) + 1)), int(rng.integers(lo, min(hi, p.shape[1]) + 1))
        top, left = int(rng.integers(0, p.shape[0] - h + 1)), int(rng.integers(0, p.shape[1] - w + 1))
        buf = io.BytesIO()
        Image.fromarray(p[top : top + h, left : left + w]).save(buf, "JPEG", quality=85)
        out.append((buf.getvalue(), i % len(photos)))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("stream") / "photos"
    write_jpeg_store(path, {"train": photo_jpegs(40, 0), "test": photo_jpegs(12, 1)}, CLASSES, workers=1,
                     log=lambda s: None)
    return path


def batches(pipe, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    pipe.set_epoch(epoch)
    return [(x.clone(), y.clone(), pipe.batch_indices.clone()) for x, y in pipe]


def stream(store: Path, **kw) -> StreamPipeline:
    kw = {"seed": 3, "res": RES, **kw}
    return make_pipeline("stream", store, kw.pop("split", "train"), kw.pop("batch_size", 8), **kw)


# ============================================================================ the pipeline
def test_batches_are_the_same_whatever_the_threads_and_prefetch(store):
    one = batches(stream(store, num_workers=1, prefetch=1), epoch=2)
    two = batches(stream(store, num_workers=2, prefetch=3), epoch=2)
    assert len(one) == len(two) == 5
    for (x1, y1, i1), (x2, y2, i2) in zip(one, two):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
        assert x1.shape == (8, RES, RES, 3) and x1.dtype == torch.uint8
    ids = torch.cat([i for _, _, i in one])
    assert sorted(ids.tolist()) == list(range(40))  # every sample once
    labels = JpegStore(store, "train").labels
    assert torch.equal(torch.cat([y for _, y, _ in one]), torch.from_numpy(labels[ids.numpy()]))
    other_epoch = batches(stream(store), epoch=3)
    assert not torch.equal(other_epoch[0][2], one[0][2])  # another order ...
    same_order = stream(store, shuffle=False)
    a, b = batches(same_order, 0), batches(same_order, 1)
    assert torch.equal(a[0][2], b[0][2]) and not torch.equal(a[0][0], b[0][0])  # ... and other crops


def test_start_at_skips_batches_without_decoding_them(store):
    full = batches(stream(store), epoch=1)
    pipe = stream(store)
    decoded = []
    original = pipe.decode
    pipe.decode = lambda ids: (decoded.append(ids.copy()), original(ids))[1]  # counts the decoder calls
    pipe.start_at(3)
    tail = batches(pipe, epoch=1)
    assert len(decoded) == 2 and len(tail) == 2
    for (x, y, i), (xf, yf, i_f) in zip(tail, full[3:]):
        assert torch.equal(x, xf) and torch.equal(y, yf) and torch.equal(i, i_f)
    assert len(batches(pipe, epoch=1)) == 5  # start_at holds for one pass only
    with pytest.raises(ValueError, match="start_at"):
        pipe.start_at(6)


def test_ranks_share_the_epoch(store):
    shares = [torch.cat([i for _, _, i in batches(stream(store, batch_size=4, rank=r, world_size=2), 1)])
              for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 20
    assert sorted(torch.cat(shares).tolist()) == list(range(40))


def test_subset_resolution_and_drop_last(store):
    pipe = stream(store, indices=np.arange(0, 40, 3), batch_size=5, drop_last=True)
    assert len(pipe) == 2 and pipe.num_samples == 14
    pipe.set_resolution(32)
    got = batches(pipe)
    assert {tuple(x.shape) for x, _, _ in got} == {(5, 32, 32, 3)}
    assert set(torch.cat([i for _, _, i in got]).tolist()) <= set(range(0, 40, 3))


def test_evaluation_is_the_centre_crop(store):
    pipe = stream(store, split="test", train=False, shuffle=False, batch_size=5, res=40)
    got = batches(pipe, epoch=0)
    again = batches(pipe, epoch=7)  # no randomness in evaluation
    assert all(torch.equal(a[0], b[0]) for a, b in zip(got, again))
    st = JpegStore(store, "test")
    ids = np.arange(len(st))
    boxes = np.stack(centre_crop_box(st.heights, st.widths, 40), 1)
    ref = ReferenceCropDecoder()(st.read(ids), boxes, np.zeros(len(ids), bool), 40)
    ours = torch.cat([x for x, _, _ in got])
    assert (ours.float() - ref.float()).abs().mean() < 2.0  # DCT scaling tolerance (test_stream_decode.py)


def test_reference_decoder_is_the_switch(store, monkeypatch):
    monkeypatch.setenv("FASTTRAIN_DECODER", "reference")
    ref_pipe = stream(store)
    assert ref_pipe.decoder.name == "reference"
    ref = batches(ref_pipe)
    monkeypatch.setenv("FASTTRAIN_DECODER", "cpu")
    ours = batches(stream(store))
    for (x, y, i), (xr, yr, ir) in zip(ours, ref):
        assert torch.equal(i, ir) and torch.equal(y, yr)
        assert (x.float() - xr.float()).abs().mean() < 2.0
    monkeypatch.setenv("FASTTRAIN_DECODER", "fast")
    with pytest.raises(ValueError, match="FASTTRAIN_DECODER"):
        stream(store)


def test_a_corrupt_sample_is_named(store, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(store, bad)
    row = JpegStore(bad, "train").index[17]
    with open(bad / "train-000000.tar", "r+b") as f:  # garbage over the JPEG's header
        f.seek(int(row["offset"]))
        f.write(b"\x00" * 64)
    with pytest.raises(DatasetError, match=r"sample 17 of split 'train' \(train-000000.tar") as e:
        batches(stream(bad, shuffle=False))
    assert "fasttrain verify" in str(e.value)


# ============================================================================ through the trainer
def run_cfg(store: Path, out: Path, **kw):
    from fasttrain.config import RunConfig

    base = dict(model="resnet9", model_kwargs={"width": 0.25}, data=str(store), out=str(out), pipeline="stream",
                epochs=2, batch_size=8, min_res=RES, lr=0.05, schedule="constant", cutout=4, tta="flip",
                amp="off", compile=False, device="cpu", threads=1, seed=2, deterministic=True, tensorboard=False,
                eval_every=1)
    base.update(kw)
    return RunConfig(**base)


class BatchLog:
    """Records a hash of every batch the stream pipeline yields, keyed by (epoch, batch)."""

    def __init__(self, monkeypatch):
        self.hashes: dict[tuple[int, int], str] = {}
        self.decoded = 0
        log = self
        original_iter, original_decode = StreamPipeline.__iter__, StreamPipeline.decode

        def logged_iter(pipe):
            first = pipe._start
            for b, (x, y) in enumerate(original_iter(pipe), start=first):
                if pipe.train:
                    log.hashes[(pipe.epoch, b)] = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
                yield x, y

        def counted_decode(pipe, ids):
            log.decoded += pipe.train
            return original_decode(pipe, ids)

        monkeypatch.setattr(StreamPipeline, "__iter__", logged_iter)
        monkeypatch.setattr(StreamPipeline, "decode", counted_decode)


def test_a_run_trains_and_evaluates_by_streaming(store, tmp_path, monkeypatch):
    from fasttrain.train import train

    log = BatchLog(monkeypatch)
    summary = train(run_cfg(store, tmp_path / "run"), quiet=True)
    assert summary["train_samples"] == 40 and summary["test_samples"] == 12 and summary["epochs"] == 2
    assert 0 <= summary["test_acc"] <= 1
    assert sorted(log.hashes) == [(e, b) for e in (0, 1) for b in range(5)]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["res"] for r in rows] == [RES, RES] and all(r["test_acc"] is not None for r in rows)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["pipeline"] == "stream"


def test_stop_mid_epoch_then_resume_replays_the_same_batches(store, tmp_path, monkeypatch):
    """SIGINT while batch 3 of epoch 2 is augmented: the run saves (epoch 1, batch 2); the resume starts
    the pipeline at that batch (no decode of the two before it), sees the uninterrupted run's batches
    and ends with its weights, bit for bit."""
    from fasttrain import checkpoint as ckpt_io
    from fasttrain.augment import AugmentSampler
    from fasttrain.config import RunConfig
    from fasttrain.stopping import RunInterrupted
    from fasttrain.train import train

    log = BatchLog(monkeypatch)
    train(run_cfg(store, tmp_path / "ref"), quiet=True)
    reference = dict(log.hashes)

    log = BatchLog(monkeypatch)
    calls = {"n": 0}
    original = AugmentSampler.sample

    def sample_then_signal(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 1 (from 0), its third batch
            signal.raise_signal(signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AugmentSampler, "sample", sample_then_signal)
    out = tmp_path / "stopped"
    with pytest.raises(RunInterrupted):
        train(run_cfg(store, out), quiet=True)
    monkeypatch.setattr(AugmentSampler, "sample", original)
    assert ckpt_io.load(out / "checkpoint.pt")["position"]["batch"] == 3
    before = dict(log.hashes)

    log = BatchLog(monkeypatch)
    train(RunConfig.from_dict(json.loads((out / "config.json").read_text())), quiet=True, resume=True)
    assert sorted(log.hashes) == [(1, 3), (1, 4)] and log.decoded == 2  # batches 0-2 neither read nor decoded
    assert {**before, **log.hashes} == reference  # every batch trained on, bit for bit
    ref_weights, weights = (ckpt_io.load(d / "checkpoint.pt")["model"] for d in (tmp_path / "ref", out))
    assert all(torch.equal(ref_weights[k], weights[k]) for k in ref_weights)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kill -9 of a process group")
def test_kill_9_mid_epoch_then_resume_ends_as_the_uninterrupted_run(store, tmp_path):
    args = ["run", "resnet9", "--width", "0.25", "--data", str(store), "--pipeline", "stream", "--epochs", "4",
            "--batch-size", "8", "--min-res", str(RES), "--schedule", "constant", "--lr", "0.05", "--device", "cpu",
            "--threads", "1", "--no-compile", "--amp", "off", "--seed", "4", "--deterministic", "--tta", "none",
            "--no-tensorboard", "--eval-every", "1"]

    def cli(*extra):
        return subprocess.Popen([sys.executable, "-m", "fasttrain", *args, *extra], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    killed = tmp_path / "killed"
    proc = cli("--out", str(killed))
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (killed / "checkpoint.pt").exists(), proc.communicate()[1][-2000:]
    time.sleep(0.5)  # into the next epoch
    assert proc.poll() is None, "the run ended before the kill"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = subprocess.run([sys.executable, "-m", "fasttrain", "run", "--resume", str(killed)],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    reference = cli("--out", str(tmp_path / "ref"))
    assert reference.wait(timeout=600) == 0, reference.communicate()[1][-2000:]

    def rows(d):
        return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_s", "imgs_per_s")}
                for line in (d / "metrics.jsonl").read_text().splitlines()]

    assert rows(killed) == rows(tmp_path / "ref")
    from fasttrain import checkpoint as ckpt_io

    a, b = (ckpt_io.load(d / "checkpoint.pt")["model"] for d in (killed, tmp_path / "ref"))
    assert all(torch.equal(a[k], b[k]) for k in a)
