"""Model conversion: swap nn.Linear / nn.Conv2d for QuantLinear / QuantConv2d in place.

The API follows torchao's ``quantize_(model, config)``: a config object says
which layers (fnmatch patterns on module names) get which bit width and group
size; the model is changed in place and a per-layer report comes back.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fusenas._layer_select import as_patterns, selects
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear
from fusenas.quant.packed import parse_bits

logger = logging.getLogger("fusenas.quant")

_SUPPORTED_TYPES = (nn.Linear, nn.Conv2d)
_PER_LAYER_KEYS = ("bits", "group_size", "symmetric")


def _check_group_size(value: Any, name: str) -> None:
    if value is None or value == -1:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 16:
        raise ValueError(
            f"{name}: expected None (per-channel) or a positive multiple of 16, got {value!r}"
        )


@dataclass
class QuantConfig:
    """What :func:`quantize_` converts, and how.

    Attributes:
        bits: 2..8 or ``"ternary"``.
        group_size: elements of K per scale (a positive multiple of 16), or None
            for per-channel; layers whose K it does not divide fall back to
            per-channel (logged on the ``fusenas.quant`` logger).
        symmetric: symmetric codes or per-group zero points (ternary: symmetric only).
        include: fnmatch patterns on module names (``model.named_modules()``);
            a layer is converted when it matches one of them ...
        exclude: ... and none of these.
        types: layer types to convert, a subset of (nn.Linear, nn.Conv2d); matched
            by exact type (subclasses may have their own forward, and are left alone).
        per_layer: {name pattern: {"bits": .., "group_size": .., "symmetric": ..}}
            overrides; every matching pattern applies, later ones win.
    """

    bits: int | str = 4
    group_size: int | None = 128
    symmetric: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    types: tuple[type, ...] = _SUPPORTED_TYPES
    per_layer: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _, ternary = parse_bits(self.bits)
        _check_group_size(self.group_size, "group_size")
        if not isinstance(self.symmetric, bool):
            raise TypeError(f"symmetric: expected a bool, got {self.symmetric!r}")
        if ternary and not self.symmetric:
            raise ValueError("symmetric: ternary weights are symmetric; pass symmetric=True")
        self.include = as_patterns(self.include, "include")
        self.exclude = as_patterns(self.exclude, "exclude")
        types = (self.types,) if isinstance(self.types, type) else self.types
        if (
            not isinstance(types, (tuple, list))
            or not types
            or any(t not in _SUPPORTED_TYPES for t in types)
        ):
            raise ValueError(
                f"types: expected a non-empty subset of (nn.Linear, nn.Conv2d), got {types!r}"
            )
        self.types = tuple(types)
        if not isinstance(self.per_layer, Mapping):
            raise TypeError(
                f"per_layer: expected a dict {{pattern: settings}}, got {self.per_layer!r}"
            )
        for pattern, settings in self.per_layer.items():
            if not isinstance(pattern, str) or not isinstance(settings, Mapping):
                raise TypeError(f"per_layer: expected {{str: dict}}, got {pattern!r}: {settings!r}")
            unknown = set(settings) - set(_PER_LAYER_KEYS)
            if unknown:
                raise ValueError(
                    f"per_layer[{pattern!r}]: unknown keys {sorted(unknown)}; "
                    f"expected some of {list(_PER_LAYER_KEYS)}"
                )
            if "bits" in settings:
                parse_bits(settings["bits"])
            if "group_size" in settings:
                _check_group_size(settings["group_size"], f"per_layer[{pattern!r}].group_size")
            if "symmetric" in settings and not isinstance(settings["symmetric"], bool):
                raise TypeError(f"per_layer[{pattern!r}].symmetric: expected a bool")

    def selects(self, name: str) -> bool:
        """Whether the module called ``name`` passes include / exclude."""
        return selects(name, self.include, self.exclude)

    def settings_for(self, name: str) -> dict[str, Any]:
        """{"bits", "group_size", "symmetric"} for the module called ``name``."""
        out: dict[str, Any] = {
            "bits": self.bits,
            "group_size": self.group_size,
            "symmetric": self.symmetric,
        }
        for pattern, settings in self.per_layer.items():
            if fnmatch.fnmatchcase(name, pattern):
                out.update(settings)
        if parse_bits(out["bits"])[1] and not out["symmetric"]:
            raise ValueError(f"per_layer: layer {name!r} is ternary but symmetric=False")
        return out


def _skip_reason(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups} (QuantConv2d supports groups=1)"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
    return None


@torch.no_grad()
def _relative_error(w: torch.Tensor, q: QuantLinear | QuantConv2d) -> float:
    wf = w.detach().to(torch.float32)
    err = torch.linalg.vector_norm(wf - q.dequantized_weight().to(wf.device))
    return float(err / torch.linalg.vector_norm(wf).clamp_min(1e-30))


def quantize_(model: nn.Module, config: QuantConfig | None = None) -> list[dict[str, Any]]:
    """Replaces the selected nn.Linear / nn.Conv2d layers of ``model`` in place.

    Args:
        model: any nn.Module; its float weights are quantized where they live.
        config: a :class:`QuantConfig` (default: 4 bits, group size 128, symmetric).
    Returns:
        One dict per converted layer: ``name``, ``type`` ("Linear" / "Conv2d"),
        ``bits`` (int or "ternary"), ``group_size``, ``K``, ``N``, ``rel_error``
        (||W - dequant(Q(W))||_F / ||W||_F), ``fp32_bytes`` (N*K*4) and
        ``packed_bytes`` (codes + scales + zero points).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if config is None:
        config = QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config: expected a fusenas.QuantConfig, got {type(config).__name__}")
    # Resolve every layer's settings before touching the model: a bad config must
    # not leave it half converted.
    plan = []
    for name, module in model.named_modules():
        if type(module) not in config.types or not config.selects(name):
            continue
        if name == "":
            raise ValueError(
                "model: the model itself is a layer to convert and cannot be replaced in "
                "place; wrap it in an nn.Sequential or use QuantLinear/QuantConv2d.from_float"
            )
        reason = _skip_reason(module)
        if reason is not None:
            logger.warning("quantize_: leaving %s in float: %s", name, reason)
            continue
        plan.append((name, module, config.settings_for(name)))
    report: list[dict[str, Any]] = []
    for name, module, s in plan:
        n, k = module.weight.shape[0], module.weight[0].numel()
        group = s["group_size"]
        if group is not None and group != -1 and k % group != 0:
            logger.info(
                "quantize_: %s: group_size=%d does not divide K=%d; using per-channel scales",
                name, group, k,
            )  # fmt: skip
            group = None
        cls = QuantLinear if isinstance(module, nn.Linear) else QuantConv2d
        try:
            qmod = cls.from_float(module, s["bits"], group, s["symmetric"])
        except ValueError as exc:  # e.g. NaN / Inf weights
            raise ValueError(f"model: layer {name!r}: {exc}") from exc
        model.set_submodule(name, qmod)
        report.append(
            {
                "name": name,
                "type": type(module).__name__,
                "bits": "ternary" if qmod.ternary else qmod.bits,
                "group_size": qmod.group_size,
                "K": k,
                "N": n,
                "rel_error": _relative_error(module.weight, qmod),
                "fp32_bytes": n * k * 4,
                "packed_bytes": qmod.weight_bytes(),
            }
        )
    return report


def format_report(report: list[dict[str, Any]]) -> str:
    """The report of :func:`quantize_` as a plain-text table."""
    head = f"{'layer':<28} {'type':<7} {'bits':>7} {'group':>6} {'K':>6} {'N':>6} {'rel err':>8}"
    lines = [head, "-" * len(head)]
    for r in report:
        group = "chan" if r["group_size"] == r["K"] else str(r["group_size"])
        lines.append(
            f"{r['name']:<28} {r['type']:<7} {str(r['bits']):>7} {group:>6} {r['K']:>6} "
            f"{r['N']:>6} {r['rel_error']:>8.4f}"
        )
    return "\n".join(lines)
