#!/usr/bin/env python
"""Fine-tune an encoder (extractive QA, classification) or a decoder (generative SFT).

    python recipes/finetune.py --task qa                     # tiny encoder on the bundled XQuAD
    python recipes/finetune.py --task classification         # tiny encoder on the UCI sentences
    python recipes/finetune.py --task sft                    # tiny TuringNLG: context + question -> answer
    python recipes/finetune.py --task qa --model bert-base-uncased --data train-v2.0.json \\
        --eval_data dev-v2.0.json --train.max_steps 2000

The task's recipe ``recipes/configs/finetune/<task>.yaml`` gives the defaults; ``--config`` and
every field override it (``--train.lr 5e-5``, ``--qa.doc_stride 64``); ``--help`` lists them
all. The run folder ``<train.output_dir>/<train.run_name>`` gets ``final/`` (model + tokenizer),
``metrics.json`` and the predictions.
"""

from __future__ import annotations

import logging
import sys

from turing_models.errors import cli_main


def parse(argv: list[str]):
    """The run's config: the task's recipe, then ``--config`` files, then flags.

    The config library parses the command line twice: once to learn the task, then with the
    task's recipe as the first config, so that everything given overrides it.
    """
    from turing_models.tasks.finetune import FinetuneConfig
    from turing_models.training.config import parse_config, resolve_config_path

    task = parse_config(FinetuneConfig, argv, family="finetune", prog="finetune.py").task
    recipe = str(resolve_config_path(task, "finetune"))
    return parse_config(FinetuneConfig, ["--config", recipe, *argv], family="finetune", prog="finetune.py")


@cli_main
def main(argv: list[str] | None = None) -> dict:
    from turing_models.tasks.common import format_metrics
    from turing_models.tasks.finetune import run_finetune

    cfg = parse(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("turing_models").setLevel(logging.INFO)
    result = run_finetune(cfg)
    if result["final"]:
        print(f"{cfg.task} eval: {format_metrics(result['metrics'], cfg.task)}")
        if result["metrics"].get("null_threshold_source"):
            m = result["metrics"]
            print(f"qa no-answer: null score - best span score > {m['null_threshold']:.4g} ({m['null_threshold_source']})")
        print(f"model: {result['final']}  metrics: {result['run_dir']}/metrics.json")
    return result


if __name__ == "__main__":
    main()
