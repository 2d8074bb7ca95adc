"""Unpadded execution equals the padded path in outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from factories import nlu_config

from turing_models.nlu import PackedBatch, TuringNLUForMaskedLM, TuringNLUModel


def _config(**kw):
    return nlu_config(**{"vocab_size": 101, "max_position_embeddings": 40, **kw})


def _batch(pad_id=0):
    ids = torch.randint(5, 101, (4, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 1:] = 0
    mask[3, 5:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def test_packed_batch_round_trip():
    ids, mask = _batch()
    packed = PackedBatch.from_mask(mask)
    assert packed.cu_seqlens.dtype == torch.int32
    assert packed.cu_seqlens.tolist() == [0, 13, 22, 23, 28]
    assert packed.max_seqlen == 13
    x = torch.randn(4, 13, 3)
    y = packed.unpack(packed.pack(x))
    assert torch.equal(y[mask.bool()], x[mask.bool()])
    assert torch.all(y[~mask.bool()] == 0)


@pytest.mark.parametrize("norm_position", ["post", "pre"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("roberta", [False, True])
def test_unpadded_equals_padded_outputs_and_gradients(norm_position, attn, roberta):
    extra = dict(position_offset=2, pad_token_id=1, type_vocab_size=1) if roberta else {}
    config = _config(norm_position=norm_position, **extra)
    config._attn_implementation = attn
    model = TuringNLUForMaskedLM(config).train()  # train mode, dropout 0: the backward path
    ids, mask = _batch(pad_id=config.pad_token_id)
    labels = ids.masked_fill(mask == 0, -100)
    results = {}
    for unpad in (True, False):
        model.config.unpad_inputs = unpad
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[unpad] = (out, grads)
    (a, ga), (b, gb) = results[True], results[False]
    real = mask.bool()
    torch.testing.assert_close(a.logits[real], b.logits[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
    for ha, hb in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(ha[real], hb[real], atol=1e-5, rtol=1e-5)
    assert ga.keys() == gb.keys() and len(ga) == len(list(model.parameters()))
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert torch.all(a.hidden_states[-1][~real] == 0)  # unpadded: padding positions are zeros


def test_unpadded_runs_on_real_tokens_only(monkeypatch):
    """The packed path hands the layers [total_real_tokens, hidden], not [batch, seq, hidden]."""
    config = _config()
    model = TuringNLUModel(config).eval()
    ids, mask = _batch()
    seen = []
    hook = model.layers[0].mlp.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        model.config.unpad_inputs = False
        model(input_ids=ids, attention_mask=mask)
    hook.remove()
    assert seen == [(int(mask.sum()), 32), (4, 13, 32)]


def test_inputs_embeds_and_no_mask_paths_agree():
    config = _config()
    model = TuringNLUModel(config).eval()
    ids, mask = _batch()
    with torch.no_grad():
        by_ids = model(input_ids=ids, attention_mask=mask).last_hidden_state
        by_embeds = model(inputs_embeds=model.embeddings.word_embeddings(ids), attention_mask=mask).last_hidden_state
        full = model(input_ids=ids[:1]).last_hidden_state
    torch.testing.assert_close(by_embeds[mask.bool()], by_ids[mask.bool()], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(full[0], by_ids[0], atol=1e-5, rtol=1e-5)


def test_inference_fast_path_equals_autograd_path():
    """Without autograd the packed attention writes over the query slices; same outputs."""
    config = _config()
    model = TuringNLUModel(config).eval()
    ids, mask = _batch()
    with torch.no_grad():
        fast = model(input_ids=ids, attention_mask=mask).last_hidden_state
    slow = model(input_ids=ids, attention_mask=mask).last_hidden_state.detach()
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-6)
