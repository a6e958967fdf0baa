"""`fit(logger="mlflow,wandb", callbacks=[...])` and `--logger`: one tiny run logs to the real MLflow (an SQLite
store in the run folder) and W&B (offline files in the run folder) and to a logger object of the user's; each
is read back with its own tool (mlflow.MlflowClient; wandb's protobuf records of the offline run file) and
compared with metrics.jsonl and summary.json. The callbacks see Lightning's hooks in order, and one stops the
run cleanly after its second of three epochs. A missing package and a misspelt logger or hook are one error."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fasttrain
from fasttrain.callbacks import Callback, StopTraining
from fasttrain.cli import app
from fasttrain.config import ConfigError

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

TINY = dict(model_kwargs={"width": 0.25}, epochs=3, batch_size=50, train_subset=100, test_subset=50, device="cpu",
            amp="off", compile=False, tta="none", schedule="constant", warmup_frac=0.0, tensorboard=False, threads=1)


class Recorder(Callback):
    """Every hook as it is called, with what the state holds then; aliases for two of them."""

    def __init__(self):
        self.calls: list[tuple] = []

    def on_train_start(self, state):
        self.calls.append(("start", state.epoch, state.step))

    def on_epoch_start(self, state):  # alias of on_train_epoch_start
        self.calls.append(("epoch_start", state.epoch))

    def on_step_end(self, state):  # alias of on_train_batch_end
        self.calls.append(("batch", state.epoch, state.batch_idx, state.step, state.loss.item() > 0))

    def on_train_epoch_end(self, state):
        self.calls.append(("epoch_end", state.metrics["epoch"], len(state.history)))

    def on_train_end(self, state):
        self.calls.append(("end", state.summary["test_acc"]))


class StopAfterTwoEpochs:
    """Not a Callback subclass: any object with a hook will do."""

    def on_epoch_end(self, state):
        if state.metrics["epoch"] == 2:
            raise StopTraining


class ListLogger:
    def __init__(self):
        self.params, self.rows, self.status = {}, [], None

    def log_hyperparams(self, params):
        self.params = params

    def log_metrics(self, metrics, step):
        self.rows.append((step, metrics))

    def finalize(self, status):
        self.status = status


def wandb_records(path: Path):
    """The records of a W&B offline run file (`run-<id>.wandb`), parsed with wandb's own protobuf schema: the
    file is a LevelDB-style log (a 7-byte ':W&B' header, then 32 KiB blocks of chunks with 7-byte headers)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.fixture(scope="module")
def logged_run(cifar_tensor_slice, tmp_path_factory, monkeypatch_module):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch_module.delenv(var, raising=False)
    out = tmp_path_factory.mktemp("loggers") / "run"
    recorder, mine = Recorder(), ListLogger()
    result = fasttrain.fit("resnet9", cifar_tensor_slice, verbose=False, out=str(out), logger=["mlflow,wandb", mine],
                           callbacks=[recorder, StopAfterTwoEpochs()], **TINY)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return result, recorder, mine, rows


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow  # one run logging to MLflow (creating its SQLite store) and W&B: ~30 s
def test_callbacks_see_the_hooks_in_order_and_stop_the_run_cleanly(logged_run):
    result, recorder, _, rows = logged_run
    assert [r["epoch"] for r in rows] == [1, 2]  # 3 planned, stopped after the second
    assert result.summary["stopped_by"] == "callback" and result.summary["stopped_epoch"] == 2
    assert json.loads((result.run_dir / "summary.json").read_text())["stopped_epoch"] == 2
    expected = [("start", 0, 0)]
    for epoch in (0, 1):
        expected += [("epoch_start", epoch)]
        expected += [("batch", epoch, b, 2 * epoch + b + 1, True) for b in (0, 1)]
        expected += [("epoch_end", epoch + 1, epoch + 1)]
    expected += [("end", result.summary["test_acc"])]
    assert recorder.calls == expected


@pytest.mark.slow  # one run logging to MLflow (creating its SQLite store) and W&B: ~30 s
def test_mlflow_holds_the_run_as_mlflow_reads_it(logged_run):
    result, _, _, rows = logged_run
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{result.run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fasttrain")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.params["model"] == "resnet9" and run.data.params["model_kwargs"] == '{"width": 0.25}'
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["train_loss"])) for r in rows]
    assert run.data.metrics["summary/test_acc"] == pytest.approx(result.summary["test_acc"])


@pytest.mark.slow  # one run logging to MLflow (creating its SQLite store) and W&B: ~30 s
def test_wandb_offline_run_holds_the_run_as_wandb_wrote_it(logged_run):
    result, _, _, rows = logged_run
    (run_file,) = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, summary, config, name = {}, {}, {}, None
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name = record.run.display_name
            config.update({item_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({item_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            values = {item_key(i): json.loads(i.value_json) for i in record.history.item}
            history[values["_step"]] = values
        elif kind == "summary":
            summary.update({item_key(i): json.loads(i.value_json) for i in record.summary.update})
    assert name == result.run_dir.name and config["model"] == "resnet9"
    for row in rows:
        assert history[row["epoch"]]["train_loss"] == pytest.approx(row["train_loss"])
    assert summary["summary/test_acc"] == pytest.approx(result.summary["test_acc"])


@pytest.mark.slow  # one run logging to MLflow (creating its SQLite store) and W&B: ~30 s
def test_a_logger_object_gets_settings_rows_summary_and_the_end(logged_run):
    result, _, mine, rows = logged_run
    assert mine.params["model"] == "resnet9" and mine.params["logger"] == "mlflow,wandb"
    assert [step for step, _ in mine.rows] == [1, 2, 2]
    assert mine.rows[0][1] == rows[0] and mine.rows[2][1]["summary/test_acc"] == result.summary["test_acc"]
    assert mine.status == "success"


def test_missing_package_and_misspelt_names_are_one_error(cifar_tensor_slice, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    out = tmp_path / "run"
    args = ["run", "resnet9", "--width", "0.25", "--data", str(cifar_tensor_slice), "--out", str(out), "--epochs",
            "1", "--batch-size", "50", "--train-subset", "100", "--test-subset", "50", "--device", "cpu", "--threads",
            "1", "--no-tensorboard"]
    result = CliRunner().invoke(app, [*args, "--logger", "csv,wandb"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and errors == ["error: --logger wandb: the wandb package is not installed here: "
                                                "pip install wandb"], result.output
    assert not out.exists()  # a failed start leaves nothing
    result = CliRunner().invoke(app, [*args, "--logger", "mlfow"])
    assert result.exit_code == 2 and "--logger: must name some of" in result.output
    assert "did you mean mlflow" in result.output, result.output
    with pytest.raises(ConfigError, match="has hooks fasttrain does not call: on_validation_end"):
        fasttrain.fit("resnet9", cifar_tensor_slice, callbacks=[type("Val", (), {"on_validation_end": print})()])
    with pytest.raises(ConfigError, match="lacks log_metrics, finalize"):
        fasttrain.fit("resnet9", cifar_tensor_slice, logger=type("Half", (), {"log_hyperparams": print})())
