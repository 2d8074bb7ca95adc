#!/usr/bin/env python
"""Pretrain a TuringNLG decoder (causal language modelling) with the shared Trainer.

    # the CPU demo: tiny model on the bundled Shakespeare corpus, then a sample
    python recipes/pretrain_nlg.py --config tiny.yaml --demo

    # any field can be overridden; --dry-run prints parameters, FLOPs, memory per GPU and time
    python recipes/pretrain_nlg.py --config 17b.yaml --dry-run --plan.gpus 256
    python recipes/pretrain_nlg.py --config 125m.yaml --data.shards data_cache/web --train.lr 3e-4
    python recipes/pretrain_nlg.py --config 125m.yaml --data.shards data_cache/web --data.val_shards data_cache/held-out

    # several GPUs / nodes: the recipe's train.distributed names the engine (DDP, FSDP2, ZeRO)
    torchrun --nproc-per-node 8 recipes/pretrain_nlg.py --config 17b.yaml --data.shards data_cache/web

    # resume the newest complete checkpoint of the run (or pass a step-* folder)
    python recipes/pretrain_nlg.py --config tiny.yaml --resume auto

Bare config names resolve in the recipes' configs/nlg/. Installed from a wheel, run it as
``python -m turing_models.recipes.pretrain_nlg``. Output: checkpoints/runs/<run_name>/
(checkpoints/, metrics.jsonl, config.yaml, final/ = save_pretrained folder with the tokenizer).
"""

from __future__ import annotations

from typing import Optional

from turing_models.errors import cli_main
from turing_models.training.pretrain import PretrainNLGConfig, run_pretrain

__all__ = ["PretrainNLGConfig", "main"]


@cli_main
def main(argv: Optional[list[str]] = None) -> dict:
    return run_pretrain("nlg", argv, description=__doc__)


if __name__ == "__main__":
    main()
