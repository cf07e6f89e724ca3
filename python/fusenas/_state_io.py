"""Training state (model, optimisers, schedulers, RNGs) in one safetensors file, no pickle.

A state is a tree of dicts / lists / tuples whose leaves are tensors, numbers,
strings, bools or None (what ``state_dict()`` of models, optimisers and LR
schedulers holds). Tensors go into the safetensors payload under their tree
path; the rest of the tree goes into the header as JSON with each tensor
replaced by a reference. Loading never runs pickle, so a checkpoint from an
untrusted source cannot execute code. Files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from fusenas._atomic import atomic_write_bytes

FORMAT = "fusenas-state-v1"
_TENSOR = "__tensor__"


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "."
        t = obj.detach().cpu()
        # safetensors stores dense contiguous tensors without shared memory.
        tensors[key] = t.contiguous().clone() if t.numel() else t.contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"state: dict keys must be str or int, got {k!r} at {path!r}")
            # JSON object keys are strings; remember int keys (optimizer state ids).
            skey = f"i:{k}" if isinstance(k, int) else f"s:{k}"
            out[skey] = _flatten(v, f"{path}/{k}", tensors)
        return {"__dict__": out}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and obj != obj:  # NaN survives as a tagged value
            return {"__float__": "nan"}
        if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
            return {"__float__": "inf" if obj > 0 else "-inf"}
        return obj
    raise TypeError(f"state: cannot store a {type(obj).__name__} at {path or '/'!r}")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        out = {}
        for skey, v in obj["__dict__"].items():
            key: Any = int(skey[2:]) if skey.startswith("i:") else skey[2:]
            out[key] = _unflatten(v, tensors)
        return out
    return obj


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Writes ``state`` (a tree of tensors and JSON-able values) to ``path`` atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    header = {"format": FORMAT, "tree": json.dumps(skeleton)}
    return atomic_write_bytes(path, save_bytes(tensors, metadata=header))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a file written by :func:`save_state`; ValueError if it is not one or is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"path: {path} is not a readable fusenas checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not a {FORMAT} file (format={meta.get('format')!r})")
    try:
        return _unflatten(json.loads(meta["tree"]), tensors)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"path: {path} has a damaged state tree ({exc})") from exc
