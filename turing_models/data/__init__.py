"""Data pipeline: tokenizers, corpus -> token shards, packed resumable datasets, MLM collator.

    from turing_models.data import load_tokenizer, tokenize_corpus, PackedDataset

    tok = load_tokenizer("gpt2-bpe")                       # built-in GPT-2 BPE, offline
    shards = tokenize_corpus("recipes/data/tinyshakespeare.txt", tokenizer=tok)
    ds = PackedDataset(shards, split="train", seq_len=256)  # yields input_ids / shift_labels

The command-line front is ``recipes/prepare_data.py``. Names are imported lazily so that the
tokenizer worker processes do not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_tokenizer": "tokenizer",
    "train_tokenizer": "tokenizer",
    "save_tokenizer": "tokenizer",
    "builtin_tokenizers": "tokenizer",
    "tokenizer_fingerprint": "tokenizer",
    "tokenize_corpus": "shards",
    "read_manifest": "shards",
    "load_split": "shards",
    "token_dtype": "shards",
    "write_token_folder": "shards",
    "resolve_inputs": "sources",
    "PackedDataset": "packed",
    "collate_packed": "packed",
    "DataCollatorForMLM": "mlm",
    "PackedMLMCollator": "mlm",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .mlm import DataCollatorForMLM, PackedMLMCollator
    from .packed import PackedDataset, collate_packed
    from .shards import load_split, read_manifest, token_dtype, tokenize_corpus, write_token_folder
    from .sources import resolve_inputs
    from .tokenizer import (builtin_tokenizers, load_tokenizer, save_tokenizer, tokenizer_fingerprint,
                            train_tokenizer)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
