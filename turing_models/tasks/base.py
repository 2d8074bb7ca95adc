"""The task interface: everything one task owns, and the registry the generic loops read.

A task module (:mod:`.qa`, :mod:`.classification`, :mod:`.sft`, :mod:`.perplexity`) defines one
:class:`Task` subclass and its options dataclass, and tells the whole story of the task:

* **family and head**: which models it takes (``encoder`` / ``decoder``) and which head class
  of the zoo it fine-tunes and loads (:attr:`Task.head`);
* **load**: examples from files or a ``datasets`` name (:meth:`Task.load`), the train/eval split
  (:meth:`Task.split`), what fine-tuning needs beyond that (:meth:`Task.prepare`);
* **features and collate**: tokenized model inputs with their targets (:meth:`Task.features`)
  and the batch collator (:meth:`Task.collate_fn`);
* **predict and metrics**: predictions on the unwrapped model (:meth:`Task.predict`) and the
  task's metric with the files to write (:meth:`Task.metrics`);
* **settings saved with the model**: :meth:`Task.head_kwargs` / :meth:`Task.save_settings` when
  fine-tuning, :meth:`Task.configure` when a saved model is evaluated.

:func:`turing_models.tasks.finetune.run_finetune` and
:func:`turing_models.tasks.evaluate.run_evaluate` are loops over this interface; neither knows a
task by name. A new task is a new module here plus one line in :data:`TASK_MODULES`.
"""

from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Sequence

from turing_models.errors import UsageError
from turing_models.tasks.common import limit, resolve_data_path, seeded_split

logger = logging.getLogger(__name__)

#: task name -> the module that defines it (imported on first use).
TASK_MODULES = {
    "qa": "turing_models.tasks.qa",
    "classification": "turing_models.tasks.classification",
    "sft": "turing_models.tasks.sft",
    "perplexity": "turing_models.tasks.perplexity",
}

#: The head class families: where :attr:`Task.head` is looked up.
FAMILY_MODULES = {"encoder": "turing_models.nlu", "decoder": "turing_models.nlg"}


@dataclass
class DataSpec:
    """Where fine-tuning data comes from (the fine-tuning config is one)."""

    data: Optional[str] = None
    """Training data: a file, a folder, comma-separated files, or a datasets name; default: the bundled set."""
    eval_data: Optional[str] = None
    """Eval data; default: split off the training data (by article for QA)."""
    eval_fraction: float = 0.2
    split_seed: int = 0
    train_split: str = "train"
    """Split name when data is a datasets name."""
    eval_split: str = "validation"
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None


