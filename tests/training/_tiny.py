"""Tiny TuringNLG models and token folders shared by the trainer tests (fast on 2 CPU cores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

VOCAB = 512
SEQ = 16


def tiny_config(**overrides):
    from turing_models.nlg import TuringNLGConfig

    values = dict(vocab_size=VOCAB, real_vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    values.update(overrides)
    return TuringNLGConfig.from_name("tiny", **values)


def tiny_model(seed: int = 0, **overrides):
    from turing_models.nlg import TuringNLGForCausalLM

    torch.manual_seed(seed)
    return TuringNLGForCausalLM(tiny_config(**overrides))


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
