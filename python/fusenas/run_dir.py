"""What every driver (search, compression) does before its first epoch, and its log file.

``start_run`` sets up torch.distributed from torchrun's environment, checks the
global batch splits over the ranks, sets torch's threads, creates the output
directory and writes the run's settings to ``config.yaml`` (rank 0).
``write_log`` rewrites ``log.jsonl`` from the run's history, atomically, so
the log always agrees with the checkpoint it was written after; ``read_log``
reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fusenas import distributed
from fusenas._atomic import atomic_write_bytes
from fusenas._state_io import load_state
from fusenas.config_file import dump_config


@dataclass
class Run:
    device: torch.device
    rank: int
    world: int
    out: Path


def start_run(config: Any, device: torch.device) -> Run:
    """Distributed setup, thread count, output directory and config.yaml for ``config``."""
    rank, world = distributed.init_from_env(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size: {config.batch_size} is not divisible by {world} processes")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(config.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, config)
    return Run(device, rank, world, out)


def write_config(out: Path, config: Any) -> None:
    """The run's settings as ``out/config.yaml`` (atomic)."""
    atomic_write_bytes(Path(out) / "config.yaml", yaml.safe_dump(dump_config(config)).encode())


def write_log(out: Path, history: list[dict[str, Any]]) -> None:
    """log.jsonl: one JSON line per record of ``history``."""
    atomic_write_bytes(out / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history).encode())


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The records of ``out``/log.jsonl, as write_log wrote them (FileNotFoundError if none)."""
    text = (Path(out) / "log.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def resume_state(
    path: Path, config: Any, run_defining: tuple[str, ...], parts: dict[str, Any], what: str
) -> tuple[list[dict[str, Any]], int] | None:
    """Loads a driver checkpoint into ``parts`` ({key: object with load_state_dict}).

    Returns (history, epochs done), or None when there is no checkpoint. The
    checkpoint must come from a run with the same ``run_defining`` settings;
    ValueError names the ones that differ, or says what does not fit ``what``.
    """
    if not path.is_file():
        return None
    state = load_state(path)
    saved = state.get("config")
    if not isinstance(saved, dict):
        raise ValueError(f"resume: {path} holds no driver config; not a fusenas run checkpoint")
    now = dump_config(config)
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    diff = [k for k in run_defining if norm(saved.get(k)) != norm(now[k])]
    if diff:
        pairs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in diff)
        raise ValueError(f"resume: {path} was written by a different run ({pairs})")
    try:
        for key, obj in parts.items():
            obj.load_state_dict(state[key])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"resume: {path} does not match this {what} ({exc})") from exc
    return list(state["history"]), int(state["epoch"])
