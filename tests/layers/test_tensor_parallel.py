"""The per-head fused QKV layout and the tensor-parallel plans of both families.

A column split of ``qkv`` / ``fc_in`` and a row split of the output projections, done by hand here
for ``tp`` simulated ranks, must reproduce the single-device layer exactly: every rank gets whole
heads of q, k and v, on every attention path (eager, sdpa, the NLU unpadded paths).
"""

from __future__ import annotations

import copy
import fnmatch

import pytest
import torch
from torch import nn

from turing_models import zoo
from turing_models.errors import UsageError
from turing_models.layers.tensor_parallel import (
    check_tp_size,
    deinterleave_qkv,
    fuse_qkv,
    interleave_qkv,
    split_qkv,
    tp_sizes,
)
from turing_models.nlg import TuringNLGConfig, TuringNLGForCausalLM
from turing_models.nlg.modeling_turing_nlg import TuringNLGAttention
from turing_models.nlu import TuringNLUConfig, TuringNLUForMaskedLM, TuringNLUModel
from turing_models.nlu.modeling_turing_nlu import PackedBatch, TuringNLUAttention


def test_interleave_is_per_head_and_invertible():
    heads, dim = 3, 2
    q, k, v = (torch.arange(heads * dim) + 100 * i for i in range(3))
    fused = fuse_qkv(q, k, v, heads)
    assert fused.view(heads, 3, dim)[1, 2].tolist() == v.view(heads, dim)[1].tolist()  # head 1's v
    assert torch.equal(deinterleave_qkv(fused, heads), torch.cat([q, k, v]))
    w = torch.randn(3 * heads * dim, 5)
    assert torch.equal(deinterleave_qkv(interleave_qkv(w, heads), heads), w)
    assert all(torch.equal(a, b) for a, b in zip(split_qkv(interleave_qkv(w, heads), heads), w.chunk(3)))


def _column(linear: nn.Linear, rank: int, tp: int) -> nn.Linear:
    out = linear.out_features // tp
    part = nn.Linear(linear.in_features, out)
    with torch.no_grad():
        part.weight.copy_(linear.weight[rank * out:(rank + 1) * out])
        part.bias.copy_(linear.bias[rank * out:(rank + 1) * out])
    return part


def _row(linear: nn.Linear, rank: int, tp: int) -> nn.Linear:
    width = linear.in_features // tp
    part = nn.Linear(width, linear.out_features)
    with torch.no_grad():
        part.weight.copy_(linear.weight[:, rank * width:(rank + 1) * width])
        part.bias.copy_(linear.bias / tp)  # the row-parallel bias is added once, after the sum
    return part


def _shard(module: nn.Module, rank: int, tp: int, out_name: str) -> nn.Module:
    local = copy.deepcopy(module)
    local.qkv = _column(module.qkv, rank, tp)
    setattr(local, out_name, _row(getattr(module, out_name), rank, tp))
    return local


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("tp", [2, 4])
def test_nlg_attention_column_split_gives_whole_heads(impl, tp):
    config = TuringNLGConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             max_position_embeddings=16, hidden_dropout=0.0, attention_dropout=0.0,
                             attn_implementation=impl)
    attn = TuringNLGAttention(config, 0).eval()
    with torch.no_grad():
        attn.qkv.bias.normal_()
        attn.dense.bias.normal_()
        x = torch.randn(2, 7, 32)
        mask = torch.ones(2, 1, 7, 7, dtype=torch.bool).tril()
        mask[1, ..., :2] = False
        for kwargs in ({"is_causal": True}, {"attn_mask": mask, "is_causal": False}):
            full = attn(x, **kwargs)
            parts = sum(_shard(attn, r, tp, "dense")(x, **kwargs) for r in range(tp))
            torch.testing.assert_close(parts, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_nlu_attention_column_split_on_padded_and_unpadded_paths(impl):
    tp = 2
    config = TuringNLUConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                             intermediate_size=48, attention_dropout=0.0)
    config._attn_implementation = impl
    attn = TuringNLUAttention(config).eval()
    torch.nn.init.normal_(attn.qkv.bias)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    packed = PackedBatch.from_mask(mask)
    x = torch.randn(3, 6, 32)
    dense_mask = mask.bool()[:, None, None, :]
    shards = [_shard(attn, r, tp, "out") for r in range(tp)]
    with torch.no_grad():  # padded, and the packed inference path (writes into its qkv buffer)
        full = attn(x, dense_mask)
        torch.testing.assert_close(sum(s(x, dense_mask) for s in shards), full, atol=1e-5, rtol=1e-5)
        xp = packed.pack(x)
        full_packed = attn(xp, None, packed)
        torch.testing.assert_close(full_packed, packed.pack(full), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sum(s(xp, None, packed) for s in shards), full_packed, atol=1e-5, rtol=1e-5)
    # the packed varlen path (taken with autograd on)
    torch.testing.assert_close(sum(s(xp, None, packed) for s in shards), full_packed, atol=1e-5, rtol=1e-5)


