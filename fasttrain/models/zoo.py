"""Imports every model family so their @register_model entries exist."""

from . import (  # noqa: F401
    airbench,
    attention,
    customcnn,
    densenet,
    efficientnet,
    external,
    ibn,
    inception,
    mobilenetv2,
    pyramidnet,
    resnest,
    resnet,
    resnet9,
    resnetv2,
    resnext,
    senet,
    tresnet,
    wrn,
    xception,
)
