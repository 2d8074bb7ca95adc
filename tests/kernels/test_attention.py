"""Flash attention against the plain PyTorch reference, forward and backward."""

import pytest
import torch

from turing_kernels.attention import dense_attention, flash_attention, flash_attn_func, flash_attn_varlen_func
from turing_kernels.reference import attention_ref, varlen_attention_ref

from kernel_testing import ATOL, DEVICE, FLOAT_DTYPES, ON_GPU, assert_within_rule

# (batch, heads, kv_heads, q_len, k_len, head_dim, causal, key padding)
DENSE_CASES = [
    (2, 2, 2, 97, 97, 40, True, True),      # odd length, head dim 40, one batch row fully padded
    (1, 2, 1, 97, 97, 64, False, False),    # grouped-query heads
    (1, 1, 1, 1, 97, 80, True, False),      # one decode step against a cache
    (1, 2, 2, 97, 120, 152, False, True),   # Turing-NLG 17B's head dim, q_len != k_len
    (1, 1, 1, 97, 50, 64, True, False),     # q_len > k_len: the first rows see no key -> zeros
    (1, 1, 1, 65, 65, 256, True, False),    # the largest head dim
    (1, 1, 1, 257, 257, 152, False, True),
    (1, 2, 1, 130, 130, 152, True, False),  # causal at head dim 152 (tiles 128 + 32), grouped-query heads
]
# Long sequences (more than 2048 rows: many key blocks, a one-row tail block): one dtype under the
# interpreter (it is slow), every dtype on a GPU.
LONG_CASES = [(1, 1, 1, 2049, 2049, 64, True, False)]


def _qkv(b, h, hk, tq, tk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, tq, d, generator=g, dtype=torch.float32).to(DEVICE, dtype)
    k = torch.randn(b, hk, tk, d, generator=g, dtype=torch.float32).to(DEVICE, dtype)
    v = torch.randn(b, hk, tk, d, generator=g, dtype=torch.float32).to(DEVICE, dtype)
    return q, k, v


def _key_padding(b, tk, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    kp = torch.rand(b, tk, generator=g) > 0.3
    kp[0, :] = False if b > 1 else kp[0, :]  # batch row 0 attends to nothing: all its rows are empty
    return kp.to(DEVICE)


def _grads(fn, inputs, dout):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*inputs)
    out.backward(dout)
    return out.detach(), [t.grad for t in inputs]


def _check_dense(case, dtype):
    b, h, hk, tq, tk, d, causal, padded = case
    q, k, v = _qkv(b, h, hk, tq, tk, d, dtype)
    kp = _key_padding(b, tk) if padded else None
    dout = torch.randn(b, h, tq, d, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    out, grads = _grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, key_padding_mask=kp), (q, k, v), dout)
    ref, ref_grads = _grads(lambda q, k, v: attention_ref(q, k, v, causal=causal, key_padding_mask=kp, upcast=True),
                            (q.double() if dtype == torch.float32 else q.float(),
                             k.double() if dtype == torch.float32 else k.float(),
                             v.double() if dtype == torch.float32 else v.float()), dout.to(
                                torch.float64 if dtype == torch.float32 else torch.float32))
    pt, pt_grads = _grads(lambda q, k, v: attention_ref(q, k, v, causal=causal, key_padding_mask=kp, upcast=False),
                          (q, k, v), dout)
    assert out.shape == q.shape and out.dtype == dtype
    assert_within_rule("out", out, ref, pt, ATOL[dtype])
    for name, g, rg, pg in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
        assert g.shape == rg.shape
        assert_within_rule(name, g, rg, pg, 2 * ATOL[dtype])
    return out, grads


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", DENSE_CASES, ids=lambda c: "b{}h{}kv{}q{}k{}d{}{}{}".format(
    *c[:6], "-causal" if c[6] else "", "-pad" if c[7] else ""))
