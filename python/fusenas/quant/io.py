"""Packed and float checkpoints as safetensors files (no pickle anywhere).

A file holds every tensor of ``model.state_dict()`` (packed ``codes`` /
``scales`` / ``zeros`` / ``bias`` of the k-bit layers plus the remaining float
parameters and buffers) and, under the header key ``"fusenas"``, one JSON
string:

    {"format": "fusenas", "kind": "packed" | "float", "format_version": 1,
     "fusenas_version": ..., "arch": {"name": "SmallCNN", "kwargs": {...}} | null,
     "layers": {module name: QuantLinear/QuantConv2d.describe()},
     "tensors": {name: {"dtype": "float32", "shape": [...]}},
     "sha256": digest of names, dtypes, shapes and bytes of all tensors,
     "user": {...}}

Loading trusts nothing: the format version, every layer description, every
tensor's presence, shape and dtype (codes must be (N, row_bytes(K, bits))) and
the digest are checked, and any problem (truncated file, edited header or
data) is a ValueError naming the file. Writes go to a temporary file in the
same directory, then ``os.replace``: a crash never leaves half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes
from torch import nn

from fusenas import weight_memory
from fusenas._atomic import atomic_write_bytes
from fusenas.nn.lowrank_conv import LowRankConv2d
from fusenas.nn.quant_conv import QuantConv2d
from fusenas.nn.quant_linear import QuantLinear
from fusenas.quant.packing import FORMAT_VERSION

HEADER_KEY = "fusenas"
KIND_PACKED = "packed"
KIND_FLOAT = "float"
_LAYER_TYPES: dict[str, type[nn.Module]] = {
    "QuantLinear": QuantLinear,
    "QuantConv2d": QuantConv2d,
    "LowRankConv2d": LowRankConv2d,  # float factors; a structural change, not a k-bit one
}
_KBIT_TYPES = ("QuantLinear", "QuantConv2d")
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.uint8, torch.int8,
        torch.int16, torch.int32, torch.int64, torch.bool,
    )
}  # fmt: skip


@dataclass
class ModelState:
    """What a checkpoint holds, checked.

    Attributes:
        path: the file it came from.
        kind: "packed" or "float".
        format_version: the fusenas packed-format version it was written with.
        tensors: name -> CPU tensor, exactly ``model.state_dict()`` at save time.
        layers: k-bit layer name -> description (bits, ternary, group_size,
            symmetric, shape [N, K], has_bias, type, and conv geometry for convs).
        arch: the architecture spec (see fusenas.models.build_model), or None.
        metadata: the user's metadata dict.
    """

    path: Path
    kind: str
    format_version: int
    tensors: dict[str, torch.Tensor]
    layers: dict[str, dict[str, Any]]
    arch: dict[str, Any] | None
    metadata: dict[str, Any]

    def load_into(self, model: nn.Module) -> nn.Module:
        """Swaps ``model``'s layers for the k-bit modules the file describes and
        loads every tensor (strictly: names and shapes must match). Returns ``model``.
        On a mismatch (ValueError) ``model`` may be left partly converted."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        try:
            for name, desc in self.layers.items():
                qmod = _LAYER_TYPES[desc["type"]].from_description(desc)
                if name == "":
                    raise ValueError("a k-bit layer as the whole model cannot be loaded in place")
                _check_replaceable(model.get_submodule(name), qmod, name)
                model.set_submodule(name, qmod)
            # assign=True keeps the saved dtypes (e.g. a bfloat16 bias); copies keep two
            # models built from one ModelState independent, large ones in huge-page
            # memory (weight_memory.py) for the kernels that stream them.
            tensors = {k: weight_memory.place(v, copy=True) for k, v in self.tensors.items()}
            model.load_state_dict(tensors, strict=True, assign=True)
        except (AttributeError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"model: does not match {self.path}: {exc}") from exc
        return model.eval()

    def build_model(self) -> nn.Module:
        """Rebuilds the saved model from ``arch`` (e.g. the demo's SmallCNN), in eval mode."""
        from fusenas.models import build_model

        if self.arch is None:
            raise ValueError(
                f"{self.path}: no architecture description; build the float model yourself "
                "and call load_into(model)"
            )
        try:
            model = build_model(self.arch)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.path}: bad architecture description: {exc}") from exc
        return self.load_into(model)


