"""Fine-tuning and evaluation tasks. One module tells one task's whole story (data, features,
collate, head, predictions, metric, settings saved with the model) through the interface of
:mod:`.base`:

* :mod:`.qa`: extractive QA (SQuAD v1.1 / v2.0): windows with a document stride, n-best spans,
  the v2 null threshold (fixed, or tuned on held-out training articles); the official EM / F1
  with the HasAns / NoAns breakdown;
* :mod:`.classification`: single sentences and pairs, labels saved in the model config;
  accuracy, F1, MCC, or Pearson / Spearman for numeric labels;
* :mod:`.sft`: generative fine-tuning of a decoder with the loss on the completion only;
* :mod:`.perplexity`: sliding-window perplexity of a saved decoder (evaluation only).

:mod:`.finetune` and :mod:`.evaluate` are the generic loops behind ``recipes/finetune.py`` and
``recipes/evaluate.py``; :mod:`.models` loads the model and tokenizer a task takes;
:mod:`.common` holds what every task shares; :mod:`.metrics` the metrics;
:mod:`.lm_eval_harness` runs lm-evaluation-harness on TuringNLG checkpoints. A new task is a new
module with a :class:`~.base.Task` subclass, registered in :data:`.base.TASK_MODULES`.
"""

from .metrics import (
    classification_metrics,
    exact_match_score,
    f1_score_tokens,
    matthews_corrcoef,
    normalize_answer,
    pearson,
    regression_metrics,
    spearman,
    squad_evaluate,
)

__all__ = [
    "classification_metrics",
    "exact_match_score",
    "f1_score_tokens",
    "matthews_corrcoef",
    "normalize_answer",
    "pearson",
    "regression_metrics",
    "spearman",
    "squad_evaluate",
]
