#!/usr/bin/env python
"""Fine-tune an encoder (extractive QA, classification) or a decoder (generative SFT).

    python recipes/finetune.py --task qa                     # tiny encoder on the bundled XQuAD
    python recipes/finetune.py --task classification         # tiny encoder on the UCI sentences
    python recipes/finetune.py --task sft                    # tiny TuringNLG: context + question -> answer
    python recipes/finetune.py --task qa --model bert-base-uncased --data dev-v2.0.json --train.max_steps 2000

``--config`` defaults to ``recipes/configs/finetune/<task>.yaml``; every field can be overridden
(``--train.lr 5e-5``, ``--qa.doc_stride 64``); ``--help`` lists them all. The run folder
``<train.output_dir>/<train.run_name>`` gets ``final/`` (model + tokenizer), ``metrics.json`` and
the predictions.
"""

from __future__ import annotations

import logging
import sys

from turing_models.errors import cli_main

TASKS = ("qa", "classification", "sft")


def _with_default_config(argv: list[str]) -> list[str]:
    """Prepend ``--config <task>.yaml`` when no config is given (the task's recipe defaults)."""
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    task = "qa"
    for i, arg in enumerate(argv):
        if arg == "--task" and i + 1 < len(argv):
            task = argv[i + 1]
        elif arg.startswith("--task="):
            task = arg.split("=", 1)[1]
    if task not in TASKS:
        from turing_models.errors import UsageError

        raise UsageError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return ["--config", task, *argv]


@cli_main
def main(argv: list[str] | None = None) -> dict:
    from turing_models.tasks.finetune import FinetuneConfig, format_metrics, run_finetune
    from turing_models.training.config import parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" not in argv and "--help" not in argv:
        argv = _with_default_config(argv)
    cfg = parse_config(FinetuneConfig, argv, family="finetune", prog="finetune.py")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("turing_models").setLevel(logging.INFO)
    result = run_finetune(cfg)
    if result["final"]:
        print(f"{cfg.task} eval: {format_metrics(result['metrics'], cfg.task)}")
        print(f"model: {result['final']}  metrics: {result['run_dir']}/metrics.json")
    return result


if __name__ == "__main__":
    main()
