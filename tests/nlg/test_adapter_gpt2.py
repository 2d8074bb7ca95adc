"""GPT-2 parity: checkpoints convert on load (folder and offline Hub id) and export back."""

from __future__ import annotations

import pytest
import torch
from factories import GPT2_SHAPES, make_hub_snapshot, nlg_model, read_json, save_gpt2

from turing_models.nlg.adapter_gpt2 import export_gpt2
from turing_models.nlg import TuringNLG, TuringNLGModel


def _batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, :9] = 0
    return ids, mask


@pytest.mark.parametrize("name", list(GPT2_SHAPES))
def test_gpt2_logits_and_greedy_tokens_match(gpt2_folders, name):
    folder, gpt2 = gpt2_folders[name]
    ours = TuringNLG.from_pretrained(folder)
    assert not ours.training and ours.config.hidden_act == "gelu_tanh"
    assert ours.config.tie_word_embeddings == gpt2.config.tie_word_embeddings
    ids, mask = _batch(gpt2.config.vocab_size)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        unpadded_ref, unpadded = gpt2(ids).logits, ours(ids).logits
        padded_ref = gpt2(ids, attention_mask=mask, position_ids=positions).logits
        padded = ours(ids, attention_mask=mask).logits  # positions derived from the mask
    assert (unpadded - unpadded_ref).abs().max().item() < 1e-5
    keep = mask.bool()
    assert (padded[keep] - padded_ref[keep]).abs().max().item() < 1e-5

    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kw), gpt2.generate(ids, **kw))
    assert torch.equal(ours.generate(ids, attention_mask=mask, **kw), gpt2.generate(ids, attention_mask=mask, **kw))


def test_export_round_trip(gpt2_folders, tmp_path):
    from transformers import GPT2LMHeadModel

    folder, gpt2 = gpt2_folders["l2-h64-a4"]
    ours = TuringNLG.from_pretrained(folder)
    export_gpt2(ours, tmp_path / "gpt2")
    assert read_json(tmp_path / "gpt2" / "config.json")["model_type"] == "gpt2"
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    ref = gpt2.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, ref[key]), key
    # and a native TuringNLG folder exports too, padded vocabulary rows dropped
    model = nlg_model(hidden_act="gelu_tanh")
    model.save_pretrained(tmp_path / "nlg")
    export_gpt2(tmp_path / "nlg", tmp_path / "gpt2b")
    again = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2b").eval()
    assert again.config.vocab_size == 300
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert (again(ids).logits - model(ids).logits).abs().max().item() < 1e-5


def test_untied_gpt2_keeps_its_own_head(gpt2_folders):
    folder, gpt2 = gpt2_folders["l1-h128-a8-untied"]
    ours = TuringNLG.from_pretrained(folder)
    assert ours.lm_head.weight.data_ptr() != ours.model.embed_tokens.weight.data_ptr()
    assert torch.equal(ours.lm_head.weight, gpt2.lm_head.weight)


def test_bare_decoder_loads_from_gpt2(gpt2_folders):
    folder, gpt2 = gpt2_folders["l2-h64-a4"]
    ours = TuringNLGModel.from_pretrained(folder)
    ids = torch.randint(0, 300, (1, 7))
    with torch.no_grad():
        ref = gpt2.transformer(ids).last_hidden_state
        assert (ours(ids).last_hidden_state - ref).abs().max().item() < 1e-5


def test_hub_id_resolves_offline_from_the_cache(tmp_path, monkeypatch, gpt2_folders):
    import huggingface_hub.constants as hub_constants

    folder, gpt2 = gpt2_folders["l2-h64-a4"]
    cache = tmp_path / "hub"
    make_hub_snapshot(cache, "someone/tiny-gpt2", folder)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    ours = TuringNLG.from_pretrained("someone/tiny-gpt2")
    ids = torch.randint(0, 300, (2, 6))
    with torch.no_grad():
        assert (ours(ids).logits - gpt2(ids).logits).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="no config.json"):
        TuringNLG.from_pretrained("someone/not-in-the-cache")


