"""lm-evaluation-harness on TuringNLG checkpoints.

lm-eval's ``hf`` model loads checkpoints with transformers' Auto classes, which know the
``turing_nlg`` model type only once :mod:`turing_models.nlg` is imported. This entry point imports
it and then runs lm-eval's own command line unchanged::

    python -m turing_models.tasks.lm_eval_harness --model hf \\
        --model_args pretrained=checkpoints/runs/tiny/final --tasks lambada_openai,hellaswag --batch_size 8

Every lm-eval option works as documented by lm-eval. (A GPT-2-format export of the checkpoint,
``recipes/convert.py``, runs with the plain ``lm_eval`` command too.)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import turing_models.nlg  # noqa: F401  (registers turing_nlg with the Auto classes)
    import turing_models.nlu  # noqa: F401

    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("error: lm-eval is not installed; pip install lm-eval", file=sys.stderr)
        return 2
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    result = cli_evaluate()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
