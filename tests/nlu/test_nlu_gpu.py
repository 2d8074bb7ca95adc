"""CUDA checks of the TuringNLU encoder (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from turing_models.layers import kernels_usable
from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("attn", ["sdpa", "turing"])
def test_unpadded_equals_padded_on_cuda(attn):
    if attn == "turing" and not kernels_usable():
        pytest.skip("needs Triton")
    config = TuringNLUConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, hidden_dropout=0.0, attention_dropout=0.0)
    config._attn_implementation = attn
    model = TuringNLUForMaskedLM(config).cuda().train()
    ids = torch.randint(5, 128, (4, 40), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    mask[3, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    outs = {}
    for unpad in (True, False):
        model.config.unpad_inputs = unpad
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        outs[unpad] = (out.logits[mask.bool()].detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(outs[True][0], outs[False][0], atol=2e-4, rtol=2e-4)
    for name, grad in outs[True][1].items():
        torch.testing.assert_close(grad, outs[False][1][name], atol=2e-4, rtol=2e-4)
