#!/usr/bin/env python
"""Pretrain a TuringNLU encoder: masked LM (BERT / RoBERTa) or replaced-token detection (ELECTRA).

    # tiny encoder, masked LM, on the bundled corpus with the built-in WordPiece tokenizer (CPU)
    python recipes/pretrain_nlu.py --config tiny.yaml

    # replaced-token detection: a small generator fills the masks, the encoder spots replacements
    python recipes/pretrain_nlu.py --config tiny-electra.yaml
    python recipes/pretrain_nlu.py --config base.yaml --dry-run true --plan.gpus 16

Bare config names resolve in recipes/configs/nlu/. Every field can be overridden
(``--train.lr 1e-4``, ``--model.objective electra``). The final folder loads into every TuringNLU
head class (``TuringNLUForSequenceClassification.from_pretrained(...)``) for fine-tuning.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

import torch  # noqa: E402

from turing_models.errors import UsageError, cli_main  # noqa: E402
from turing_models.training import Trainer, TrainerConfig  # noqa: E402
from turing_models.training.config import parse_config  # noqa: E402
from turing_models.training.plan import PlanConfig  # noqa: E402
from turing_models.training.pretrain import (  # noqa: E402
    DataSection,
    check_overrides,
    prepare_tokens,
    print_plan,
    train_evaluate_export,
)


@dataclass
class NLUModelSection:
    """Which encoder to build and how to pretrain it."""

    scale: str = "tiny"
    objective: Literal["mlm", "electra"] = "mlm"
    """``mlm``: masked LM; ``electra``: replaced-token detection with a small generator."""
    overrides: dict = field(default_factory=dict)
    """TuringNLUConfig fields to change (e.g. ``{generator_hidden_size: 64}``)."""


@dataclass
class MaskingSection:
    mlm_probability: float = 0.15
    whole_word_mask: bool = True


@dataclass
class PretrainNLUConfig:
    """Pretrain a TuringNLU encoder."""

    model: NLUModelSection = field(default_factory=NLUModelSection)
    data: DataSection = field(default_factory=lambda: DataSection(
        corpus="recipes/data/tinyshakespeare.txt", tokenizer="bert-wordpiece", seq_len=128))
    masking: MaskingSection = field(default_factory=MaskingSection)
    train: TrainerConfig = field(default_factory=lambda: TrainerConfig(run_name="nlu-tiny"))
    plan: PlanConfig = field(default_factory=PlanConfig)
    dry_run: bool = False
    """Validate the config and print the plan; do not train."""
    resume: Optional[str] = None
    """``auto`` or a checkpoint folder."""


class PackedMLMCollator:
    """Masks packed windows of tokens with :class:`DataCollatorForMLM` (its RNG state is
    checkpointed with the data position)."""

    def __init__(self, mlm):
        self.mlm = mlm

    def __call__(self, examples):
        return self.mlm([{"input_ids": e["input_ids"]} for e in examples])

    def state_dict(self):
        return self.mlm.state_dict()

    def load_state_dict(self, state):
        self.mlm.load_state_dict(state)


@cli_main
def main(argv: Optional[list[str]] = None) -> dict:
    import os

    cfg = parse_config(PretrainNLUConfig, argv, family="nlu", prog="pretrain_nlu.py")
    from turing_models.nlu import TuringNLUConfig, TuringNLUForPreTraining

    check_overrides(cfg.model.overrides, TuringNLUConfig)
    cfg.train.validate(int(os.environ.get("WORLD_SIZE", "1")))
    if cfg.dry_run:
        model_config = TuringNLUConfig.from_name(cfg.model.scale, pretraining_objective=cfg.model.objective,
                                                 **cfg.model.overrides)
        seq_len = cfg.data.seq_len or model_config.max_position_embeddings
        with torch.device("meta"):
            model = TuringNLUForPreTraining(model_config)
        print(f"config OK: TuringNLU {cfg.model.scale} ({cfg.model.objective}), run '{cfg.train.run_name}'")
        print(print_plan(model, cfg.train, cfg.plan, seq_len))
        return {"dry_run": True}

    from accelerate import PartialState

    from turing_models.data import DataCollatorForMLM, PackedDataset, load_tokenizer

    state = PartialState()
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.mask_token_id is None:
        raise UsageError(f"tokenizer '{cfg.data.tokenizer}' has no mask token; use an encoder tokenizer "
                         "such as bert-wordpiece")
    overrides = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **cfg.model.overrides}
    model_config = TuringNLUConfig.from_name(cfg.model.scale, pretraining_objective=cfg.model.objective, **overrides)
    seq_len = cfg.data.seq_len or model_config.max_position_embeddings
    if seq_len > model_config.max_position_embeddings:
        raise UsageError(f"data.seq_len={seq_len} exceeds max_position_embeddings="
                         f"{model_config.max_position_embeddings}; lower it")
    tokens = prepare_tokens(cfg.data, seq_len, progress=cfg.train.progress)
    rank, world = state.process_index, state.num_processes
    train_ds = PackedDataset(tokens, "train", seq_len=seq_len, seed=cfg.train.seed, rank=rank, world_size=world)
    val_ds = PackedDataset(tokens, "val", seq_len=seq_len, shuffle=False, rank=rank, world_size=world)
    collator = PackedMLMCollator(DataCollatorForMLM(
        tokenizer, mlm_probability=cfg.masking.mlm_probability, whole_word_mask=cfg.masking.whole_word_mask,
        seed=cfg.train.seed + rank))

    torch.manual_seed(cfg.train.seed)
    model = TuringNLUForPreTraining(model_config)
    if state.is_main_process:
        n = sum(p.numel() for p in model.parameters())
        print(f"TuringNLU {cfg.model.scale} ({cfg.model.objective}): {n / 1e6:.1f} M parameters, sequence {seq_len}")
    trainer = Trainer(model, train_ds, val_ds, config=cfg.train, collate_fn=collator, tokenizer=tokenizer)
    summary, result = train_evaluate_export(trainer, cfg, state.is_main_process)
    if result is None:
        return summary
    if state.is_main_process:
        print(f"validation loss {result['eval_loss']:.4f} ({cfg.model.objective})")
    return summary


if __name__ == "__main__":
    main()