def test_dense_matches_reference(case, dtype):
    _check_dense(case, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES if ON_GPU else FLOAT_DTYPES[:1])
@pytest.mark.parametrize("case", LONG_CASES, ids=lambda c: f"q{c[3]}d{c[5]}")
def test_dense_long_sequence(case, dtype):
    _check_dense(case, dtype)


def test_empty_rows_are_zero_with_zero_grads():
    # Batch row 0 is fully padded; with q_len > k_len and causal the first rows of row 1 see nothing too.
    q, k, v = _qkv(2, 2, 2, 40, 30, 64, FLOAT_DTYPES[0])
    kp = torch.ones(2, 30, dtype=torch.bool, device=DEVICE)
    kp[0] = False
    q.requires_grad_()
    k.requires_grad_()
    v.requires_grad_()
    out = flash_attention(q, k, v, causal=True, key_padding_mask=kp)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert out[0].abs().max() == 0 and q.grad[0].abs().max() == 0 and k.grad[0].abs().max() == 0
    assert out[1, :, :10].abs().max() == 0 and q.grad[1, :, :10].abs().max() == 0
    assert out[1, :, 10:].abs().min() > 0


def test_strided_input_needs_no_copy():
    # [B, T, H, D] viewed as [B, H, T, D]: the kernel reads the strides as they are.
    dtype = FLOAT_DTYPES[0]
    x = torch.randn(2, 33, 3, 3, 48, device=DEVICE, dtype=dtype)
    q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    out = flash_attention(q, k, v, causal=True)
    ref = attention_ref(q, k, v, causal=True)
    assert_within_rule("out", out, ref, attention_ref(q, k, v, causal=True, upcast=False), ATOL[dtype])
    out2 = flash_attn_func(x[:, :, 0], x[:, :, 1], x[:, :, 2], causal=True)
    torch.testing.assert_close(out2, out.transpose(1, 2))


# Unequal lengths, including 1 and an empty sequence; (head_dim, causal)
VARLEN_LENS = [1, 70, 0, 33, 130]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("head_dim,causal", [(72, True), (96, False)])
def test_varlen_matches_reference(head_dim, causal, dtype):
    lens = torch.tensor(VARLEN_LENS)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = lens.cumsum(0)
    total = int(cu[-1])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(total, 2, head_dim, generator=g).to(DEVICE, dtype) for _ in range(3))
    dout = torch.randn(total, 2, head_dim, generator=g).to(DEVICE, dtype)
    cu = cu.to(DEVICE)
    mx = int(lens.max())
    out, grads = _grads(lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, mx, mx, causal=causal), (q, k, v), dout)
    up = torch.float64 if dtype == torch.float32 else torch.float32
    ref, ref_grads = _grads(lambda q, k, v: varlen_attention_ref(q, k, v, cu, cu, causal=causal),
                            (q.to(up), k.to(up), v.to(up)), dout.to(up))
    pt, pt_grads = _grads(lambda q, k, v: varlen_attention_ref(q, k, v, cu, cu, causal=causal, upcast=False),
                          (q, k, v), dout)
    assert_within_rule("out", out, ref, pt, ATOL[dtype])
    for name, gr, rg, pg in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
        assert_within_rule(name, gr, rg, pg, 2 * ATOL[dtype])


def test_varlen_cross_attention_lengths_differ():
    dtype = FLOAT_DTYPES[0]
    lq, lk = [5, 17, 1], [9, 3, 30]
    cu_q = torch.tensor([0, 5, 22, 23], dtype=torch.int32, device=DEVICE)
    cu_k = torch.tensor([0, 9, 12, 42], dtype=torch.int32, device=DEVICE)
    q = torch.randn(23, 2, 64, device=DEVICE, dtype=dtype)
    k = torch.randn(42, 1, 64, device=DEVICE, dtype=dtype)
    v = torch.randn(42, 1, 64, device=DEVICE, dtype=dtype)
    out = flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lq), max(lk), causal=True)
    ref = varlen_attention_ref(q, k, v, cu_q, cu_k, causal=True)
    pt = varlen_attention_ref(q, k, v, cu_q, cu_k, causal=True, upcast=False)
    assert_within_rule("out", out, ref, pt, ATOL[dtype])
    # Sequence 1 has 17 queries but 3 keys: bottom-right causal leaves its first 14 queries empty.
    assert out[5:19].abs().max() == 0 and out[19:22].abs().min() > 0


