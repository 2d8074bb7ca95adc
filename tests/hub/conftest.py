"""Tiny random-init checkpoints (saved with real tokenizers) shared by the Hub / ecosystem tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

NLG_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                hidden_dropout=0.0, attention_dropout=0.0)
NLU_TINY = dict(vocab_size=8192, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from turing_models.data import load_tokenizer

    return load_tokenizer("gpt2-bpe")


@pytest.fixture(scope="session")
def bert_tokenizer():
    from turing_models.data import load_tokenizer

    return load_tokenizer("bert-wordpiece")


@pytest.fixture(scope="session")
def nlg_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A TuringNLGForCausalLM (padded 50304-row vocabulary, GPT-2 BPE) in a save_pretrained folder."""
    from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM

    torch.manual_seed(1)
    config = TuringNLGConfig(vocab_size=50304, real_vocab_size=50257, **NLG_TINY)
    return _save(TuringNLGForCausalLM(config).eval(), gpt2_tokenizer, tmp_path_factory.mktemp("nlg") / "model")


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, gpt2_tokenizer) -> Path:
    """A public-format GPT2LMHeadModel folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(2)
    config = GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return _save(GPT2LMHeadModel(config).eval(), gpt2_tokenizer, tmp_path_factory.mktemp("gpt2") / "model")


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, bert_tokenizer) -> Path:
    """A public-format BertForMaskedLM folder."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(3)
    config = BertConfig(vocab_size=8192, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return _save(BertForMaskedLM(config).eval(), bert_tokenizer, tmp_path_factory.mktemp("bert") / "model")


@pytest.fixture(scope="session")
def nlu_dirs(tmp_path_factory, bert_tokenizer) -> dict[str, Path]:
    """TuringNLU folders for every head: mlm, cls (3 labels), qa, tok (4 labels), base."""
    from turing_models import nlu

    root = tmp_path_factory.mktemp("nlu")
    config = nlu.TuringNLUConfig(**NLU_TINY)
    heads = {
        "mlm": (nlu.TuringNLUForMaskedLM, {}),
        "cls": (nlu.TuringNLUForSequenceClassification,
                {"num_labels": 3, "id2label": {0: "negative", 1: "neutral", 2: "positive"},
                 "label2id": {"negative": 0, "neutral": 1, "positive": 2}}),
        "qa": (nlu.TuringNLUForQuestionAnswering, {"num_labels": 2}),
        "tok": (nlu.TuringNLUForTokenClassification, {"num_labels": 4}),
        "base": (nlu.TuringNLUModel, {}),
    }
    out = {}
    for i, (name, (cls, extra)) in enumerate(heads.items()):
        torch.manual_seed(10 + i)
        cfg = nlu.TuringNLUConfig(**{**config.to_dict(), **extra}) if extra else config
        out[name] = _save(cls(cfg).eval(), bert_tokenizer, root / name)
    return out


@pytest.fixture
def convert_recipe():
    """recipes/convert.py imported as a module."""
    return load_recipe("convert")


@pytest.fixture
def run_cli(convert_recipe, capsys):
    """Run recipes/convert.py in-process: ``run_cli(argv) -> (exit code, stdout, stderr, result)``."""

    def run(argv):
        try:
            result = convert_recipe.main([str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            result, code = None, exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err, result

    return run


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
