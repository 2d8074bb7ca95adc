#!/usr/bin/env python
"""Evaluate a saved model: perplexity of a decoder, or the metrics of a fine-tuned task.

    python recipes/evaluate.py --task perplexity --model checkpoints/runs/tiny/final --data recipes/data/tinyshakespeare.txt
    python recipes/evaluate.py --task perplexity --model <folder> --data <token-shard folder> --split val --stride 256
    python recipes/evaluate.py --task qa --model checkpoints/runs/finetune-qa/final --data dev-v2.0.json
    python recipes/evaluate.py --task classification --model checkpoints/runs/finetune-classification/final --data test.tsv

``--output <folder>`` writes metrics.json and the predictions there; ``--help`` lists every option.
"""

from __future__ import annotations

import json
import logging
import sys

from turing_models.errors import cli_main


@cli_main
def main(argv: list[str] | None = None) -> dict:
    from turing_models.tasks.common import format_metrics
    from turing_models.tasks.evaluate import EvaluateConfig, run_evaluate
    from turing_models.training.config import parse_config

    cfg = parse_config(EvaluateConfig, list(sys.argv[1:] if argv is None else argv), prog="evaluate.py")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("turing_models").setLevel(logging.INFO)
    metrics = run_evaluate(cfg)
    if cfg.task == "perplexity":
        line = f"perplexity {metrics['perplexity']:.3f}, nll {metrics['nll']:.4f}, tokens {metrics['tokens']}"
        if "bits_per_byte" in metrics:
            line += f", bits_per_byte {metrics['bits_per_byte']:.4f}"
        print(f"{line} (window {metrics['max_length']}, stride {metrics['stride']})")
    else:
        print(f"{cfg.task} eval: {format_metrics(metrics, cfg.task)}")
        if metrics.get("null_threshold_source"):
            print(f"qa no-answer: null score - best span score > {metrics['null_threshold']:.4g} ({metrics['null_threshold_source']})")
    if cfg.output:
        print(f"metrics: {cfg.output}/metrics.json")
    else:
        print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
