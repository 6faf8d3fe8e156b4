"""The Serve applications (the import paths in serving.config).

A Deployment's app:
    gateway ──handle──► ingress ──handle──► blue  (ModelSlot: one model version)
    (or HTTP at an      weights,  └─handle──► green (ModelSlot: the other version)
     explicit prefix)   outcomes

The project's gateway app: one `Gateway` deployment, HTTP at "/" (see gateway.py).

Imported by the Ray cluster; never by `plan`.
"""

from typing import Any

from .config import GATEWAY, INGRESS, SLOTS
from .gateway import Gateway
from .ingress import Ingress
from .slot import ModelSlot


def build(args: dict[str, Any]):
    """Application builder of a Deployment. The shape never depends on args: see config.py."""
    blue = ModelSlot.options(name=SLOTS[0]).bind()
    green = ModelSlot.options(name=SLOTS[1]).bind()
    return Ingress.options(name=INGRESS).bind(blue, green)


def build_gateway(args: dict[str, Any]):
    """Application builder of the project's gateway; what it routes is its user_config."""
    return Gateway.options(name=GATEWAY).bind()
