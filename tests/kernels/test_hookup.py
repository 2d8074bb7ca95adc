"""The kernels behind the shared layers' fused flags and behind attn_implementation="turing",
including transformers models through AttentionInterface."""

import pytest
import torch

from kernel_testing import DEVICE, FLOAT_DTYPES
from turing_models.layers import MLP, LayerNorm, dot_product_attention, linear_cross_entropy, varlen_attention
from turing_models.layers.attention import kernels_usable

import turing_kernels


def test_fused_paths_are_taken_here():
    x = torch.randn(2, 4, device=DEVICE)
    assert kernels_usable(x)  # CUDA, or the interpreter on CPU: otherwise these tests prove nothing


def test_layernorm_flag():
    torch.manual_seed(0)
    ref, fused = LayerNorm(48, eps=1e-5).to(DEVICE), LayerNorm(48, eps=1e-5, fused=True).to(DEVICE)
    torch.nn.init.normal_(ref.weight)
    fused.load_state_dict(ref.state_dict())
    x, r = torch.randn(3, 5, 48, device=DEVICE), torch.randn(3, 5, 48, device=DEVICE)
    torch.testing.assert_close(fused(x), ref(x))
    (y1, s1), (y2, s2) = fused(x, residual=r), ref(x, residual=r)
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(s1, s2)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_mlp_bias_gelu_flag(activation):
    torch.manual_seed(0)
    ref = MLP(32, 64, activation).to(DEVICE)
    fused = MLP(32, 64, activation, fused_bias_gelu=True).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, 32, device=DEVICE, requires_grad=True)
    y1 = fused(x)
    g1 = torch.autograd.grad(y1.sum(), [x, fused.fc_in.bias])
    y2 = ref(x)
    g2 = torch.autograd.grad(y2.sum(), [x, ref.fc_in.bias])
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_linear_cross_entropy_flag():
    h = torch.randn(40, 32, device=DEVICE, requires_grad=True)
    w = torch.randn(300, 32, device=DEVICE, requires_grad=True)
    y = torch.randint(0, 290, (40,), device=DEVICE)
    y[:3] = -100
    l1 = linear_cross_entropy(h, w, y, num_valid_classes=290, fused=True)
    g1 = torch.autograd.grad(l1, [h, w])
    l2 = linear_cross_entropy(h, w, y, num_valid_classes=290, fused=False)
    g2 = torch.autograd.grad(l2, [h, w])
    torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_dot_product_attention_turing(is_causal):
    q, k, v = (torch.randn(2, 2, 19, 40, device=DEVICE) for _ in range(3))
    pad = torch.ones(2, 19, dtype=torch.bool, device=DEVICE)
    pad[0, 15:] = False
    pad[1, :4] = False
    mask = pad[:, None, None, :]
    out = dot_product_attention(q, k, v, implementation="turing", attn_mask=mask, is_causal=is_causal)
    want = dot_product_attention(q, k, v, implementation="eager", attn_mask=mask, is_causal=is_causal)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_varlen_attention_turing():
    cu = torch.tensor([0, 7, 8, 30], dtype=torch.int32, device=DEVICE)
    q, k, v = (torch.randn(30, 2, 80, device=DEVICE) for _ in range(3))
    out = varlen_attention(q, k, v, cu, 22, implementation="turing", is_causal=True)
    want = varlen_attention(q, k, v, cu, 22, implementation="sdpa", is_causal=True)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def _tiny_llama(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    return tmp_path


def test_transformers_llama_turing_equals_sdpa(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    import turing_kernels.attention as attention

    def no_fallback(*args, **kwargs):
        raise AssertionError("the transformers masks should run in the kernel, not the SDPA fallback")

    monkeypatch.setattr(attention, "_sdpa_fallback", no_fallback)

    assert turing_kernels.register_with_transformers()
    path = _tiny_llama(tmp_path)
    turing = AutoModelForCausalLM.from_pretrained(path, attn_implementation="turing").to(DEVICE)
    sdpa = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").to(DEVICE)
    assert turing.config._attn_implementation == "turing"
    ids = torch.randint(0, 128, (2, 21), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding, as in batched generation
    for am in (None, mask):
        out_t = turing(input_ids=ids, attention_mask=am, labels=ids)
        out_s = sdpa(input_ids=ids, attention_mask=am, labels=ids)
        keep = (am if am is not None else torch.ones_like(ids)).bool()
        torch.testing.assert_close(out_t.logits[keep], out_s.logits[keep], atol=1e-4, rtol=1e-4)
    # Gradients flow through the kernel's backward.
    out_t.loss.backward()
    out_s.loss.backward()
    for (name, p_t), p_s in zip(turing.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p_t.grad, p_s.grad, atol=1e-4, rtol=1e-3, msg=name)
    # Cached generation (q_len 1 against a growing cache) gives the same tokens.
    gen_t = turing.generate(ids[:1], max_new_tokens=4, do_sample=False)
    gen_s = sdpa.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(gen_t, gen_s)


def test_transformers_bert_turing_equals_sdpa():
    from transformers import BertConfig, BertModel

    turing_kernels.register_with_transformers()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=96, max_position_embeddings=64)
    sdpa = BertModel._from_config(config, attn_implementation="sdpa").to(DEVICE).eval()
    turing = BertModel._from_config(config, attn_implementation="turing").to(DEVICE).eval()
    turing.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, 100, (2, 17), device=DEVICE)
    mask = torch.ones_like(ids)
    mask[0, 11:] = 0
    h_t = turing(input_ids=ids, attention_mask=mask).last_hidden_state
    h_s = sdpa(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(h_t[keep], h_s[keep], atol=1e-4, rtol=1e-4)


def test_half_precision_layers_run():
    dtype = FLOAT_DTYPES[-1]
    norm = LayerNorm(64, fused=True).to(DEVICE, dtype)
    x = torch.randn(3, 64, device=DEVICE, dtype=dtype)
    assert norm(x).dtype == dtype
