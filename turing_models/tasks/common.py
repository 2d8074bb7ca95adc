"""Pieces every task shares: data paths, model inputs, a list dataset, atomic output files."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Optional, Sequence, TypeVar

import torch

from turing_models.errors import UsageError

T = TypeVar("T")

#: The repository root: bundled data paths such as ``recipes/data/qa/xquad.en.json`` are relative to it.
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_path(source: str) -> str:
    """``source`` as given when it exists (or is not a path); else relative to the repository root.

    So the recipes' default ``recipes/data/...`` paths work from any working directory.
    """
    if not source or Path(source).exists():
        return source
    candidate = REPO_ROOT / source
    return str(candidate) if candidate.exists() else source


def seeded_split(items: Sequence[T], eval_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """A seeded shuffle split into (train, eval)."""
    if not 0.0 < eval_fraction < 1.0:
        raise UsageError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(order) * eval_fraction))
    if n_eval >= len(order):
        raise UsageError(f"{len(order)} examples are too few to split off an eval set; give eval_data")
    return [items[i] for i in order[n_eval:]], [items[i] for i in order[:n_eval]]


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON under a temporary name, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write JSON Lines under a temporary name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def input_keys(tokenizer, token_type_ids: Optional[bool] = None) -> list[str]:
    """The tokenizer outputs to feed the model.

    ``token_type_ids`` is included when asked (``True``; the recipes ask when the model has more
    than one token type, as BERT does), or, when ``None``, when the tokenizer lists it among its
    ``model_input_names``.
    """
    keys = ["input_ids", "attention_mask"]
    if token_type_ids or (token_type_ids is None and "token_type_ids" in tokenizer.model_input_names):
        keys.append("token_type_ids")
    return keys


class ListDataset(torch.utils.data.Dataset):
    """A map-style dataset over a list of feature dicts (collated by the task's collator)."""

    def __init__(self, features: Sequence[dict[str, Any]]):
        self.features = list(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]
