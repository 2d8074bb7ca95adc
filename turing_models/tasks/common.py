"""Pieces every task shares: data paths, splits, model inputs, a list dataset, batched prediction,
output files (through :mod:`turing_models.io`) and the one-line metric summary."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, TypeVar

import numpy as np
import torch

from turing_models.errors import UsageError
from turing_models.io import atomic_file, write_json_atomic

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


def limit(items: Sequence[T], n: Optional[int]) -> list[T]:
    """The first ``n`` items (all of them when ``n`` is None)."""
    return list(items) if n is None else list(items[: max(0, n)])


def uses_token_types(model) -> Optional[bool]:
    """Whether the model takes ``token_type_ids`` (BERT: 2 types), from its config; None: unknown."""
    types = getattr(model.config, "type_vocab_size", None)
    return None if types is None else types > 1


def input_keys(tokenizer, token_type_ids: Optional[bool] = None) -> list[str]:
    """The tokenizer outputs to feed the model.

    ``token_type_ids`` is included when asked (``True``; the tasks ask when the model has more
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


@contextlib.contextmanager
def evaluating(model) -> Iterator[torch.device]:
    """The model in eval mode (given back in the mode it had); yields its device."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


TARGET_KEYS = ("labels", "start_positions", "end_positions")


def padded_batches(features: Sequence[dict[str, Any]], tokenizer, batch_size: int, device) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """``(offset, batch)`` over ``features`` without their targets, padded and moved to ``device``."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    for i in range(0, len(features), batch_size):
        batch = collate([{k: v for k, v in f.items() if k not in TARGET_KEYS} for f in features[i : i + batch_size]])
        yield i, {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Output files
# --------------------------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """JSON-safe values: NaN/inf as None, NumPy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON atomically (temporary name, then rename): never a half-written file."""
    write_json_atomic(path, obj)
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write JSON Lines atomically."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_outputs(folder: str | os.PathLike, outputs: dict[str, Any]) -> None:
    """Write ``{file name: content}``: ``.jsonl`` as JSON Lines, anything else as JSON."""
    for name, content in outputs.items():
        (write_jsonl if name.endswith(".jsonl") else write_json)(Path(folder) / name, content)


# --------------------------------------------------------------------------------------------
# The one-line summary the recipes print
# --------------------------------------------------------------------------------------------

PERCENT_KEYS = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_exact", "best_f1")
HEADLINE_KEYS = (
    "exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1", "best_f1", "best_f1_thresh",
    "accuracy", "macro_f1", "mcc", "pearson", "spearman", "mse", "eval_loss", "perplexity", "bits_per_byte", "total",
)


def format_metrics(metrics: dict[str, Any], task: str) -> str:
    """One readable line of the headline metrics (SQuAD-style scores are percentages)."""
    percent = task in ("qa", "sft")
    parts = []
    for key in HEADLINE_KEYS:
        value = metrics.get(key)
        if key == "f1" and not percent and value is not None:
            parts.append(f"f1 {value:.4f}")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.2f}" if percent and key in PERCENT_KEYS else f"{key} {value:.4f}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return ", ".join(parts)
