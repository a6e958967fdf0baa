"""The Python API answers empty or wrongly typed inputs with a ValueError / TypeError naming the argument,
not an error from deep inside numpy or torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from skimage import data as photos

import fasttrain
from fasttrain.api import Classifier


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    return Classifier(net, classes=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3, image_size=(32, 32),
                      model_name="tiny").eval()


PHOTO = photos.astronaut()[:32, :32]  # a real uint8 RGB crop


@pytest.mark.parametrize("images, error, message", [
    ([], ValueError, "images: empty"),
    (np.zeros((0, 32, 32, 3), np.uint8), ValueError, "images: empty"),
    (PHOTO.astype(np.float32) / 255, TypeError, r"images: .*got dtype torch.float32.*\* 255"),
    (torch.from_numpy(PHOTO).long(), TypeError, "images: .*got dtype torch.int64"),
    ([[1, 2], [3]], TypeError, "images: .*cannot make one array"),
    ("photo.jpg", TypeError, r"images: .*one path: pass a list, \['photo.jpg'\]"),
    (42, TypeError, "images: expected .* got int"),
    (["photo.jpg", PHOTO], TypeError, "images: a list mixing file paths"),
    (PHOTO[:16], ValueError, "images: the model was trained on 32x32 images"),
    (PHOTO[..., :2], ValueError, r"images: expected uint8 \(N, H, W, 3\)"),
])
def test_predict_names_bad_images(classifier, images, error, message):
    with pytest.raises(error, match=message):
        fasttrain.predict(classifier, images)


def test_predict_names_bad_options_and_models(classifier):
    with pytest.raises(ValueError, match="batch_size: must be an integer >= 1"):
        fasttrain.predict(classifier, PHOTO, batch_size=0)
    with pytest.raises(ValueError, match="tta: must be one of"):
        fasttrain.predict(classifier, PHOTO, tta="mirror")
    with pytest.raises(TypeError, match="model_or_run: expected a fasttrain Classifier"):
        fasttrain.predict(nn.Linear(2, 2), PHOTO)
    good = fasttrain.predict(classifier, PHOTO)  # one (H, W, C) image is a batch of one
    assert good.probs.shape == (1, 2) and good.names[0] in ("a", "b")


def test_fit_names_bad_data(tmp_path):
    images = np.stack([photos.astronaut()[:32, :32], photos.coffee()[:32, :32]])
    with pytest.raises(ValueError, match="data: expected a converted dataset directory"):
        fasttrain.fit("resnet9", 42, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="data: train_labels must be 2 integer class indices"):
        fasttrain.fit("resnet9", (images, np.array(["cat", "dog"]), images, np.array([0, 1])),
                      out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="data: test_images must be non-empty uint8 images"):
        fasttrain.fit("resnet9", (images, np.array([0, 1]), images[:0], np.array([], np.int64)),
                      out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