def test_gpt2_dtype_and_generation_config(tmp_path):
    save_gpt2(tmp_path, n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    model = TuringNLG.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.generation_config is not None


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_streamed_conversion_in_small_chunks_is_exact(gpt2_folders, monkeypatch, dtype):
    """Large tensors are read in row chunks (one short-lived mapping each): same values, any dtype."""
    import turing_models.layers.state_dict_adapter as loading
    from turing_models.layers.tensor_parallel import interleave_qkv

    monkeypatch.setattr(loading, "CHUNK_BYTES", 3000)  # a few rows per chunk, uneven last chunk
    folder, gpt2 = gpt2_folders["l1-h128-a8-untied"]
    ours = TuringNLG.from_pretrained(folder, dtype=dtype)
    ref = gpt2.state_dict()
    want = dtype or torch.float32
    pairs = {
        "model.embed_tokens.weight": ref["transformer.wte.weight"],
        "model.layers.0.attention.qkv.weight": interleave_qkv(ref["transformer.h.0.attn.c_attn.weight"].t(), 8),
        "model.layers.0.attention.qkv.bias": interleave_qkv(ref["transformer.h.0.attn.c_attn.bias"], 8),
        "model.layers.0.mlp.fc_out.weight": ref["transformer.h.0.mlp.c_proj.weight"].t(),
        "model.layers.0.mlp.fc_in.bias": ref["transformer.h.0.mlp.c_fc.bias"],
        "lm_head.weight": ref["lm_head.weight"],
    }
    state = ours.state_dict()
    for name, expected in pairs.items():
        assert state[name].dtype == want, name
        assert state[name].is_contiguous(), name
        assert torch.equal(state[name], expected.to(want)), name


def test_gpt2_pytorch_model_bin_converts_too(gpt2_folders, tmp_path):
    """Older GPT-2 checkpoints ship pytorch_model.bin: converted tensor by tensor the same way."""
    import shutil

    folder, gpt2 = gpt2_folders["l2-h64-a4"]
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    torch.save({k: v.clone() for k, v in gpt2.state_dict().items()}, tmp_path / "pytorch_model.bin")
    ours = TuringNLG.from_pretrained(tmp_path, dtype=torch.float64)
    assert ours.model.layers[0].attention.qkv.weight.dtype == torch.float64
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert (ours(ids).logits.float() - gpt2(ids).logits).abs().max().item() < 1e-5


def test_in_memory_key_map_round_trips_and_lays_qkv_out_per_head(gpt2_folders):
    """gpt2 -> TuringNLG -> gpt2 is the identity; the fused qkv rows are [heads, 3, head_dim]."""
    from turing_models.nlg.adapter_gpt2 import gpt2_config_to_nlg, gpt2_to_nlg_state_dict, nlg_to_gpt2_state_dict

    _, gpt2 = gpt2_folders["l2-h64-a4"]
    config = gpt2_config_to_nlg(gpt2.config)
    ref = {k: v for k, v in gpt2.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    ours = gpt2_to_nlg_state_dict(ref, config)
    heads, dim = config.num_attention_heads, config.head_dim
    c_attn = ref["transformer.h.0.attn.c_attn.weight"].t()  # [3 * hidden, hidden], rows [q | k | v]
    qkv = ours["model.layers.0.attention.qkv.weight"].view(heads, 3, dim, -1)
    assert torch.equal(qkv[1, 2], c_attn.view(3, heads, dim, -1)[2, 1])  # head 1's value rows
    back = nlg_to_gpt2_state_dict(ours, config)
    assert set(back) == set(ref) - {"lm_head.weight"}  # tied: the head is the embedding
    for key, value in back.items():
        assert torch.equal(value, ref[key]), key
