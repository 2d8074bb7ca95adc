"""Evaluation of saved models: the generic loop behind ``recipes/evaluate.py``.

For any task (:mod:`.perplexity`, :mod:`.qa`, :mod:`.classification`, :mod:`.sft`): load the
saved model with the task's head (its family and head are checked first), read the settings
fine-tuning saved with it (labels, the SQuAD v2 null threshold), load the data, predict, score.
What is specific to a task lives in its module (see :mod:`.base`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from turing_models.errors import UsageError
from turing_models.tasks.base import get_task
from turing_models.tasks.classification import ClassificationOptions
from turing_models.tasks.common import json_safe, write_json, write_outputs
from turing_models.tasks.models import load_saved, load_task_tokenizer
from turing_models.tasks.qa import QAOptions
from turing_models.tasks.sft import SFTOptions

logger = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    """Evaluate a saved model: perplexity of a decoder, or a fine-tuned task's metrics."""

    task: Literal["perplexity", "qa", "classification", "sft"] = "perplexity"
    model: str = ""
    """A checkpoint folder (or Hub id)."""
    data: str = ""
    """perplexity: text file(s) (comma-separated), a folder of .txt files, or a token-shard folder;
    qa / classification / sft: labelled data as finetune.py reads it."""
    tokenizer: Optional[str] = None
    """Default: the checkpoint's."""
    split: Optional[str] = None
    """Split of a token-shard folder (default val) or of a datasets name (default validation)."""
    max_length: Optional[int] = None
    """perplexity: window length in tokens; default: the model's context."""
    stride: Optional[int] = None
    """perplexity: tokens between window starts; default: max_length // 2."""
    max_tokens: Optional[int] = None
    """perplexity: score at most this many tokens."""
    max_examples: Optional[int] = None
    batch_size: int = 8
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda."""
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on CUDA, fp32 on CPU."""
    output: Optional[str] = None
    """Folder for metrics.json and the predictions (nothing is written when unset)."""
    qa: QAOptions = field(default_factory=QAOptions)
    classification: ClassificationOptions = field(default_factory=ClassificationOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)


def _device_and_dtype(cfg: EvaluateConfig) -> tuple[torch.device, torch.dtype]:
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError("device cuda asked for, but CUDA is not available; use --device cpu")
        device = torch.device(cfg.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.dtype)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def run_evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate as ``cfg`` says; writes ``metrics.json`` (+ predictions) into ``cfg.output`` when set."""
    if not cfg.model:
        raise UsageError("--model is required: a checkpoint folder (or Hub id)")
    if not cfg.data:
        raise UsageError("--data is required: the text / labelled data to evaluate on")
    if cfg.batch_size < 1:
        raise UsageError(f"batch_size must be positive, got {cfg.batch_size}")
    task_cls = get_task(cfg.task)
    device, dtype = _device_and_dtype(cfg)
    model = load_saved(task_cls, cfg.model, dtype=dtype, device=device)
    task = task_cls(task_cls.options_from(cfg), load_task_tokenizer(task_cls, cfg.model, cfg.tokenizer))
    task.configure(model)
    examples = task.load_eval(cfg.data, split=cfg.split, max_examples=cfg.max_examples)
    metrics, outputs = task.evaluate(model, examples, cfg.batch_size)
    metrics = json_safe({**metrics, "task": cfg.task, "model": cfg.model})
    if cfg.output:
        write_outputs(cfg.output, outputs)
        write_json(Path(cfg.output) / "metrics.json", metrics)
    return metrics
