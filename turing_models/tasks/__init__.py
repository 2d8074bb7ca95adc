"""Fine-tuning tasks. Each task is preprocessing + head + metric + postprocessing:

* :mod:`.qa`: extractive QA (SQuAD v1.1 / v2.0): windows with a document stride, n-best spans,
  null-score threshold; the official EM / F1 with the HasAns / NoAns breakdown;
* :mod:`.classification`: single sentences and pairs, labels saved in the model config;
  accuracy, F1, MCC, or Pearson / Spearman for numeric labels;
* :mod:`.sft`: generative fine-tuning of a decoder with the loss on the completion only;
* :mod:`.metrics`: the metrics; :mod:`.finetune` / :mod:`.evaluate`: the runs behind
  ``recipes/finetune.py`` and ``recipes/evaluate.py`` on the shared Trainer;
* :mod:`.lm_eval_harness`: lm-evaluation-harness on TuringNLG checkpoints.
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
