"""TuringNLGConfig, the named scales, the closed-form parameter count and the 17B meta build."""

from __future__ import annotations

import time

import psutil
import pytest
import torch

from turing_models.nlg import NLG_SCALES, TuringNLG, TuringNLGConfig, nlg_num_parameters


@pytest.mark.parametrize("name", list(NLG_SCALES))
def test_param_count_formula_matches_every_scale(name):
    config = TuringNLGConfig.from_name(name)
    for field, value in NLG_SCALES[name].items():
        assert getattr(config, field) == value, field
    assert config.vocab_size % 128 == 0 and config.real_vocab_size == 50257
    with torch.device("meta"):
        model = TuringNLG(config)
    assert model.num_parameters() == nlg_num_parameters(config)
    assert model.num_parameters(exclude_embeddings=True) == nlg_num_parameters(config, exclude_embeddings=True)


def test_param_count_untied_and_custom_ffn():
    config = TuringNLGConfig(hidden_size=96, num_attention_heads=3, num_hidden_layers=2, intermediate_size=200,
                             vocab_size=300, max_position_embeddings=40, tie_word_embeddings=False)
    with torch.device("meta"):
        model = TuringNLG(config)
    assert model.num_parameters() == nlg_num_parameters(config)


def test_17b_is_turing_nlg():
    config = TuringNLGConfig.from_name("17b")
    assert config.head_dim == 152 and config.vocab_size == 50304 and config.max_position_embeddings == 1024
    assert 17.1e9 < nlg_num_parameters(config) < 17.3e9


def test_17b_meta_build_is_fast_and_allocates_nothing():
    config = TuringNLGConfig.from_name("17b")
    rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with torch.device("meta"):
        model = TuringNLG(config)
    elapsed = time.perf_counter() - start
    grown = psutil.Process().memory_info().rss - rss
    assert elapsed < 1.0, f"17B meta build took {elapsed:.2f} s"
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    assert grown < 64 * 2**20, f"the meta build grew the process by {grown / 2**20:.0f} MiB"
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, counted once


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(hidden_size=100, num_attention_heads=3), ["hidden_size", "100", "num_attention_heads=3"]),
        (dict(hidden_act="swish"), ["hidden_act", "swish", "gelu", "gelu_tanh"]),
        (dict(activation="swish"), ["hidden_act", "swish", "gelu", "gelu_tanh"]),  # the alias
        (dict(vocab_size=100, real_vocab_size=200), ["real_vocab_size", "200", "vocab_size=100"]),
        (dict(hidden_dropout=1.5), ["hidden_dropout", "1.5"]),
        (dict(num_hidden_layers=0), ["num_hidden_layers", "0", "positive"]),
        (dict(attn_implementation="flash"), ["attn_implementation", "flash", "sdpa", "eager", "turing"]),
    ],
)
def test_invalid_values_name_field_value_and_allowed(kwargs, words):
    with pytest.raises(ValueError) as info:
        TuringNLGConfig(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_unknown_scale_lists_the_names():
    with pytest.raises(ValueError, match=r"'3b'.*tiny, 125m.*17b"):
        TuringNLGConfig.from_name("3b")


def test_from_name_overrides_and_json_round_trip(tmp_path):
    config = TuringNLGConfig.from_name("tiny", activation="gelu_tanh")
    assert config.hidden_act == config.activation == "gelu_tanh" and config.intermediate_size == 4 * 256
    config.save_pretrained(tmp_path)
    again = TuringNLGConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
