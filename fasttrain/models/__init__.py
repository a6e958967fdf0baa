"""The model zoo: `create_model(name, num_classes, **kw)`; `list_models()` names them.

Importing this package imports every family below; each registers its models with `@register_model`
(the registry itself imports no family, as in timm). A new family is one file plus one line here."""

from .registry import MODELS, ModelError, create_model, get_entry, model_options, register_model
from .user_models import list_models  # the registry's names, after installed packages' entry points load

from . import (  # noqa: F401
    airbench,
    attention,
    customcnn,
    densenet,
    efficientnet,
    external,  # timm/<name> and modules given to fasttrain.fit, resolved on demand
    user_models,  # path/file.py:ClassName and packages' fasttrain.models entry points, found on demand
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

__all__ = ["MODELS", "ModelError", "create_model", "get_entry", "list_models", "model_options", "register_model"]
