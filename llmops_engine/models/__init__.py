"""Base models and tuned-model loading: the API shared by tuning, evaluation and serving.

Importing this package is cheap; torch/transformers/peft load on first use.
"""

from .loaded import Generation, LoadedModel, load_base, load_trained
from ..errors import ModelLoadError
from .loading import BaseModel, resolve_base

__all__ = ["BaseModel", "Generation", "LoadedModel", "ModelLoadError", "load_base", "load_trained", "resolve_base"]