@pytest.mark.parametrize("causal", [False, True])
def test_dense_attention_mask_forms(causal):
    """What the shared layers pass: bool masks of several shapes; non-key-padding masks use SDPA."""
    dtype = FLOAT_DTYPES[0]
    b, h, t, d = 2, 2, 37, 64
    q, k, v = _qkv(b, h, h, t, t, d, dtype)
    kp = torch.ones(b, t, dtype=torch.bool, device=DEVICE)
    kp[1, :5] = False  # left padding
    ref = attention_ref(q, k, v, causal=causal, key_padding_mask=kp)
    causal_mask = torch.ones(t, t, dtype=torch.bool, device=DEVICE).tril()
    forms = {
        "b11k": (kp[:, None, None, :], causal),
        "b1qk-combined": (kp[:, None, None, :] & causal_mask if causal else kp[:, None, None, :].expand(b, 1, t, t),
                          False),
    }
    for name, (mask, is_causal) in forms.items():
        out = dense_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        pt = attention_ref(q, k, v, causal=causal, key_padding_mask=kp, upcast=False)
        assert_within_rule(name, out, ref, pt, ATOL[dtype])
    # A general mask (not key padding): still right, through the SDPA fallback.
    band = (torch.arange(t)[None, :] - torch.arange(t)[:, None]).abs().le(3).to(DEVICE)
    out = dense_attention(q, k, v, attn_mask=band[None, None], is_causal=causal)
    scores = (q.double() @ k.double().transpose(-1, -2)) / d ** 0.5
    mask = band & (causal_mask if causal else True)
    want = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ v.double()
    torch.testing.assert_close(out.double(), want, atol=ATOL[dtype] * 10, rtol=0)


def test_bad_input_raises_clear_errors():
    q, k, v = _qkv(1, 2, 2, 8, 8, 64, FLOAT_DTYPES[0])
    with pytest.raises(ValueError, match="head_dim"):
        flash_attention(q, k[..., :32], v[..., :32])
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        flash_attention(q, k[:, :1].repeat(1, 3, 1, 1), v[:, :1].repeat(1, 3, 1, 1))
    with pytest.raises(ValueError, match="256"):
        big = torch.zeros(1, 1, 4, 288, device=DEVICE, dtype=FLOAT_DTYPES[0])
        flash_attention(big, big, big)
    with pytest.raises(ValueError, match="key_padding_mask"):
        flash_attention(q, k, v, key_padding_mask=torch.ones(1, 5, dtype=torch.bool, device=DEVICE))


