"""Resumable checkpoints (DESIGN.md principle 6).

Layout of a run folder ``checkpoints/runs/<run>/``::

    checkpoints/step-00000100/     one complete checkpoint
        model.safetensors ...      written by ``Accelerator.save_state``: model, optimizer,
        optimizer.bin              registered scheduler and every rank's RNG states (sharded
        random_states_0.pkl        files for FSDP2 / DeepSpeed ZeRO)
        data_state_0.pt            rank 0's data position (one file per rank)
        trainer_state.json         step, tokens seen, ... -- written last: its presence marks
                                   the checkpoint complete
    checkpoints/.tmp-step-...      a checkpoint being written (renamed when complete)
    final/                         the consolidated save_pretrained export (+ tokenizer)
    metrics.jsonl                  one JSON line per logged step and evaluation

A checkpoint is written under a temporary name and renamed when complete, so a crash (even
``kill -9``) mid-write leaves only a ``.tmp-*`` folder, which resuming ignores with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def list_checkpoints(checkpoints_dir: Path, warn: bool = True) -> list[Path]:
    """Complete checkpoints, oldest first; partial ones are skipped with a warning."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    complete = []
    for path in sorted(checkpoints_dir.iterdir()):
        if not path.is_dir():
            continue
        match = _STEP_DIR.match(path.name)
        if match and is_complete(path):
            complete.append((int(match.group(1)), path))
        elif warn and (match or path.name.startswith(".tmp-")):
            logger.warning("ignoring partial checkpoint %s (it was interrupted while being written)", path)
    return [p for _, p in sorted(complete)]


def latest_checkpoint(checkpoints_dir: Path) -> Optional[Path]:
    found = list_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def read_state(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"resume checkpoint {path} does not exist; pass --resume auto or a step-* folder of a run")
    if not is_complete(path):
        raise UsageError(
            f"{path} is not a complete checkpoint (no {STATE_FILE}); pass a step-* folder written by the trainer"
        )
    try:
        return json.loads((path / STATE_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path / STATE_FILE} is corrupt ({exc.msg}); resume from an earlier checkpoint") from None


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file, fsynced, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a folder by first renaming it out of the way (never leaves a half-deleted step-*)."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".tmp-delete-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune(checkpoints_dir: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints; clear stale temporary folders."""
    found = list_checkpoints(checkpoints_dir, warn=False)
    for old in found[:-keep_last] if keep_last > 0 else found:
        remove_tree(old)


def clear_partial(checkpoints_dir: Path) -> None:
    """Delete leftovers of interrupted writes (``.tmp-*`` and incomplete ``step-*`` folders)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return
    for path in checkpoints_dir.iterdir():
        if path.is_dir() and (path.name.startswith(".tmp-") or (_STEP_DIR.match(path.name) and not is_complete(path))):
            shutil.rmtree(path, ignore_errors=True)


def model_fingerprint(config: Any) -> dict[str, Any]:
    """The shape-defining fields of a model config, compared on resume."""
    keys = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "n_embd", "n_layer", "n_head", "n_positions")
    data = config.to_dict() if hasattr(config, "to_dict") else {}
    return {k: data[k] for k in keys if k in data}


def check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    diff = [f"{k}={saved[k]} (checkpoint) vs {current.get(k)} (this run)" for k in saved if saved[k] != current.get(k)]
    if diff:
        raise UsageError(
            f"checkpoint {path} belongs to another model: {', '.join(diff)}; "
            "resume with the config it was trained with or start a new run_name"
        )
