#!/usr/bin/env python
"""Pretrain a TuringNLU encoder: masked LM (BERT / RoBERTa) or replaced-token detection (ELECTRA).

    # tiny encoder, masked LM, on the bundled corpus with the built-in WordPiece tokenizer (CPU)
    python recipes/pretrain_nlu.py --config tiny.yaml

    # replaced-token detection: a small generator fills the masks, the encoder spots replacements
    python recipes/pretrain_nlu.py --config tiny-electra.yaml
    python recipes/pretrain_nlu.py --config base.yaml --dry-run --plan.gpus 16

Bare config names resolve in the recipes' configs/nlu/. Every field can be overridden
(``--train.lr 1e-4``, ``--model.objective electra``). The final folder loads into every TuringNLU
head class (``TuringNLUForSequenceClassification.from_pretrained(...)``) for fine-tuning.
Installed from a wheel, run it as ``python -m turing_models.recipes.pretrain_nlu``.
"""

from __future__ import annotations

from typing import Optional

from turing_models.errors import cli_main
from turing_models.training.pretrain import PretrainNLUConfig, run_pretrain

__all__ = ["PretrainNLUConfig", "main"]


@cli_main
def main(argv: Optional[list[str]] = None) -> dict:
    return run_pretrain("nlu", argv, description=__doc__)


if __name__ == "__main__":
    main()
