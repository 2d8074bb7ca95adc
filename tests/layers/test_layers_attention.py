"""The attention registry: one decision, one availability check, one reference, the same behaviour
in both families, never a silent fallback."""

from __future__ import annotations

import logging

import pytest
import torch

import turing_models  # noqa: F401  (registers "turing" with transformers)
from turing_models.errors import UsageError
from turing_models.layers import attention
from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM


def _nlg(**kw):
    return TuringNLGForCausalLM(TuringNLGConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=4, max_position_embeddings=16,
                                                hidden_dropout=0.0, attention_dropout=0.0, **kw)).eval()


def _nlu(**kw):
    return TuringNLUForMaskedLM(TuringNLUConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                num_attention_heads=4, intermediate_size=48,
                                                hidden_dropout=0.0, attention_dropout=0.0,
                                                **kw)).eval()


FAMILIES = {"nlg": _nlg, "nlu": _nlu}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_unknown_backend_is_a_usage_error_in_both_families(family):
    with pytest.raises(UsageError, match="attn_implementation='flash9' is not supported; choose one of turing"):
        FAMILIES[family](attn_implementation="flash9")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_unusable_turing_is_refused_with_the_reason(family, monkeypatch):
    monkeypatch.setattr(attention, "kernels_usable", lambda *tensors: False)
    with pytest.raises(UsageError, match="attn_implementation='turing' cannot run here: .*use 'sdpa'"):
        FAMILIES[family](attn_implementation="turing")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_is_sdpa_without_cuda(family):
    if torch.cuda.is_available():
        pytest.skip("the default is 'turing' on CUDA")
    assert FAMILIES[family]().config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_turing_on_tensors_it_cannot_run_on_warns_and_runs_sdpa(family, monkeypatch, caplog):
    torch.manual_seed(0)
    ref = FAMILIES[family](attn_implementation="sdpa")
    monkeypatch.setattr(attention, "kernels_usable", lambda *tensors: not tensors)  # the machine yes, these tensors no
    attention._warn_fallback.cache_clear()
    torch.manual_seed(0)
    model = FAMILIES[family](attn_implementation="turing")
    assert model.config._attn_implementation == "turing"
    ids = torch.randint(3, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with caplog.at_level(logging.WARNING, logger=attention.__name__), torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
        expected = ref(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(out[mask.bool()], expected[mask.bool()])
    assert "cannot run on tensors on cpu" in caplog.text and "running 'sdpa' instead" in caplog.text


def test_every_backend_matches_the_reference():
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, :, 2] = False  # a query row with nothing to attend to: zeros, never NaN
    usable = [n for n in attention.ATTN_IMPLEMENTATIONS if not attention.BACKENDS[n].kernel
              or attention.kernels_usable(q)]
    for causal in (False, True):
        ref = attention.eager_attention(q, k, v, attn_mask=mask, is_causal=causal)
        for name in usable:
            out = attention.dot_product_attention(q, k, v, implementation=name, attn_mask=mask, is_causal=causal)
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4, msg=name)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    packed = [torch.randn(5, 3, 8) for _ in range(3)]
    ref = attention.varlen_attention(*packed, cu, 3, implementation="eager")
    for name in usable:
        torch.testing.assert_close(attention.varlen_attention(*packed, cu, 3, implementation=name), ref,
                                   atol=1e-4, rtol=1e-4, msg=name)


def test_turing_is_registered_with_transformers():
    from transformers import AttentionInterface

    assert "turing" in AttentionInterface._global_mapping
    assert attention.register_with_transformers() is True  # idempotent
