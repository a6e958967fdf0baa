"""Starting a run from weights other tools wrote: `--init-from` a safetensors file, a torch state dict (with a
DDP prefix), a timm training checkpoint, torchvision's ResNet-18 (names differ from the zoo's: matched by
order); the head of another class count re-initialised and said so; `timm/<name> --pretrained` through
timm's own loader from a local Hugging Face cache the test fills itself, and one error line when the cache
lacks them. Every weight file is written here, from a real timm / torchvision model: nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import fasttrain
from fasttrain import checkpoint as ckpt_io
from fasttrain.cli import app

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = dict(epochs=1, batch_size=50, train_subset=100, test_subset=50, device="cpu", amp="off", compile=False,
            tta="none", lr=1e-9, schedule="constant", warmup_frac=0.0, tensorboard=False, threads=1)
TINY_ARGS = ["--epochs", "1", "--batch-size", "50", "--train-subset", "100", "--test-subset", "50", "--device",
             "cpu", "--amp", "off", "--no-compile", "--tta", "none", "--lr", "1e-9", "--schedule", "constant",
             "--warmup-frac", "0", "--no-tensorboard", "--threads", "1"]


def imagenet_test_resnet() -> dict[str, torch.Tensor]:
    """A 1000-class timm test_resnet's weights, as a file from elsewhere would hold them."""
    torch.manual_seed(123)
    return timm.create_model("test_resnet", num_classes=1000).state_dict()


def convs(state: dict) -> list[str]:
    return [k for k, v in state.items() if k.endswith("weight") and v.ndim == 4]


def assert_started_from(saved: dict, run: Path, rename=lambda k: k) -> None:
    """The run's convolutions are the saved ones (lr 1e-9: one step moves them by ~1e-9)."""
    trained = ckpt_io.load(run / "checkpoint.pt")["model"]
    keys = convs(saved)
    assert keys and all(torch.allclose(saved[k], trained[rename(k)], atol=1e-6) for k in keys)


@pytest.mark.parametrize("kind", ["safetensors", "timm_checkpoint"])
def test_init_from_a_weight_file_of_another_class_count(kind, cifar_tensor_slice, tmp_path, capsys):
    saved = imagenet_test_resnet()
    if kind == "safetensors":
        path = tmp_path / "weights.safetensors"
        safetensors_torch.save_file(saved, str(path))
    else:  # timm's train.py layout: the EMA's weights and the model's, besides plain training state
        path = tmp_path / "model_best.pth.tar"
        ema = {k: v + 1 if v.is_floating_point() else v for k, v in saved.items()}
        torch.save({"epoch": 3, "arch": "test_resnet", "state_dict": saved, "state_dict_ema": ema}, path)
        saved = ema
    fasttrain.fit("timm/test_resnet", cifar_tensor_slice, verbose=True, out=str(tmp_path / "run"),
                  init_from=str(path), **TINY)
    log = capsys.readouterr().out
    assert f"initial weights: {path}" in log
    assert "head re-initialised for 10 classes (was 1000): fc.bias, fc.weight" in log
    if kind == "timm_checkpoint":
        assert "checkpoint 'state_dict_ema'" in log  # the EMA, as timm's own load_checkpoint prefers
    assert_started_from(saved, tmp_path / "run")


def test_init_from_torchvision_resnet18_matches_by_order_through_the_cli(cifar_tensor_slice, tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()  # torchvision's names: layer1.0.downsample, ...
    path = tmp_path / "resnet18_tv.pth"
    torch.save({"module." + k: v for k, v in saved.items()}, path)  # as DistributedDataParallel saves it
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "resnet18", "--set", "model_kwargs.stem=imagenet", "--data",
                                      str(cifar_tensor_slice), "--out", str(out), "--init-from", str(path), *TINY_ARGS])
    assert result.exit_code == 0, result.output[-2000:]
    assert "122 tensors matched by order, e.g. conv1.weight -> stem.0.weight" in result.output
    assert "head re-initialised for 10 classes (was 1000): fc.bias, fc.weight" in result.output
    zoo_names = list(ckpt_io.load(out / "checkpoint.pt")["model"])
    to_zoo = dict(zip(saved, zoo_names))
    assert_started_from(saved, out, rename=to_zoo.get)


def test_weights_of_another_network_are_refused_in_one_line(cifar_tensor_slice, tmp_path):
    path = tmp_path / "effnet.safetensors"
    safetensors_torch.save_file(timm.create_model("test_efficientnet").state_dict(), str(path))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "timm/test_resnet", "--data", str(cifar_tensor_slice), "--out", str(out),
                                      "--init-from", str(path), *TINY_ARGS])
    assert result.exit_code == 2, result.output
    error = the_error(result.output)
    assert error.startswith("error: --init-from") and "do not fit this model" in error and "nor do they by order" in error
    assert not out.exists()  # a failed start leaves nothing
    torch.save([1, 2], tmp_path / "list.pt")
    result = CliRunner().invoke(app, ["run", "timm/test_resnet", "--data", str(cifar_tensor_slice), "--out", str(out),
                                      "--init-from", str(tmp_path / "list.pt"), *TINY_ARGS])
    assert result.exit_code == 2 and "holds a list, not a state dict" in result.output, result.output


def the_error(output: str) -> str:
    """The one `error:` line of a refused command (besides notes such as "has no recipe"), no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def hf_cache_with(root: Path, repo_id: str, state: dict) -> Path:
    """A Hugging Face hub cache holding `state` as repo_id's model.safetensors, laid out as huggingface_hub's
    download leaves it (refs/main -> snapshots/<commit>/)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    safetensors_torch.save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    return root


def test_timm_pretrained_from_the_local_cache(cifar_tensor_slice, tmp_path, monkeypatch):
    from huggingface_hub import constants

    saved = imagenet_test_resnet()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache_with(tmp_path / "hub", "timm/test_resnet.r160_in1k",
                                                                      saved)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # had anything tried the network, it would fail
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "timm/test_resnet", "--pretrained", "--data", str(cifar_tensor_slice),
                                      "--out", str(out), *TINY_ARGS])
    assert result.exit_code == 0, result.output[-2000:]
    assert_started_from(saved, out)
    trained = ckpt_io.load(out / "checkpoint.pt")
    assert trained["model"]["fc.weight"].shape == (10, saved["fc.weight"].shape[1])  # timm re-made the head
    assert trained["config"]["model_kwargs"] == {"pretrained": True}


def test_timm_pretrained_missing_from_the_cache_is_one_error(cifar_tensor_slice, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "timm/test_resnet", "--pretrained", "--data", str(cifar_tensor_slice),
                                      "--out", str(out), *TINY_ARGS])
    assert result.exit_code == 2, result.output
    error = the_error(result.output)
    assert error.startswith("error: model timm/test_resnet --pretrained"), error
    assert "timm/test_resnet.r160_in1k are not in the local Hugging Face cache" in error
    assert str(tmp_path / "empty-hub") in error and "--init-from FILE" in error
    assert not out.exists()
    zoo = CliRunner().invoke(app, ["run", "resnet9", "--pretrained", "--data", str(cifar_tensor_slice), "--out",
                                   str(out), *TINY_ARGS])
    assert zoo.exit_code == 2 and "does not take --pretrained" in zoo.output, zoo.output
