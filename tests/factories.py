"""The one tiny-model factory of the test suite: both families, the public checkpoints they
convert, a tokenizer, Hub snapshots. Every test folder imports from here (``from factories import
...``; ``tests/`` is on ``sys.path`` through its ``conftest.py``)."""

from __future__ import annotations

import json

import torch
import transformers

from turing_models.nlg import TuringNLG, TuringNLGConfig
from turing_models.nlu import TuringNLUConfig


# ============================================================================================ #
# TuringNLG and GPT-2
# ============================================================================================ #
# Random-initialised GPT2LMHeadModel shapes checked for parity (kept tiny: CPU, seconds).
GPT2_SHAPES = {
    "l2-h64-a4": dict(n_layer=2, n_embd=64, n_head=4, vocab_size=300, n_positions=64),
    "l3-h96-a3-inner": dict(n_layer=3, n_embd=96, n_head=3, n_inner=200, vocab_size=257, n_positions=48),
    "l1-h128-a8-untied": dict(n_layer=1, n_embd=128, n_head=8, vocab_size=211, n_positions=32,
                              tie_word_embeddings=False),
}


def nlg_config(**overrides) -> TuringNLGConfig:
    """The unit-test decoder: 2 layers, hidden 64, a padded vocabulary (384 rows, 300 real), no dropout."""
    values = dict(
        vocab_size=384, real_vocab_size=300, max_position_embeddings=64, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
        initializer_range=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )
    values.update(overrides)
    return TuringNLGConfig(**values)


def nlg_model(**overrides) -> TuringNLG:
    """:func:`nlg_config`'s model, seeded, in eval mode."""
    torch.manual_seed(0)
    return TuringNLG(nlg_config(**overrides)).eval()


TRAINER_VOCAB = 512


def trainer_nlg_config(**overrides) -> TuringNLGConfig:
    """The trainer tests' decoder: the ``tiny`` scale narrowed to hidden 32, 2 layers, 2 heads, 512 tokens."""
    values = dict(vocab_size=TRAINER_VOCAB, real_vocab_size=TRAINER_VOCAB, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    values.update(overrides)
    return TuringNLGConfig.from_name("tiny", **values)


def trainer_nlg_model(seed: int = 0, **overrides) -> TuringNLG:
    """:func:`trainer_nlg_config`'s model, seeded, in training mode."""
    torch.manual_seed(seed)
    return TuringNLG(trainer_nlg_config(**overrides))


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
    path = Path(__file__).resolve().parents[1] / relative_path
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# ============================================================================================ #
# TuringNLU and BERT / RoBERTa / XLM-R
# ============================================================================================ #
def nlu_config(**overrides) -> TuringNLUConfig:
    """The unit-test encoder: 2 layers, hidden 32, 4 heads, 64 tokens, no dropout."""
    values = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=32, hidden_dropout=0.0, attention_dropout=0.0)
    values.update(overrides)
    return TuringNLUConfig(**values)


HF_STEMS = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
HF_CONFIGS = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig,
           "xlm-roberta": transformers.XLMRobertaConfig}
HF_ENCODER_SHAPES = {
    "h32": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37),
    "h48": dict(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, intermediate_size=64,
                hidden_act="gelu_new"),
}


def pad_id(kind: str) -> int:
    return 0 if kind == "bert" else 1


def hf_config(kind: str, shape: str = "h32", **overrides):
    kwargs = dict(vocab_size=97, max_position_embeddings=24 + (0 if kind == "bert" else 2),
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=pad_id(kind))
    kwargs.update(HF_ENCODER_SHAPES[shape])
    kwargs.update(overrides)
    return HF_CONFIGS[kind](**kwargs)


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.05) -> None:
    """Move every parameter off its init (zero biases, unit norms) so that a misplaced tensor shows."""
    gen = torch.Generator().manual_seed(1234)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * scale)


def make_hf(kind: str, head: str, shape: str = "h32", **overrides):
    """A random transformers model, e.g. ``make_hf("bert", "ForMaskedLM")``."""
    model = getattr(transformers, HF_STEMS[kind] + head)(hf_config(kind, shape, **overrides))
    perturb(model)
    model.tie_weights()
    return model.eval()


def make_batch(kind: str, batch: int = 3, seq: int = 11, padding: bool = True, vocab: int = 97, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=gen)
    mask = torch.ones_like(ids)
    if padding:
        for row in range(1, batch):
            mask[row, max(1, seq - 3 * row):] = 0
    ids = ids.masked_fill(mask == 0, pad_id(kind))
    return ids, mask
