"""The Serve application of a Deployment (the import path in serving.config).

    client ──HTTP──► ingress (FastAPI) ──handle──► blue  (ModelSlot: one model version)
                     weights, auth,    └─handle──► green (ModelSlot: the other version)
                     limits, metrics, log

Imported by the Ray cluster; never by `plan`.
"""

from typing import Any

from .config import INGRESS, SLOTS
from .ingress import Ingress
from .slot import ModelSlot


def build(args: dict[str, Any]):
    """Application builder (the import path). The shape never depends on args: see config.py."""
    blue = ModelSlot.options(name=SLOTS[0]).bind()
    green = ModelSlot.options(name=SLOTS[1]).bind()
    return Ingress.options(name=INGRESS).bind(blue, green)
