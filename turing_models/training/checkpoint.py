"""The layout of a run folder and which of its checkpoints can be trusted.

Layout of a run folder ``checkpoints/runs/<run>/``::

    checkpoints/step-00000100/     one complete checkpoint (see :mod:`.checkpointer`)
        model.safetensors          the full model, whatever engine wrote it
        optimizer.json/.safetensors  the optimizer state, keyed by parameter name
        scheduler.json             the learning-rate schedule's position
        rng_<rank>.json/.safetensors  every rank's torch / CUDA / Python / NumPy RNG states
        data_<rank>.json           every rank's data position (+ a collator's RNG state)
        trainer_state.json         step, tokens seen, losses, world size, model fingerprint
        manifest.json              every other file's size and sha256 -- written last
    checkpoints/.step-00000200.tmp-<pid>-<hex>   a checkpoint being written (renamed when complete)
    final/                         the consolidated save_pretrained export (+ tokenizer)
    metrics.jsonl                  one JSON line per logged step and evaluation

No file in a checkpoint is a pickle. A checkpoint counts only when its manifest verifies;
``--resume auto`` walks back from the newest to the newest that does, and says what it skipped.
Temporary folders of dead processes (a ``kill -9`` mid-write) are removed on the next start.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from ..errors import UsageError
from ..io import MANIFEST_FILE, clean_stale_temps, numbered_dirs, remove_tree, verify_manifest
from ..io import newest_verified as io_newest_verified

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
# Temporary names of earlier versions of the trainer (``.tmp-step-*``, ``.tmp-final-<pid>``,
# ``.tmp-delete-*``): never complete, removed on the next start like io's own temporary names.
_LEGACY_TEMP = re.compile(r"^\.tmp-(step-\d+|final|delete-).*")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def why_incomplete(path: Path, *, check_hashes: bool = True) -> Optional[str]:
    """None when ``path`` is a complete checkpoint (its manifest verifies), else why not."""
    path = Path(path)
    if not path.is_dir():
        return "it does not exist"
    if not (path / MANIFEST_FILE).is_file() and (any(path.glob("random_states_*.pkl"))
                                                  or (path / "optimizer.bin").is_file()):
        return ("it has the earlier, pickle-based layout, which is never loaded; export its model with "
                "recipes/convert.py consolidate and start a new run from it")
    reason = verify_manifest(path, check_hashes=check_hashes)
    if reason is None and not (path / STATE_FILE).is_file():
        return f"no {STATE_FILE}"
    return reason


def is_complete(path: Path) -> bool:
    return why_incomplete(path) is None


def step_dirs(checkpoints_dir: Path) -> list[Path]:
    """Every ``step-*`` folder, oldest first, whether complete or not."""
    return numbered_dirs(checkpoints_dir, "step-")


def list_checkpoints(checkpoints_dir: Path, warn: bool = True, check_hashes: bool = False) -> list[Path]:
    """Complete checkpoints, oldest first; incomplete ones are skipped (with a warning)."""
    complete = []
    for path in step_dirs(checkpoints_dir):
        reason = why_incomplete(path, check_hashes=check_hashes)
        if reason is None:
            complete.append(path)
        elif warn:
            logger.warning("ignoring partial checkpoint %s: %s", path, reason)
    return complete


def newest_verified(checkpoints_dir: Path) -> tuple[Optional[Path], list[tuple[Path, str]]]:
    """Walk back from the newest ``step-*`` folder to the newest whose manifest verifies (sizes and
    sha256). Returns it (or None) and the ``(folder, reason)`` pairs it skipped on the way."""
    return io_newest_verified(step_dirs(checkpoints_dir), why_incomplete)


def latest_checkpoint(checkpoints_dir: Path) -> Optional[Path]:
    return newest_verified(checkpoints_dir)[0]


def clean_stale(folder: Path) -> list[Path]:
    """Remove temporary folders and files of dead writers in ``folder`` (io's naming pattern, and
    the older ``.tmp-step-*`` / ``.tmp-final-*`` names). Returns what was removed."""
    folder = Path(folder)
    removed = clean_stale_temps(folder)
    if folder.is_dir():
        for path in folder.iterdir():
            if _LEGACY_TEMP.match(path.name):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def read_state(path: Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint the user named; it must verify."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"resume checkpoint {path} does not exist; pass --resume auto or a step-* folder of a run")
    reason = why_incomplete(path)
    if reason is not None:
        hint = ("pass --resume auto to use the newest checkpoint that verifies"
                if (path / MANIFEST_FILE).is_file() or (path / STATE_FILE).is_file()
                else "pass a step-* folder written by the trainer")
        raise UsageError(f"checkpoint {path} is not complete ({reason}); {hint}")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path / STATE_FILE} is damaged ({exc}); resume from an earlier checkpoint") from None
    if not isinstance(state, dict) or "step" not in state:
        raise UsageError(f"{path / STATE_FILE} is damaged (no step); resume from an earlier checkpoint")
    return state


def prune(checkpoints_dir: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (sizes checked, not hashes)."""
    found = list_checkpoints(checkpoints_dir, warn=False)
    for old in found[:-keep_last] if keep_last > 0 else found:
        remove_tree(old)


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
