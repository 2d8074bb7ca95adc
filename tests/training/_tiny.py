"""Token folders and recipe loading for the trainer tests; the tiny models are tests/factories.py's."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, also for torchrun workers
from factories import TRAINER_VOCAB as VOCAB  # noqa: E402
from factories import trainer_nlg_config as tiny_config  # noqa: E402,F401
from factories import trainer_nlg_model as tiny_model  # noqa: E402,F401

SEQ = 16


def token_folder(path: Path, n_train_docs: int = 40, n_val_docs: int = 6, seed: int = 0) -> Path:
    """A token folder of random 'documents' with a learnable pattern (each doc counts up mod VOCAB)."""
    from turing_models.data import write_token_folder

    rng = np.random.default_rng(seed)

    def doc():
        start, length = int(rng.integers(1, VOCAB)), int(rng.integers(20, 60))
        return [(start + i) % (VOCAB - 1) + 1 for i in range(length)] + [0]

    docs = {"train": [doc() for _ in range(n_train_docs)], "val": [doc() for _ in range(n_val_docs)]}
    return write_token_folder(path, docs, vocab_size=VOCAB, eos_token_id=0)


RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (the recipes are scripts, not a package)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