class Task(abc.ABC):
    """One task: see the module doc. Instances hold the options, the tokenizer and what the task
    learned from its data (labels, SQuAD version) or from a saved model (its settings)."""

    name: ClassVar[str]
    family: ClassVar[str]
    """``encoder`` (TuringNLU, BERT, RoBERTa, XLM-R) or ``decoder`` (TuringNLG, GPT-2)."""
    head: ClassVar[str]
    """Class name of the model with this task's head, in the family's module."""
    default_data: ClassVar[Optional[str]] = None
    """The bundled data fine-tuning uses when none is given."""
    finetunable: ClassVar[bool] = True
    default_split: ClassVar[str] = "validation"
    """Split of a ``datasets`` name (or token-shard folder) that evaluation reads by default."""

    def __init__(self, options: Any, tokenizer):
        self.o = options
        self.tokenizer = tokenizer

    @classmethod
    def options_from(cls, cfg: Any) -> Any:
        """This task's options from a recipe config: its section named after the task."""
        return getattr(cfg, cls.name)

    # ------------------------------------------------------------------ head
    @classmethod
    def head_class(cls) -> type:
        """The model class with this task's head."""
        return getattr(importlib.import_module(FAMILY_MODULES[cls.family]), cls.head)

    @classmethod
    def check_head(cls, architectures: Sequence[str], source: str) -> None:
        """Refuse a fine-tuned folder whose saved head is another task's (encoders only)."""
        suffix = cls.head.removeprefix("TuringNLU")
        if cls.family != "encoder" or not architectures or any(a.endswith(suffix) for a in architectures):
            return
        other = next(
            (name for name in TASK_MODULES if name != cls.name and get_task(name).family == "encoder"
             and any(a.endswith(get_task(name).head.removeprefix("TuringNLU")) for a in architectures)),
            None,
        )
        hint = f"; evaluate it with --task {other}" if other else "; fine-tune it first with recipes/finetune.py"
        raise UsageError(f"{source} is a {architectures[0]} checkpoint, not a {cls.name} model{hint}")

    def head_kwargs(self) -> dict[str, Any]:
        """Config fields of the head, saved with the model (e.g. the label names)."""
        return {}

    def save_settings(self, config) -> None:
        """Write what evaluation of the saved model needs into its config (after fine-tuning)."""

    def configure(self, model) -> None:
        """Read the settings fine-tuning saved in ``model.config`` (before evaluating it)."""

    # ------------------------------------------------------------------ data
    def load(self, source: str, *, split: str, for_training: bool = False) -> list:
        """Examples from a file, a folder or a ``datasets`` name (tasks that fine-tune)."""
        raise UsageError(f"the {self.name} task evaluates saved models only; it loads no examples")

    def split(self, examples: Sequence, eval_fraction: float, seed: int) -> tuple[list, list]:
        """(train, eval) when no eval data is given."""
        return seeded_split(examples, eval_fraction, seed)

    def training_examples(self, examples: Sequence, source: str) -> list:
        """The examples fit to train on (all of them unless the task says otherwise)."""
        return list(examples)

    def load_eval(self, source: str, *, split: Optional[str] = None, max_examples: Optional[int] = None):
        """The labelled examples a saved model is evaluated on."""
        return limit(self.load(resolve_data_path(source), split=split or self.default_split), max_examples)

    def load_finetune(self, spec: DataSpec) -> tuple[list, list]:
        """(train, eval) examples for fine-tuning, then :meth:`prepare`."""
        if not self.finetunable:
            raise UsageError(f"the {self.name} task evaluates saved models only; use recipes/evaluate.py")
        data = resolve_data_path(spec.data or self.default_data or "")
        if not data:
            raise UsageError(f"the {self.name} task needs --data")
        examples = self.load(data, split=spec.train_split, for_training=True)
        if spec.eval_data:
            train, evaluation = examples, self.load(resolve_data_path(spec.eval_data), split=spec.eval_split)
        else:
            train, evaluation = self.split(examples, spec.eval_fraction, spec.split_seed)
        train = limit(self.training_examples(train, data), spec.max_train_examples)
        evaluation = limit(evaluation, spec.max_eval_examples)
        if not train or not evaluation:
            raise UsageError(f"the {self.name} train or eval set is empty; check data, eval_data and max_*_examples")
        train = self.prepare(train, evaluation, spec)
        logger.info("%s: %d train / %d eval examples%s", self.name, len(train), len(evaluation), self.describe())
        return train, evaluation

    def prepare(self, train: list, evaluation: list, spec: DataSpec) -> list:
        """What fine-tuning learns from its data before the model exists (labels, version);
        returns the examples to train on."""
        return train

    def describe(self) -> str:
        """A few words about the data for the log line (``, SQuAD v2.0``)."""
        return ""

    # ------------------------------------------------------------------ model inputs
    def features(self, model, examples: Sequence) -> list[dict[str, Any]]:
        """Model inputs with their targets (training and the eval loss; tasks that fine-tune)."""
        raise UsageError(f"the {self.name} task evaluates saved models only; it builds no training features")

    def collate_fn(self):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer)

    # ------------------------------------------------------------------ predictions and metrics
    @abc.abstractmethod
    def predict(self, model, examples: Sequence, batch_size: int) -> Any:
        """Predictions of the unwrapped model on ``examples`` (model left in its mode)."""

    @abc.abstractmethod
    def metrics(self, examples: Sequence, predictions: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(metrics, {file name: content})`` of predictions against the gold labels."""

    def evaluate(self, model, examples: Sequence, batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`predict` then :meth:`metrics`."""
        return self.metrics(examples, self.predict(model, examples, batch_size))


def get_task(name: str) -> type[Task]:
    """The :class:`Task` class registered as ``name``."""
    if name not in TASK_MODULES:
        raise UsageError(f"unknown task {name!r}; choose one of {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name]).TASK


def finetune_tasks() -> list[str]:
    """Names of the tasks that fine-tune."""
    return [name for name in TASK_MODULES if get_task(name).finetunable]