def _check_replaceable(old: nn.Module, new: nn.Module, name: str) -> None:
    """The layer a k-bit or low-rank module replaces must have its type and shape."""
    if isinstance(new, LowRankConv2d):
        geometry = ("in_channels", "out_channels", "kernel_size")
        if not isinstance(old, (nn.Conv2d, LowRankConv2d)) or any(
            tuple(_as_tuple(getattr(old, a))) != tuple(_as_tuple(getattr(new, a))) for a in geometry
        ):
            raise ValueError(f"layer {name!r} is {old!r}, the file holds {new!r}")
        return
    if isinstance(old, (QuantLinear, QuantConv2d)):
        kind, nk = type(old) is type(new), (old._n, old._k)
    elif isinstance(old, (nn.Linear, nn.Conv2d)):
        float_type = nn.Linear if isinstance(new, QuantLinear) else nn.Conv2d
        kind, nk = isinstance(old, float_type), (old.weight.shape[0], old.weight[0].numel())
    else:
        kind, nk = False, None
    if not kind or nk != (new._n, new._k):
        raise ValueError(f"layer {name!r} is {old!r}, the file holds {new!r}")


def _as_tuple(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def save_packed(
    model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Writes a model with QuantLinear / QuantConv2d layers to a safetensors file.

    Args:
        model: a model converted by :func:`fusenas.quantize_` (at least one k-bit layer).
        path: the file to write (its directory must exist); replaced atomically.
        metadata: JSON-serialisable dict stored with the file (e.g. dataset, accuracy).
            ``model.spec`` (if present) is stored as the architecture description.
    Returns:
        The path written.
    """
    layers = _check_model(model)
    if not any(d["type"] in _KBIT_TYPES for d in layers.values()):
        raise ValueError(
            "model: has no QuantLinear / QuantConv2d layers; call fusenas.quantize_ first "
            "(or save_float for a float checkpoint)"
        )
    return _save(model, path, metadata, KIND_PACKED, layers)


def save_float(
    model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None
) -> Path:
    """Writes a float model (its state_dict and ``model.spec``) to a safetensors file.

    LowRankConv2d layers (e.g. from decompose_ or TRP) are recorded so that
    loading rebuilds them in place of the spec's dense convs.
    """
    layers = _check_model(model)
    if any(d["type"] in _KBIT_TYPES for d in layers.values()):
        raise ValueError("model: has k-bit layers; use save_packed")
    return _save(model, path, metadata, KIND_FLOAT, layers)


def load_packed(path: str | os.PathLike) -> ModelState:
    """Reads and checks a file written by :func:`save_packed`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: anything wrong with the file (message names it): not
            safetensors, truncated, another format version, a layer description
            or tensor that does not match, a digest mismatch, a float checkpoint.
    """
    return _load(path, KIND_PACKED)


def load_float(path: str | os.PathLike) -> ModelState:
    """Reads and checks a file written by :func:`save_float` (errors as :func:`load_packed`)."""
    return _load(path, KIND_FLOAT)


def load_checkpoint(path: str | os.PathLike) -> ModelState:
    """Reads and checks a file written by :func:`save_packed` or :func:`save_float`,
    whichever it is (``kind`` says which; errors as :func:`load_packed`)."""
    return _load(path, None)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, ModelState]:
    """Rebuilds the model in a packed or float file that carries an architecture description."""
    state = load_checkpoint(path)
    return state.build_model(), state


def _check_model(model: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    return {
        name: m.describe()
        for name, m in model.named_modules()
        if isinstance(m, (QuantLinear, QuantConv2d, LowRankConv2d))
    }


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _save(
    model: nn.Module,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None,
    kind: str,
    layers: dict[str, dict[str, Any]],
) -> Path:
    from fusenas import __version__

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata: expected a dict, got {type(metadata).__name__}")
    arch = getattr(model, "spec", None)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in seen:
            t = t.clone()  # safetensors refuses tensors sharing memory
        if t.numel():
            seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    header = {
        "format": "fusenas",
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "fusenas_version": __version__,
        "arch": arch if isinstance(arch, dict) else None,
        "layers": layers,
        "tensors": {
            n: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            for n, t in tensors.items()
        },
        "sha256": _digest(tensors),
        "user": metadata,
    }
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata: must be JSON-serialisable ({exc})") from exc
    _atomic_save(tensors, {HEADER_KEY: text}, path)
    return path


def _atomic_save(tensors: dict[str, torch.Tensor], header: dict[str, str], path: Path) -> None:
    atomic_write_bytes(path, save_bytes(tensors, metadata=header))


def _load(path: str | os.PathLike, kind: str | None) -> ModelState:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no such file: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if raw is None:
        raise ValueError(f"{path}: not a fusenas checkpoint (no {HEADER_KEY!r} header entry)")
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the fusenas header is not valid JSON ({exc})") from exc
    try:
        return _check(path, header, tensors, kind)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: malformed fusenas header ({type(exc).__name__}: {exc})") from exc


def _check(
    path: Path, header: Any, tensors: dict[str, torch.Tensor], kind: str | None
) -> ModelState:
    if not isinstance(header, dict) or header.get("format") != "fusenas":
        raise ValueError(f"{path}: not a fusenas checkpoint")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version!r} found, version {FORMAT_VERSION} expected "
            "(written by another fusenas release)"
        )
    found_kind = header.get("kind")
    if found_kind not in (KIND_PACKED, KIND_FLOAT):
        raise ValueError(f"{path}: unknown checkpoint kind {found_kind!r}")
    if kind is not None and found_kind != kind:
        raise ValueError(f"{path}: a {found_kind} checkpoint, expected a {kind} one")
    layers, described, user = header["layers"], header["tensors"], header.get("user", {})
    if (
        not isinstance(layers, dict)
        or not isinstance(described, dict)
        or not isinstance(user, dict)
    ):
        raise ValueError(f"{path}: malformed fusenas header (layers / tensors / user)")
    if found_kind == KIND_PACKED and not any(
        isinstance(d, dict) and d.get("type") in _KBIT_TYPES for d in layers.values()
    ):
        raise ValueError(f"{path}: a packed checkpoint without k-bit layers")
    if set(described) != set(tensors):
        missing = sorted(set(described) - set(tensors))
        extra = sorted(set(tensors) - set(described))
        raise ValueError(f"{path}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
    for name, info in described.items():
        t = tensors[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None or t.dtype != dtype or list(t.shape) != list(info["shape"]):
            raise ValueError(
                f"{path}: tensor {name!r} is {str(t.dtype)} {list(t.shape)}, the header says "
                f"{info['dtype']} {info['shape']}"
            )
    for name, desc in layers.items():
        _check_layer(path, name, desc, tensors)
    if header.get("sha256") != _digest(tensors):
        raise ValueError(f"{path}: tensor data does not match its digest (corrupted or edited)")
    arch = header.get("arch")
    if arch is not None and not isinstance(arch, dict):
        raise ValueError(f"{path}: malformed architecture description")
    return ModelState(path, found_kind, version, tensors, layers, arch, user)


def _check_layer(path: Path, name: str, desc: Any, tensors: dict[str, torch.Tensor]) -> None:
    """The layer's description must build a module whose buffers match the file's tensors."""
    if not isinstance(desc, dict) or desc.get("type") not in _LAYER_TYPES:
        raise ValueError(f"{path}: layer {name!r}: unknown layer description {desc!r}")
    try:
        qmod = _LAYER_TYPES[desc["type"]].from_description(desc)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: layer {name!r}: bad description ({exc})") from exc
    if qmod.describe() != desc:
        raise ValueError(
            f"{path}: layer {name!r}: inconsistent description {desc!r} "
            f"(its geometry and settings give {qmod.describe()!r})"
        )
    prefix = f"{name}." if name else ""
    for key, want in qmod.state_dict().items():
        t = tensors.get(prefix + key)
        if t is None:
            raise ValueError(f"{path}: layer {name!r}: tensor {prefix + key!r} is missing")
        dtype_ok = t.is_floating_point() if key == "bias" else t.dtype == want.dtype
        if t.shape != want.shape or not dtype_ok:
            raise ValueError(
                f"{path}: layer {name!r}: {key} is {str(t.dtype)} {tuple(t.shape)}, expected "
                f"{str(want.dtype)} {tuple(want.shape)}"
            )
