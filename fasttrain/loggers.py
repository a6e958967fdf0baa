"""Experiment trackers a run logs to besides its own files: `--logger mlflow,wandb` (RunConfig.logger) and
logger objects given to `fasttrain.fit(logger=...)`.

metrics.jsonl and metrics.csv are always written, TensorBoard files unless --no-tensorboard (runlog.RunLog);
`--logger` may name them too (`tensorboard,csv,mlflow,wandb`), and naming tensorboard makes its package
required. Each tracker gets the run's settings once, each epoch's metrics row (step = the epoch) and at the
end the summary's numbers as `summary/<name>`:
  - mlflow: to $MLFLOW_TRACKING_URI when set, else an SQLite store in the run folder (mlflow.db, artifacts in
    mlartifacts/); experiment $MLFLOW_EXPERIMENT_NAME or "fasttrain"; the MLflow run is named after the run
    folder. Read it back with `mlflow.MlflowClient(tracking_uri="sqlite:///RUN/mlflow.db")` or `mlflow ui
    --backend-store-uri sqlite:///RUN/mlflow.db`.
  - wandb: offline (files in RUN/wandb/; `wandb sync RUN/wandb/offline-run-*` uploads them), unless
    $WANDB_MODE says otherwise; project $WANDB_PROJECT or "fasttrain".
A resumed run starts a new tracker run that holds its whole history (the finished epochs are logged again).
A run that stops on a signal or an error is marked KILLED / failed by the tracker's own exit handling.

A logger object of your own needs Lightning's method names: `log_hyperparams(params: dict)`,
`log_metrics(metrics: dict, step: int)` and `finalize(status: str)` ("success").
"""

from __future__ import annotations

import atexit
import importlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from .choices import LOGGERS
from .config import ConfigError, RunConfig

INSTALL = {"tensorboard": "pip install tensorboard", "mlflow": "pip install mlflow", "wandb": "pip install wandb"}
LOGGER_METHODS = ("log_hyperparams", "log_metrics", "finalize")


def logger_names(text: str) -> list[str]:
    """'tensorboard, mlflow' -> ['tensorboard', 'mlflow']."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def open_loggers(cfg: RunConfig, out_dir: Path, extra: list | tuple = ()) -> list:
    """The trackers cfg.logger names plus `extra` (a user's logger objects), each given the run's settings."""
    names = logger_names(cfg.logger)
    for name in names:
        if name in INSTALL:
            try:
                importlib.import_module(name)
            except ImportError:
                raise ConfigError(f"--logger {name}: the {name} package is not installed here: "
                                  f"{INSTALL[name]}") from None
    if "tensorboard" in names and not cfg.tensorboard:
        raise ConfigError("--logger tensorboard contradicts --no-tensorboard; drop one of them")
    loggers = [{"mlflow": MLflowLogger, "wandb": WandbLogger}[n](out_dir, cfg) for n in names if n in ("mlflow", "wandb")]
    loggers += list(extra)
    params = flat_params(cfg.to_dict())
    for logger in loggers:
        logger.log_hyperparams(params)
    return loggers


def check_logger_object(obj: Any) -> None:
    missing = [m for m in LOGGER_METHODS if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(f"logger: {type(obj).__name__} lacks {', '.join(missing)}; a logger takes "
                          f"log_hyperparams(params), log_metrics(metrics, step) and finalize(status), or name "
                          f"built-in ones: {', '.join(LOGGERS)}")


def numbers(row: dict) -> dict[str, float]:
    """The numeric entries of a metrics row or summary (no None, no booleans, no strings)."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_params(config: dict) -> dict[str, str]:
    """Settings as strings, dicts as JSON (trackers store parameters as text)."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else str(v)
            for k, v in config.items()}


# ============================================================================ MLflow
class MLflowLogger:
    """MLflow through its client API (no global active run, so a notebook's own MLflow run is left alone)."""

    def __init__(self, out_dir: Path, cfg: RunConfig):
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        artifacts = None
        if not uri:  # a local store in the run folder
            uri = f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"
            artifacts = (Path(out_dir).resolve() / "mlartifacts").as_uri()
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables"
            logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "fasttrain")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(name, artifact_location=artifacts))
        run = self.client.create_run(experiment_id, run_name=Path(out_dir).name,
                                     tags={"fasttrain.run_dir": str(Path(out_dir).resolve()),
                                           "fasttrain.model": cfg.model})
        self.run_id, self.uri, self.done = run.info.run_id, uri, False
        atexit.register(self._end_if_open)  # a run stopped by a signal or an error: KILLED, not RUNNING

    def log_hyperparams(self, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers(metrics).items()])

    def finalize(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "success" else "FAILED")
        self.done = True

    def _end_if_open(self) -> None:
        if not self.done:
            self.client.set_terminated(self.run_id, "KILLED")
            self.done = True


# ============================================================================ Weights & Biases
class WandbLogger:
    def __init__(self, out_dir: Path, cfg: RunConfig):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fasttrain"), dir=str(out_dir),
                              mode=os.environ.get("WANDB_MODE", "offline"), name=Path(out_dir).name,
                              reinit="create_new",  # a notebook's own W&B run stays as it is
                              settings=wandb.Settings(silent=True, console="off"))

    def log_hyperparams(self, params: dict) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.run.log(numbers(metrics), step=step)

    def finalize(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "success" else 1)
