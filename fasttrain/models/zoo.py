"""Imports every model family so their @register_model entries exist."""

from . import airbench, resnet, resnet9  # noqa: F401
