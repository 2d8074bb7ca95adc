"""Fine-tuning on the shared Trainer: the config and the generic loop behind ``recipes/finetune.py``.

A run is the same for every task (what is specific lives in the task's module, see :mod:`.base`):
tokenizer -> the task loads its train / eval examples -> the model with the task's head ->
the task's features -> :class:`~turing_models.training.Trainer` ``fit()`` -> eval loss -> the
task's predictions and metrics on the eval set. It writes, under
``train.output_dir/train.run_name``::

    final/              save_pretrained folder: model (+ the task's settings in config.json) and tokenizer
    metrics.json        the eval metrics, the eval loss and the training summary
    predictions.json    qa: {question id: answer}; null_scores.json (v2) and nbest.json beside it
    predictions.jsonl   classification / sft: one row per eval example
    config.yaml         the exact config of the run
    metrics.jsonl       the Trainer's log (loss, lr, tokens/s, MFU per logged step)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from turing_models.errors import UsageError
from turing_models.tasks.base import DataSpec, get_task
from turing_models.tasks.classification import ClassificationOptions
from turing_models.tasks.common import ListDataset, format_metrics, json_safe, write_json, write_outputs
from turing_models.tasks.models import build_model, check_model_source, load_task_tokenizer
from turing_models.tasks.qa import QAOptions
from turing_models.tasks.sft import SFTOptions
from turing_models.training.config import TrainerConfig

logger = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "format_metrics", "run_finetune"]


@dataclass
class FinetuneConfig(DataSpec):
    """Fine-tune an encoder (qa, classification) or a decoder (sft) on the shared Trainer.

    Encoders: TuringNLU, BERT, RoBERTa, XLM-R. Decoders: TuringNLG, GPT-2. The data fields
    (data, eval_data, ...) are those of :class:`~turing_models.tasks.base.DataSpec`.
    """

    task: Literal["qa", "classification", "sft"] = "qa"
    """The task; without --config, its recipe recipes/configs/finetune/<task>.yaml gives the defaults."""
    model: str = "tiny"
    """A scale name (random init), a checkpoint folder or a Hub id."""
    tokenizer: Optional[str] = None
    """Tokenizer folder, built-in name or Hub id; default: the checkpoint's (or the family's for a scale name)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Config fields to set on the model: shapes for a scale name, dropouts for any model."""
    eval_batch_size: int = 32
    resume: Optional[str] = None
    """"auto" (the newest checkpoint of this run, if any) or a checkpoint folder."""
    qa: QAOptions = field(default_factory=QAOptions)
    classification: ClassificationOptions = field(default_factory=ClassificationOptions)
    sft: SFTOptions = field(default_factory=SFTOptions)
    train: TrainerConfig = field(default_factory=TrainerConfig)


def run_finetune(cfg: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune and evaluate as ``cfg`` says; returns ``{"metrics", "summary", "run_dir", "final"}``."""
    from turing_models.training import Trainer

    task_cls = get_task(cfg.task)
    if not task_cls.finetunable:
        raise UsageError(f"the {cfg.task} task evaluates saved models only; use recipes/evaluate.py")
    if cfg.eval_batch_size < 1:
        raise UsageError(f"eval_batch_size must be positive, got {cfg.eval_batch_size}")
    cfg.train.validate()
    check_model_source(task_cls, cfg.model)
    tokenizer = load_task_tokenizer(task_cls, cfg.model, cfg.tokenizer)
    task = task_cls(task_cls.options_from(cfg), tokenizer)
    train_examples, eval_examples = task.load_finetune(cfg)
    from accelerate.utils import set_seed

    set_seed(cfg.train.seed)  # a new head's initialisation follows the run's seed
    model = build_model(task_cls, cfg.model, tokenizer, config_overrides=cfg.model_overrides, head_kwargs=task.head_kwargs())
    train_ds, eval_ds = ListDataset(task.features(model, train_examples)), ListDataset(task.features(model, eval_examples))
    run_dir = Path(cfg.train.output_dir) / cfg.train.run_name
    trainer = Trainer(model, train_ds, eval_ds, config=cfg.train, collate_fn=task.collate_fn(), tokenizer=tokenizer, run_dir=run_dir)
    summary = trainer.fit(resume=cfg.resume, run_config=cfg)  # also writes run_dir/config.yaml
    result: dict[str, Any] = {"summary": summary, "run_dir": str(run_dir), "metrics": {}, "final": None}
    if summary.get("status") != "completed":
        logger.warning("training was interrupted at step %s; resume with --resume auto", summary.get("step"))
        return result
    eval_loss = trainer.evaluate(max_batches=math.ceil(len(eval_ds) / cfg.train.micro_batch_size))
    model = trainer.unwrapped_model
    metrics: dict[str, Any] = {}
    if trainer.accelerator.is_main_process:
        metrics, outputs = task.evaluate(model, eval_examples, cfg.eval_batch_size)
        write_outputs(run_dir, outputs)
    task.save_settings(model.config)
    metrics = json_safe({**metrics, "eval_loss": eval_loss["eval_loss"], "task": cfg.task, "model": cfg.model, "train": summary})
    final = trainer.save_final()
    if trainer.accelerator.is_main_process:
        write_json(run_dir / "metrics.json", metrics)
        write_json(final / "eval_results.json", metrics)
    result.update(metrics=metrics, final=str(final))
    return result