def _nlg_tiny():
    return TuringNLGConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=16)


def _nlu_tiny():
    return TuringNLUConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48)


@pytest.mark.parametrize("build", [lambda: TuringNLGForCausalLM(_nlg_tiny()), lambda: TuringNLUForMaskedLM(_nlu_tiny()),
                                   lambda: TuringNLUModel(_nlu_tiny())])
def test_tp_plan_is_data_on_the_classes_and_names_real_modules(build):
    with torch.device("meta"):
        model = build()
    plan = model.tp_plan
    styles = set(plan.values())
    assert {"colwise", "rowwise"} <= styles
    modules = [name for name, _ in model.named_modules()]
    for pattern, style in plan.items():
        hits = [m for m in modules if fnmatch.fnmatchcase(m, pattern)]
        assert hits, f"plan entry {pattern!r} ({style}) names no module"
        for name in hits:
            assert isinstance(model.get_submodule(name), (nn.Linear, nn.Embedding)), name
    qkv = [p for p in plan if p.endswith("attention.qkv")]
    assert qkv and all(plan[p] == "colwise" for p in qkv)


def test_lm_heads_are_column_parallel_with_gathered_logits():
    with torch.device("meta"):
        nlg = TuringNLGForCausalLM(_nlg_tiny())
        nlu = TuringNLUForMaskedLM(_nlu_tiny())
    assert nlg.tp_plan["lm_head"] == "colwise_gather_output"
    assert nlg.tp_plan["model.layers.*.attention.dense"] == "rowwise"
    assert nlu.tp_plan["lm_head.decoder"] == "colwise_gather_output"
    assert nlu.tp_plan["encoder.layers.*.mlp.fc_out"] == "rowwise"


def test_nlg_logits_go_through_the_lm_head_module():
    """A tensor-parallel plan hooks ``lm_head``; the padded vocabulary rows are still never predicted."""
    config = TuringNLGConfig(vocab_size=80, real_vocab_size=70, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4, max_position_embeddings=16)
    model = TuringNLGForCausalLM(config).eval()
    seen = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    with torch.no_grad():
        logits = model(torch.randint(0, 70, (1, 5))).logits
    assert seen == [torch.Size([1, 5, 80])] and logits.shape == (1, 5, 70)


def test_tp_sizes_per_scale():
    assert tp_sizes(28, 4 * 4256) == [1, 2, 4, 7, 14, 28]
    assert zoo.tp_sizes("nlg-17b", limit=8) == [1, 2, 4, 7]
    assert zoo.entry("nlu-large").tp_sizes == (1, 2, 4, 8, 16)
    check_tp_size(zoo.config("nlg-17b"), 4)
    with pytest.raises(UsageError, match="num_attention_heads=28.*choose one of"):
        check_tp_size(zoo.config("nlg-17b"), 8)
    assert "| `nlg-17b` | 28 | 17024 | 1, 2, 4, 7 |" in zoo.tp_markdown_table()
