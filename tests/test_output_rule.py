"""The output rule over every command that writes a file outside a run folder or a dataset (eval --out,
report --plot/--json, zoo --out/--markdown, export --out): a user's file is never replaced without --force
(compared byte for byte), a folder never, not even with --force; a missing parent folder is created; a file
where a folder is expected is one `error:` line, exit 2. Outputs fasttrain wrote are replaced without --force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data as photos
from typer.testing import CliRunner

import fasttrain
from fasttrain.cli import app
from fasttrain.data.tensor_format import Split, write_tensor_dataset
from fasttrain.outputs import OutputError, claim, publish, written_by_fasttrain


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-epoch run of a tiny resnet9 on 32x32 crops of real photos (two classes)."""
    crops = []
    for photo in (photos.astronaut(), photos.coffee(), photos.chelsea(), photos.rocket()):
        crops += [photo[y:y + 32, x:x + 32] for y in range(0, 320, 64) for x in range(0, 320, 64)]
    images = np.stack(crops).astype(np.uint8)
    labels = np.repeat(np.arange(4) % 2, 25)
    root = tmp_path_factory.mktemp("output_rule")
    splits = {"train": Split(images[::2], labels[::2]), "test": Split(images[1::2], labels[1::2])}
    dataset = write_tensor_dataset(root / "data", splits, ["left", "right"], name="photos", source="skimage.data")
    out = root / "run"
    fasttrain.fit("resnet9", dataset, verbose=False, out=str(out),
                  model_kwargs={"width": 0.125}, epochs=1, batch_size=25, device="cpu", amp="off",
                  compile=False, tta="none", tensorboard=False)
    return out


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


USER_BYTES = b"the user's own file \x00\xff"
# (command, the user's files before it runs, its arguments (`{tmp}` and `{run}` filled in), exit code, what
# the one error line names). Every user file must be byte-identical afterwards unless --force names it.
CASES = {
    "eval --out over the user's files": (
        ["out/metrics.json", "out/confusion.png", "out/notes.txt"],
        ["eval", "{run}", "--device", "cpu", "--out", "{tmp}/out"], 2, "metrics.json, confusion.png"),
    "eval --out a file": (
        ["out.txt"], ["eval", "{run}", "--device", "cpu", "--out", "{tmp}/out.txt"], 2, "is a file, not a folder"),
    "eval --out a new nested folder": (
        [], ["eval", "{run}", "--device", "cpu", "--out", "{tmp}/new/nested"], 0, None),
    "eval --out --force replaces files only": (
        ["out/notes.txt"], ["eval", "{run}", "--device", "cpu", "--out", "{tmp}/out", "--force"], 0, None),
    "eval --out where an output name is a folder, even with --force": (
        ["out/metrics.json/mine.txt"],
        ["eval", "{run}", "--device", "cpu", "--out", "{tmp}/out", "--force"], 2, "is a folder"),
    "report --plot over the user's picture": (
        ["figure.png"], ["report", "{run}", "--plot", "{tmp}/figure.png"], 2, "fasttrain did not write it"),
    "report --json over the user's table": (
        ["table.json"], ["report", "{run}", "--json", "{tmp}/table.json"], 2, "fasttrain did not write it"),
    "report --plot into a missing folder": (
        [], ["report", "{run}", "--plot", "{tmp}/no/such/p.png"], 0, None),
    "report --plot under a file": (
        ["notes"], ["report", "{run}", "--plot", "{tmp}/notes/p.png"], 2, "is a file, not a folder"),
    "report --plot --force on a folder": (
        ["p.png/inside.txt"], ["report", "{run}", "--plot", "{tmp}/p.png", "--force"], 2, "is a folder"),
    "zoo --out over the user's file": (
        ["zoo.json"], ["zoo", "--models", "resnet9", "--out", "{tmp}/zoo.json"], 2, "fasttrain did not write it"),
    "zoo --markdown over the user's page": (
        ["zoo.md"], ["zoo", "--models", "resnet9", "--markdown", "{tmp}/zoo.md"], 2, "fasttrain did not write it"),
    "export --out over the user's file": (
        ["model.safetensors"], ["export", "{run}", "--format", "safetensors", "--out", "{tmp}/model.safetensors"],
        2, "fasttrain did not write it"),
    "export --out a folder, even with --force": (
        ["m.safetensors/inside.txt"],
        ["export", "{run}", "--format", "safetensors", "--out", "{tmp}/m.safetensors", "--force"], 2, "is a folder"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_writing_command_keeps_the_users_files(case, run_dir, tmp_path):
    user_files, args, code, named = CASES[case]
    for name in user_files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(USER_BYTES)
    res = invoke(*[a.format(tmp=tmp_path, run=run_dir) for a in args])
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    if named is not None:
        errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and named in errors[0], res.stderr
        assert str(tmp_path) in errors[0]  # the path is named
    forced = "--force" in args and code == 0
    for name in user_files:
        replaced = forced and Path(name).name in ("metrics.json", "confusion.json", "confusion.png")
        assert replaced or (tmp_path / name).read_bytes() == USER_BYTES, name
    if code == 2:  # nothing written next to the user's files (checked before any work)
        made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
        assert made == set(user_files)
    leftovers = [p for p in tmp_path.rglob(".*") if p.is_file()]
    assert not leftovers  # no temporary files left


def test_outputs_fasttrain_wrote_are_replaced_without_force(run_dir, tmp_path):
    for args in (["eval", run_dir, "--device", "cpu", "--out", tmp_path / "eval"],
                 ["report", run_dir, "--plot", tmp_path / "p.svg", "--json", tmp_path / "rows.json"],
                 ["zoo", "--models", "resnet9", "--out", tmp_path / "zoo.json", "--markdown", tmp_path / "zoo.md"]):
        for _ in range(2):
            res = invoke(*args)
            assert res.exit_code == 0, res.output
    for name in ("eval/metrics.json", "eval/confusion.json", "eval/confusion.png", "p.svg", "rows.json",
                 "zoo.json", "zoo.md"):
        assert written_by_fasttrain(tmp_path / name), name
    import json

    rows = json.loads((tmp_path / "rows.json").read_text())
    assert rows["writer"] == "fasttrain" and rows["rows"][0]["run"] == run_dir.name


def test_a_file_that_appears_while_writing_is_kept(tmp_path):
    path = tmp_path / "figure.png"
    target = claim(path, option="--plot")

    def write(f):
        f.write(b"ours")
        path.write_bytes(USER_BYTES)  # the user saves their picture there meanwhile

    with pytest.raises(OutputError, match="appeared"):
        publish(target, write)
    assert path.read_bytes() == USER_BYTES
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]


def test_a_users_look_alike_files_are_not_taken_for_ours(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    for suffix in ("png", "svg", "pdf"):  # matplotlib's own pictures, without fasttrain's signature
        fig.savefig(tmp_path / f"mine.{suffix}")
        assert not written_by_fasttrain(tmp_path / f"mine.{suffix}")
    plt.close(fig)
    (tmp_path / "list.json").write_text('[{"writer": "fasttrain"}]')
    (tmp_path / "other.json").write_text('{"writer": "someone"}')
    (tmp_path / "page.md").write_text("# notes\n<!-- written by fasttrain -->\n")
    assert not any(written_by_fasttrain(tmp_path / n) for n in ("list.json", "other.json", "page.md"))
