"""The model itself: attention backends, loss, padded vocabulary, generation, checkpointing."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from factories import nlg_config, nlg_model

from turing_models.nlg import TuringNLG


def _ids(batch=3, length=12, vocab=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def _left_pad(rows, pad=0):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def test_init_follows_gpt2_megatron():
    config = nlg_config(num_hidden_layers=8, hidden_size=256, initializer_range=0.02)
    torch.manual_seed(0)
    model = TuringNLG(config)
    block = model.model.layers[0]
    assert block.attention.qkv.weight.std().item() == pytest.approx(0.02, rel=0.1)
    scaled = 0.02 / (2 * 8) ** 0.5
    assert block.attention.dense.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert block.mlp.fc_out.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert torch.all(block.attention.qkv.bias == 0) and torch.all(block.input_layernorm.weight == 1)


def test_eager_and_sdpa_agree_and_attn_implementation_switches():
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    eager = nlg_model(attn_implementation="eager")
    sdpa = nlg_model(attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    with torch.no_grad():
        a = eager(ids, attention_mask=mask).logits
        b = sdpa(ids, attention_mask=mask).logits
    assert torch.allclose(a * mask[..., None], b * mask[..., None], atol=1e-5)
    sdpa.set_attn_implementation("eager")
    assert sdpa.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="flash_attention_2"):
        sdpa.set_attn_implementation("flash_attention_2")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(ValueError, match="turing.*CUDA"):
            nlg_model(attn_implementation="turing")


def test_default_attention_is_sdpa_without_cuda():
    model = nlg_model()
    expected = "turing" if torch.cuda.is_available() else "sdpa"
    if torch.cuda.is_available():
        pytest.importorskip("triton")
    assert model.config._attn_implementation == expected


def test_padded_vocab_is_never_predicted_and_loss_ignores_it():
    model = nlg_model()  # 384 rows, 300 real
    with torch.no_grad():
        model.lm_head.weight[300:] = 50.0  # padded rows would win every argmax if they were scored
    ids = _ids()
    out = model(ids, labels=ids)
    assert out.logits.shape[-1] == 300
    gen = model.generate(ids, max_new_tokens=6, do_sample=True, top_k=0, pad_token_id=0)
    assert int(gen.max()) < 300
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_labels_shift_labels_ignore_index_and_num_items():
    model = nlg_model()
    ids = _ids()
    labels = ids.clone()
    labels[0, :4] = -100
    loss = model(ids, labels=labels).loss
    shift = torch.full_like(labels, -100)
    shift[:, :-1] = labels[:, 1:]
    assert torch.allclose(model(ids, shift_labels=shift).loss, loss, atol=1e-6)
    n = int((labels[:, 1:] != -100).sum())
    summed = model(ids, labels=labels, num_items_in_batch=n).loss
    assert torch.allclose(summed, loss, atol=1e-5)
    fused = nlg_model(fused_cross_entropy=True)
    out = fused(ids, labels=labels)
    assert out.logits is None and torch.allclose(out.loss, loss, atol=1e-5)


def test_kv_cache_matches_full_forward():
    model = nlg_model()
    ids = _ids(batch=2, length=10)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :6], use_cache=True)
        nxt = model(ids[:, 6:], cache=first.cache)
    assert torch.allclose(full[:, 6:], nxt.logits, atol=1e-5)


def test_a_training_forward_keeps_no_cache_unless_asked():
    model = nlg_model()
    ids = _ids(batch=2, length=8)
    model.train()
    assert model(ids, labels=ids).cache is None  # nothing held for backward's sake
    assert model(ids, use_cache=True).cache.get_seq_length() == 8
    model.eval()
    with torch.no_grad():
        assert model(ids).cache.get_seq_length() == 8  # config.use_cache


def test_left_padded_batch_generates_what_each_row_generates_alone():
    model = nlg_model()
    rows = [[5, 17, 99, 3, 250, 41, 7, 8, 9], [11, 12], [200, 201, 202, 203, 204]]
    ids, mask = _left_pad(rows)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    for i, row in enumerate(rows):
        alone = model.generate(torch.tensor([row]), max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert batch[i, ids.shape[1]:].tolist() == alone[0, len(row):].tolist()
    # beam search on the padded batch equals beam search alone too
    beams = model.generate(ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    alone = model.generate(torch.tensor([rows[1]]), max_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0)
    assert beams[1, ids.shape[1]:].tolist() == alone[0, 2:].tolist()


def test_sampling_is_seeded_and_respects_top_k():
    model = nlg_model()
    ids = _ids(batch=2, length=5)
    kw = dict(max_new_tokens=6, do_sample=True, temperature=0.7, top_k=3, top_p=0.9, pad_token_id=0)
    torch.manual_seed(3)
    a = model.generate(ids, **kw)
    torch.manual_seed(3)
    b = model.generate(ids, **kw)
    assert torch.equal(a, b)
    with torch.no_grad():
        logits = model(a[:, :-1]).logits[:, 4:]
    top3 = logits.topk(3, dim=-1).indices
    assert bool((top3 == a[:, 5:, None]).any(-1).all())


@pytest.mark.filterwarnings("ignore:.*gradient_checkpointing.*:FutureWarning")
def test_gradient_checkpointing_gives_the_same_gradients():
    ids = _ids(batch=2, length=16)

    def grads(checkpointing):
        model = nlg_model(hidden_dropout=0.0, attention_dropout=0.0).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        out = model(ids, labels=ids)
        assert out.cache is None or not checkpointing
        out.loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert plain.keys() == ckpt.keys()
    for name in plain:
        assert torch.allclose(plain[name], ckpt[name], atol=1e-6, rtol=1e-5), name


def test_context_overflow_is_a_clear_error():
    model = nlg_model()
    with pytest.raises(ValueError, match="exceeds the context length max_position_embeddings=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_output_hidden_states_and_tuple_output():
    model = nlg_model()
    ids = _ids(batch=1, length=4)
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    tup = model(ids, return_dict=False, use_cache=False)
    assert torch.equal(tup[0], out.logits)


def test_turing_attention_backend_matches_eager():
    """Runs where the Triton kernels can: CUDA, or the CPU interpreter (the suite sets TRITON_INTERPRET=1)."""
    from turing_models.layers.attention import kernels_usable

    if not kernels_usable():
        pytest.skip("needs Triton on CUDA, or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ref = nlg_model(attn_implementation="eager", num_hidden_layers=1).to(device)
    ours = nlg_model(attn_implementation="turing", num_hidden_layers=1).to(device)
    assert ours.config._attn_implementation == "turing"
    ids = _ids(batch=2, length=9).to(device)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        a = ref(ids, attention_mask=mask).logits
        b = ours(ids, attention_mask=mask).logits
    keep = mask.bool()
    assert (a[keep] - b[keep]).abs().max().item() < 1e-4
    kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(ref.generate(ids, **kw), ours.generate(ids, **kw))


def test_resize_token_embeddings_keeps_padding_consistent():
    model = nlg_model()
    model.resize_token_embeddings(310, pad_to_multiple_of=64)
    assert model.config.vocab_size == 320 and model.config.real_vocab_size == 310
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model(_ids(vocab=310)).logits.shape[-1] == 310
