"""TuringNLUConfig: named scales, closed-form parameter counts, validation, serialisation."""

from __future__ import annotations

import pytest
import torch

from turing_models.nlu import (
    NLU_SCALES,
    TuringNLUConfig,
    TuringNLUForMaskedLM,
    TuringNLUModel,
    num_parameters,
)


@pytest.mark.parametrize("name", list(NLU_SCALES))
def test_closed_form_parameter_count_matches_the_model(name):
    config = TuringNLUConfig.from_name(name)
    with torch.device("meta"):
        base = TuringNLUModel(config)
        mlm = TuringNLUForMaskedLM(config)
    assert base.num_parameters() == num_parameters(config)
    assert mlm.num_parameters() == num_parameters(config, pooler=False, mlm_head=True)


def test_named_scales_have_the_published_shapes():
    base, large, xl = (TuringNLUConfig.from_name(n) for n in ("base", "large", "xl"))
    assert (base.num_hidden_layers, base.hidden_size, base.num_attention_heads) == (12, 768, 12)
    assert (large.num_hidden_layers, large.hidden_size, large.num_attention_heads) == (24, 1024, 16)
    assert num_parameters(base) == 109_482_240  # BERT-base with pooler
    assert xl.vocab_size == 250002 and xl.norm_position == "pre"
    assert 2.1e9 < num_parameters(xl) < 2.3e9  # T-ULRv5 scale
    assert TuringNLUConfig.from_name("tiny", vocab_size=8192).vocab_size == 8192


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("hidden_act", "swish", "hidden_act='swish'"),
        ("norm_position", "sandwich", "norm_position='sandwich'"),
        ("hidden_size", 100, "divisible by num_attention_heads"),
        ("num_hidden_layers", 0, "num_hidden_layers=0"),
        ("hidden_dropout", 1.5, "hidden_dropout=1.5"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout=1.5"),  # BERT's spelling is an alias
        ("position_offset", 600, "position_offset=600"),
        ("classifier_head", "mean", "classifier_head='mean'"),
        ("pretraining_objective", "nsp", "pretraining_objective='nsp'"),
    ],
)
def test_invalid_values_name_field_value_and_allowed(field, value, needle):
    with pytest.raises(ValueError) as err:
        TuringNLUConfig(**{field: value})
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_scale():
    with pytest.raises(ValueError, match="tiny, base, large, xl"):
        TuringNLUConfig.from_name("huge")


def test_round_trip_through_config_json(tmp_path):
    config = TuringNLUConfig.from_name("tiny", norm_position="pre", unpad_inputs=False, num_labels=5)
    config.save_pretrained(tmp_path)
    again = TuringNLUConfig.from_pretrained(tmp_path)
    assert again.norm_position == "pre" and again.unpad_inputs is False and again.num_labels == 5
    assert again.to_dict() == config.to_dict()


def test_generator_config_is_a_smaller_encoder():
    config = TuringNLUConfig.from_name("base", pretraining_objective="electra")
    gen = config.generator_config()
    assert gen.hidden_size == 192 and gen.num_attention_heads == 3 and gen.num_hidden_layers == 12
    assert gen.vocab_size == config.vocab_size and gen.pretraining_objective == "mlm"
