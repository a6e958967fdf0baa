"""A refactor must not change what a run computes: a deterministic CPU run (fixed seed, 300 images, two epochs,
with mixup, cutout, label smoothing, lookahead, EMA and a val split) must give the losses, accuracies and learning
rates recorded in tests/fixtures/behaviour_before.jsonl before the code was reorganised.

Re-record (only when a change is MEANT to alter the numbers, and say so in the commit):
    python tests/test_behaviour_fixture.py --record
"""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "behaviour_before.jsonl"
TIMED = {"epoch_s", "imgs_per_s"}  # wall-clock fields differ run to run


def run_config(data: Path, out: Path) -> dict:
    return dict(
        model="resnet9", data=str(data), out=str(out), epochs=2, batch_size=50, train_subset=250, lr=0.2,
        schedule="piecewise", warmup_frac=0.3, label_smoothing=0.1, crop_pad=2, cutout=8, mixup=0.3,
        lookahead=True, ema=True, ema_decay=0.9, val_split=50, monitor="val_loss", eval_every=1, tta="flip",
        amp="off", compile=False, device="cpu", threads=1, seed=3, deterministic=True, tensorboard=False,
        model_kwargs={"width": 0.25},
    )


def metric_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _train(data: Path, out: Path) -> list[dict]:
    from fasttrain.config import RunConfig
    from fasttrain.train import train

    train(RunConfig(**run_config(data, out)), quiet=True)
    return metric_rows(out)


def test_metrics_match_the_recorded_run(cifar_tensor_slice, tmp_path):
    recorded = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    header, before = recorded[0], recorded[1:]
    after = _train(cifar_tensor_slice, tmp_path / "run")
    assert len(after) == len(before)
    # Bit-identical on the CPU model the fixture was recorded on; another CPU may pick other oneDNN kernels
    # (AVX-512 vs AVX2 vs AMX), whose float rounding differs slightly, so there the check is to 1e-3.
    same_cpu = header["cpu"] == _cpu_model()
    for b, a in zip(before, after):
        for key, value in b.items():
            assert key in a, f"metrics.jsonl lost the column {key!r}"
            if isinstance(value, float) and not same_cpu:
                assert math.isclose(a[key], value, rel_tol=1e-3, abs_tol=1e-3), (key, a[key], value)
            else:
                assert a[key] == value, (key, a[key], value)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import extract_jpeg_slice  # noqa: E402

    from fasttrain.data.convert import convert  # noqa: E402

    with tempfile.TemporaryDirectory() as tmp:
        jpegs = extract_jpeg_slice(Path(tmp) / "jpeg", 30, 10)  # the same slice as the session fixture
        data = convert("cifar10", source=jpegs, out=Path(tmp) / "cifar10", log=lambda s: None)
        rows = _train(data, Path(tmp) / "run")
    FIXTURE.write_text("\n".join(json.dumps(r) for r in [{"cpu": _cpu_model()}, *rows]) + "\n")
    print(f"wrote {FIXTURE} ({len(rows)} epochs)")