def _dropout_ref(q, k, v, keep, p, causal):
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    t_q, t_k = q.shape[2], k.shape[2]
    if causal:
        allowed = torch.arange(t_k, device=q.device)[None, :] <= torch.arange(t_k - t_q, t_k, device=q.device)[:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return (probs * keep / (1 - p)) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_dropout_in_kernel_matches_reference_with_the_same_mask(causal):
    """With v = identity the output *is* the dropped probability matrix, which exposes the kernel's
    Philox mask; the same seed then gives the same mask for real inputs, forward and backward."""
    dtype, p = FLOAT_DTYPES[0], 0.3
    b, h, t, d = 1, 2, 40, 64
    q, k, v = _qkv(b, h, h, t, t, d, dtype)
    eye = torch.eye(t, d, device=DEVICE, dtype=dtype).expand(b, h, t, d)
    torch.manual_seed(123)
    probe = flash_attention(q, k, eye, causal=causal, dropout_p=p)[..., :t]
    allowed = attention_ref(q, k, eye, causal=causal)[..., :t] > 0
    keep = probe != 0
    assert not (keep & ~allowed).any()
    dropped = (~keep & allowed).sum().item() / allowed.sum().item()
    assert abs(dropped - p) < 0.05, dropped

    dout = torch.randn(b, h, t, d, generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype)
    torch.manual_seed(123)
    out, grads = _grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, dropout_p=p), (q, k, v), dout)
    torch.manual_seed(123)  # same seed, same mask
    out2 = flash_attention(q, k, v, causal=causal, dropout_p=p)
    assert torch.equal(out, out2)
    up = torch.float64 if dtype == torch.float32 else torch.float32
    ref, ref_grads = _grads(lambda q, k, v: _dropout_ref(q, k, v, keep.to(up), p, causal),
                            (q.to(up), k.to(up), v.to(up)), dout.to(up))
    pt, pt_grads = _grads(lambda q, k, v: _dropout_ref(q, k, v, keep.to(dtype), p, causal), (q, k, v), dout)
    assert_within_rule("out", out, ref, pt, ATOL[dtype])
    for name, g, rg, pg in zip(("dq", "dk", "dv"), grads, ref_grads, pt_grads):
        assert_within_rule(name, g, rg, pg, 2 * ATOL[dtype])


def test_dropout_varlen_and_mask_are_seeded():
    dtype = FLOAT_DTYPES[0]
    cu = torch.tensor([0, 9, 30], dtype=torch.int32, device=DEVICE)
    q, k, v = (torch.randn(30, 2, 32, device=DEVICE, dtype=dtype) for _ in range(3))
    torch.manual_seed(7)
    a = flash_attn_varlen_func(q, k, v, cu, cu, 21, 21, dropout_p=0.5)
    torch.manual_seed(7)
    b = flash_attn_varlen_func(q, k, v, cu, cu, 21, 21, dropout_p=0.5)
    c = flash_attn_varlen_func(q, k, v, cu, cu, 21, 21, dropout_p=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, flash_attn_varlen_func(q, k, v, cu, cu, 21, 21))
    with pytest.raises(ValueError, match="dropout_p"):
        flash_attn_varlen_func(q, k, v, cu, cu, 21, 21, dropout_p=1.0)


def test_tile_plan_per_head_dim():
    """Head dims are split into power-of-two tiles without padding to the next power of two, and
    every head-dim class has its own forward and backward tiles."""
    from turing_kernels import _attention_triton as kern
    from turing_kernels.attention import head_dim_tiles

    assert head_dim_tiles(152) == (128, 32)
    assert head_dim_tiles(128) == (128, 0)
    assert head_dim_tiles(80) == (64, 16)
    assert head_dim_tiles(96) == (64, 32)
    assert head_dim_tiles(40) == (32, 16)
    assert head_dim_tiles(8) == (16, 0)
    assert head_dim_tiles(256) == (256, 0)
    for d in range(1, 257):
        a, b = head_dim_tiles(d)
        assert d <= a + b <= max(16, 1 << (d - 1).bit_length()), d  # never more than the next power of two
    for d, cls in ((64, 64), (128, 128), (152, 160), (256, 256)):
        a, b = head_dim_tiles(d)
        assert kern.head_dim_class(a + b) == cls
        for tiles, drop in ((kern.FWD_TILES, kern.FWD_DROPOUT_TILES), (kern.DKDV_TILES, kern.DKDV_DROPOUT_TILES),
                            (kern.DQ_TILES, kern.DQ_DROPOUT_TILES)):
            for dropout, table in ((False, tiles), (True, drop)):
                kept = kern._pruner(tiles, drop)(kern._configs(tiles, drop), {}, BLOCK_D=a, BLOCK_D2=b,
                                                 HAS_DROPOUT=dropout)
                assert sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                              for c in kept) == sorted(table[cls])
