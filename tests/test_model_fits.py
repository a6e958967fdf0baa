"""runtime.check_model_fits: a model too large for the machine is refused by name before anything is
allocated; a model that cannot be sized on the meta device is not estimated, and its real build decides."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from fasttrain.config import ConfigError
from fasttrain.models.registry import MODELS, register_model
from fasttrain.runtime import available_memory, check_model_fits


@contextlib.contextmanager
def registered(name: str, factory):
    register_model(name, family="test")(factory)
    try:
        yield
    finally:
        MODELS.pop(name, None)


def test_a_model_larger_than_memory_is_refused_naming_its_size():
    if available_memory(torch.device("cpu")) is None:
        pytest.skip("this machine does not say how much memory it has (no /proc/meminfo)")

    def huge(num_classes: int = 10, width: float = 1.0) -> nn.Module:  # 10^12 parameters: 8 TB with gradients
        return nn.Linear(int(1_000_000 * width), 1_000_000)

    with registered("test_huge", huge):
        with pytest.raises(ConfigError, match=r"test_huge with --width 1: 1e\+12 parameters need at least"):
            check_model_fits("test_huge", 10, {"width": 1.0}, torch.device("cpu"))
        check_model_fits("test_huge", 10, {"width": 1e-6}, torch.device("cpu"))  # 10^6 parameters: fits


def test_a_model_that_computes_in_its_constructor_is_not_estimated():
    def computing(num_classes: int = 10) -> nn.Module:
        layer = nn.Linear(4, num_classes)
        scale = float(layer.weight.abs().max().item())  # a value: impossible on the meta device
        layer.weight.data.div_(scale)
        return layer

    with registered("test_computing", computing):
        with torch.device("meta"), pytest.raises((RuntimeError, NotImplementedError)):
            computing()  # what check_model_fits meets
        check_model_fits("test_computing", 10, {}, torch.device("cpu"))  # no estimate, no error
        assert isinstance(MODELS["test_computing"].fn(), nn.Linear)  # the real build still works
