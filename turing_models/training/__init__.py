"""The shared trainer and everything it owns: configs, optimizer, schedules, checkpoints, MFU.

``Trainer(model, train_dataset, eval_dataset, config=TrainerConfig(...))`` then ``fit()``,
``evaluate()`` and ``save_final()``; recipes load their typed configs with
:func:`~turing_models.training.config.parse_config` (YAML + command-line overrides).
"""

from .config import TrainerConfig, gradient_accumulation_steps, parse_config, resolve_config_path
from .flops import flops_per_token, measure_matmul_peak, mfu, model_flops_per_token
from .trainer import Trainer, TrainingStopped

__all__ = [
    "Trainer",
    "TrainerConfig",
    "TrainingStopped",
    "flops_per_token",
    "gradient_accumulation_steps",
    "measure_matmul_peak",
    "mfu",
    "model_flops_per_token",
    "parse_config",
    "resolve_config_path",
]
