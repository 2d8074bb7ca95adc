"""Pieces the pretraining recipes share: their config sections, data preparation, baselines and
the ``--dry-run`` plan. ``recipes/pretrain_nlg.py`` and ``recipes/pretrain_nlu.py`` are thin
scripts over this module."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import UsageError
from .config import unknown_key_error

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ModelSection:
    """Which model to build."""

    scale: str = "tiny"
    """A named scale of the family (NLG_SCALES / NLU_SCALES)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields to change, e.g. ``{hidden_dropout: 0.0}``; unknown fields are an error."""
    attn_implementation: Optional[str] = None
    """``turing``, ``sdpa`` or ``eager``; default: turing on CUDA with Triton, else sdpa."""


@dataclass
class DataSection:
    """Where the tokens come from: prepared shards, or a text corpus tokenized on first use."""

    corpus: Optional[str] = None
    """Text/JSONL/Parquet file(s) or folder, tokenized into ``cache_dir`` on first use (cached)."""
    shards: Optional[str] = None
    """A folder written by ``prepare_data.py tokenize`` (takes precedence over corpus)."""
    tokenizer: str = "gpt2-bpe"
    seq_len: Optional[int] = None
    """Tokens per sequence; default: the model's context length."""
    cache_dir: str = "data_cache"
    val_fraction: float = 0.05


@dataclass
class GenerateSection:
    """The sample printed at the end of a demo run."""

    prompt: str = "ROMEO:"
    max_new_tokens: int = 60
    temperature: float = 0.8
    top_k: int = 40


def resolve_path(path: str | os.PathLike) -> Path:
    """``path`` as given when it exists, else relative to the repository root (so recipes work
    from any working directory)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p


def check_overrides(overrides: dict[str, Any], config_cls: type, section: str = "model.overrides") -> None:
    """Refuse override keys the model config does not have, naming the closest one."""
    valid = sorted(k for k in config_cls().to_dict() if not k.startswith("_"))
    for key in overrides:
        if key not in valid:
            raise unknown_key_error(f"{section}.{key}", [f"{section}.{k}" for k in valid])


def prepare_tokens(data: DataSection, seq_len: int, *, progress: bool = True) -> Path:
    """The token folder for ``data``: the given shards, or the corpus tokenized once into the cache
    (the main process tokenizes while the others wait)."""
    from accelerate import PartialState

    if data.shards:
        path = resolve_path(data.shards)
        if not path.is_dir():
            raise UsageError(f"data.shards folder {data.shards} does not exist; run recipes/prepare_data.py "
                             "tokenize first or set data.corpus")
        return path
    if not data.corpus:
        raise UsageError("no training data: set data.corpus (a text file) or data.shards (prepared tokens)")
    corpus = resolve_path(data.corpus)
    if not corpus.exists():
        raise UsageError(f"data.corpus {data.corpus} does not exist; give a text file, folder or glob")
    from turing_models.data import tokenize_corpus

    state = PartialState()
    cache = resolve_path(data.cache_dir) if Path(data.cache_dir).is_absolute() else Path(data.cache_dir)
    with state.main_process_first():
        return Path(tokenize_corpus(corpus, tokenizer=data.tokenizer, val_fraction=data.val_fraction,
                                    seq_len=seq_len, cache_dir=cache, progress=progress and state.is_main_process))


def unigram_perplexity(path: Path, vocab_size: int) -> float:
    """Perplexity of the validation targets under the training split's unigram distribution
    (add-one smoothed): the number a model must beat to have learnt anything beyond frequencies."""
    from turing_models.data import load_split

    train, _, _ = load_split(path, "train")
    val, _, _ = load_split(path, "val")
    counts = np.bincount(np.asarray(train, dtype=np.int64), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = np.asarray(val[1:], dtype=np.int64)
    return float(math.exp(-logp[targets].mean()))


def print_plan(model: torch.nn.Module, train, plan, seq_len: int) -> str:
    """Build the dry-run report for a model built on the meta device."""
    from .flops import count_matmul_params, flops_per_token
    from .plan import ModelShape, format_plan

    c = model.config
    shape = ModelShape(
        params=sum(p.numel() for p in model.parameters()), matmul_params=count_matmul_params(model),
        layers=c.num_hidden_layers, hidden=c.hidden_size, heads=c.num_attention_heads,
        vocab=c.vocab_size, seq_len=seq_len,
    )
    fpt = flops_per_token(shape.matmul_params, shape.layers, shape.heads, shape.hidden // shape.heads, seq_len)
    engine = train.distributed
    stage = {"zero2": 2, "zero3": 3, "zero3_offload": 3, "fsdp2": 3}.get(engine, 0)
    mixed = train.precision in ("bf16", "fp16", "auto")
    return format_plan(shape, plan, micro_batch=train.micro_batch_size, global_batch=train.global_batch_size,
                       max_steps=train.max_steps, checkpointing=train.activation_checkpointing,
                       mixed_precision=mixed, chosen_stage=stage, chosen_offload=engine == "zero3_offload",
                       flops_per_token=fpt)


def train_evaluate_export(trainer, cfg, is_main_process: bool) -> tuple[dict, Optional[dict]]:
    """The common tail of a pretraining recipe: fit (resuming as ``cfg.resume`` says, writing
    ``config.yaml``), then evaluate and write the consolidated ``final/`` folder.

    Returns ``(summary, eval_result)``; ``eval_result`` is ``None`` when the run stopped early
    (SIGTERM, Ctrl-C), in which case a checkpoint was written and nothing is exported.
    """
    summary = trainer.fit(resume=cfg.resume, run_config=cfg)  # also writes run_dir/config.yaml
    if summary["status"] != "completed":
        if is_main_process:
            print(f"stopped at step {summary['step']}: checkpoint saved; rerun with --resume auto to continue")
        return summary, None
    result = trainer.evaluate()
    final = trainer.save_final()
    summary.update(result, final=str(final))
    return summary, result
