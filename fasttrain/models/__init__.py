"""The model zoo: `create_model(name, num_classes, **kw)`; `list_models()` names them."""

from .registry import MODELS, create_model, get_entry, list_models, model_options, register_model

__all__ = ["MODELS", "create_model", "get_entry", "list_models", "model_options", "register_model"]
