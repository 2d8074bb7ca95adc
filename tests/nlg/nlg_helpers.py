"""Helpers for the TuringNLG tests: tiny configs, GPT-2 checkpoints on disk, a tokenizer, Hub snapshots."""

from __future__ import annotations

import json

import torch

from turing_models.nlg import TuringNLG, TuringNLGConfig

# Random-initialised GPT2LMHeadModel shapes checked for parity (kept tiny: CPU, seconds).
GPT2_SHAPES = {
    "l2-h64-a4": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64),
    "l3-h96-a3-inner": dict(n_layer=3, n_embd=96, n_head=3, n_inner=200, vocab_size=257, n_positions=48),
    "l1-h128-a8-untied": dict(n_layer=1, n_embd=128, n_head=8, vocab_size=211, n_positions=32,
                              tie_word_embeddings=False),
}


def tiny_config(**overrides) -> TuringNLGConfig:
    values = dict(
        vocab_size=384, real_vocab_size=300, max_position_embeddings=64, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    values.update(overrides)
    return TuringNLGConfig(**values)


def tiny_model(**overrides) -> TuringNLG:
    torch.manual_seed(0)
    return TuringNLG(tiny_config(**overrides)).eval()


def save_gpt2(folder, seed=0, **shape):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(bos_token_id=None, eos_token_id=None, initializer_range=0.2, **shape)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder)
    return model


def build_tokenizer(folder=None):
    """A byte-level BPE tokenizer of ~300 tokens (GPT-2 style), trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["Once upon a time there was a tiny model.", "The quick brown fox jumps over the lazy dog.",
            "Hello world, hello Turing."] * 20
    tok.train_from_iterator(text, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    if folder is not None:
        fast.save_pretrained(folder)
    return fast


def make_hub_snapshot(cache_dir, repo_id: str, source_folder, revision="0" * 40):
    """Lay out ``source_folder`` as huggingface_hub's cache entry of ``repo_id`` (models--org--name)."""
    import shutil

    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    for f in source_folder.iterdir():
        if f.is_file():
            shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap


def read_json(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def load_script(relative_path: str, module_name: str):
    """Import a script (recipes/generate.py, benchmarks/generate.py) under a unique module name."""
    import importlib.util
    import sys
    from pathlib import Path

    if module_name in sys.modules:
        return sys.modules[module_name]
    path = Path(__file__).resolve().parents[2] / relative_path
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
