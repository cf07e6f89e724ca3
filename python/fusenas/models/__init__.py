"""Models fusenas trains, compresses and searches, rebuildable from a JSON-able spec.

Every model here carries ``model.spec = {"name": ..., "kwargs": {...}}``;
:func:`build_model` turns it back into the same architecture, which is how
checkpoints (``fusenas.quant.io``) store the architecture without pickle.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from fusenas.models.resnet_cifar import CifarResNet, resnet20, resnet32, resnet56
from fusenas.models.small_cnn import DATASET_SPECS, SmallCNN, small_cnn_for

_REGISTRY: dict[str, type[nn.Module]] = {"SmallCNN": SmallCNN, "CifarResNet": CifarResNet}


def _register_search_models() -> None:
    # Imported lazily: these pull in fusenas.search, which imports the ops.
    from fusenas.models.darts_network import DartsNetwork
    from fusenas.models.nb201_network import Nb201Network

    _REGISTRY.setdefault("DartsNetwork", DartsNetwork)
    _REGISTRY.setdefault("Nb201Network", Nb201Network)


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuilds a model from its ``spec`` (``{"name": "SmallCNN", "kwargs": {...}}``)."""
    _register_search_models()
    if not isinstance(spec, dict) or spec.get("name") not in _REGISTRY:
        raise ValueError(
            f"spec: expected {{'name': one of {sorted(_REGISTRY)}, 'kwargs': {{...}}}}, "
            f"got {spec!r}"
        )
    cls = _REGISTRY[spec["name"]]
    kwargs = spec.get("kwargs", {})
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if not isinstance(kwargs, dict) or set(kwargs) - allowed:
        raise ValueError(f"spec: unknown {spec['name']} arguments in {kwargs!r}")
    return cls(**kwargs)


__all__ = [
    "build_model",
    "SmallCNN",
    "small_cnn_for",
    "DATASET_SPECS",
    "CifarResNet",
    "resnet20",
    "resnet32",
    "resnet56",
]
