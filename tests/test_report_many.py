"""`fasttrain report` over 20+ runs stays readable: the table is grouped by dataset and ranked within each,
it gains a column for each setting that differs among the runs (and only those), and the overlay plot
gives every run its own look with the legend outside the axes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import fasttrain
from fasttrain.cli import app
from fasttrain.report import COLUMNS

TINY = dict(recipe="cpu-quick", epochs=2, batch_size=25, test_subset=20, threads=1, tensorboard=False,
            device="cpu", verbose=False)


@pytest.fixture(scope="module")
def many_runs(cifar_tensor_slice, tmp_path_factory):
    """Four real runs (three on cifar10 differing in lr, width and train samples, one on in-memory arrays),
    plus 21 copies of the first kept under other names: 25 run folders."""
    root = tmp_path_factory.mktemp("report_many")
    for name, lr, width, samples in (("lr1", 1.0, 0.125, 50), ("lr05", 0.5, 0.125, 50), ("wide", 1.0, 0.25, 75)):
        fasttrain.fit("airbench", cifar_tensor_slice, lr=lr, model_kwargs={"width": width}, train_subset=samples,
                      out=root / name, **TINY)
    arrays = {f"{split}_{kind}": np.load(cifar_tensor_slice / f"{split}_{kind}.npy")
              for split in ("train", "test") for kind in ("images", "labels")}
    fasttrain.fit("airbench", arrays, lr=1.0, model_kwargs={"width": 0.125}, train_subset=50, out=root / "arrays",
                  **TINY)
    for i in range(21):
        shutil.copytree(root / "lr1", root / f"copy{i:02d}")
    return root, sorted(p for p in root.iterdir() if p.is_dir())


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def test_report_groups_by_dataset_and_shows_what_differs(many_runs, tmp_path):
    root, dirs = many_runs
    assert len(dirs) == 25
    res = invoke("report", *dirs, "--plot", tmp_path / "runs.png", "--json", tmp_path / "rows.json")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    datasets = [r["dataset"] for r in rows]
    assert sorted(set(datasets)) == ["cifar10", "in-memory"]
    assert datasets == sorted(datasets)  # grouped: each dataset's runs together
    for name in set(datasets):
        accs = [r["test_acc"] for r in rows if r["dataset"] == name]
        assert accs == sorted(accs, reverse=True)  # ranked within the dataset
    # the settings that differ have columns with each run's value; equal ones (seed, optimizer) do not
    by_run = {r["run"]: r for r in rows}
    assert (by_run["lr05"]["lr"], by_run["wide"]["width"], by_run["wide"]["train_samples"]) == (0.5, 0.25, 75)
    assert by_run["lr1"]["lr"] == 1.0 and by_run["lr1"]["width"] == 0.125 and by_run["lr1"]["train_samples"] == 50
    assert not {"seed", "optimizer", "batch_size", "out", "data"} & set(rows[0])
    header = next(line for line in res.stdout.splitlines() if "test_acc" in line)
    assert all(f" {col} " in header for col in ("width", "lr", "train_samples"))
    assert " seed " not in header and "plot" in header
    assert "2 datasets, ranked within each" in res.stdout
    assert (tmp_path / "runs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # copies of one run differ in nothing: no setting column at all
    res = invoke("report", root / "copy00", root / "copy01", "--json", tmp_path / "same.json", "--force")
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "same.json").read_text())["rows"][0]) == set(COLUMNS)


def test_overlay_gives_each_run_its_own_look_and_keeps_the_legend_outside(many_runs):
    from fasttrain.plots import overlay_figure, run_styles
    from fasttrain.report import load_run

    _, dirs = many_runs
    styles = run_styles(len(dirs))
    assert len(set(styles)) == len(dirs) == 25
    assert len(set(run_styles(160))) == 160
    runs = [(d.name, load_run(d)["history"], style) for d, style in zip(dirs, styles)]
    fig = overlay_figure([("cifar10", runs)])
    fig.canvas.draw()
    ax_epoch, ax_time = fig.axes
    # one look per run on the axes: the solid (evaluated) curves' colour and marker
    looks = {(line.get_color(), line.get_marker()) for line in ax_epoch.get_lines() if line.get_linestyle() == "-"}
    assert looks == set(styles)
    legend = ax_time.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [d.name for d in dirs]
    renderer = fig.canvas.get_renderer()
    legend_box, axes_box = legend.get_window_extent(renderer), ax_time.get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1  # beside the curves, not over them
    assert legend_box.x1 <= fig.bbox.x1 and legend_box.y0 >= fig.bbox.y0  # and inside the picture


def test_whole_epochs_get_whole_ticks():
    from fasttrain.plots import overlay_figure

    history = [{"epoch": e, "train_acc": 0.1 * e, "test_acc": 0.1 * e, "epoch_s": 1.0} for e in (1, 2, 3, 4, 5)]
    fig = overlay_figure([("d", [("run", history, ("#1f77b4", "o"))])])
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 5]
    assert ticks and all(float(t).is_integer() for t in ticks)
