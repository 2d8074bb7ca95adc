"""Flash attention on the code paths a GPU takes: every kept autotune tile shape, the mask-free and
masked loops, varlen dropout with its backward, int64 offsets (GPU only), and the checks that must
not synchronise with the device."""

import os

import pytest
import torch

from turing_kernels import _attention_triton as kern
from turing_kernels.attention import (_as_key_padding, flash_attention, flash_attn_varlen_func, force_tiles,
                                      head_dim_tiles)
from turing_kernels.reference import attention_ref

from kernel_testing import ATOL, DEVICE, FLOAT_DTYPES, ON_GPU, assert_within_rule

DTYPE = FLOAT_DTYPES[0]


def _qkv(b, h, tq, tk, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g).to(DEVICE, dtype) for t in (tq, tk, tk))


def _check(q, k, v, causal, kp=None, dtype=DTYPE):
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE, dtype)
    got = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*got, causal=causal, key_padding_mask=kp)
    out.backward(dout)
    up = torch.float64 if dtype == torch.float32 else torch.float32
    ref_in = [t.detach().to(up).requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*ref_in, causal=causal, key_padding_mask=kp, upcast=True)
    ref.backward(dout.to(up))
    pt_in = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    pt = attention_ref(*pt_in, causal=causal, key_padding_mask=kp, upcast=False)
    pt.backward(dout)
    assert_within_rule("out", out, ref, pt, ATOL[dtype])
    for name, a, r, p in zip(("dq", "dk", "dv"), got, ref_in, pt_in):
        assert_within_rule(name, a.grad, r.grad, p.grad, 2 * ATOL[dtype])


def _tile_cases(dropout=False):
    """(head_dim, fwd, dkdv, dq tiles) covering every kept tile of every head-dim class, for both
    GPU generations' tables (Hopper and sm_80), each combination once."""
    names = ("FWD_DROPOUT_TILES", "DKDV_DROPOUT_TILES", "DQ_DROPOUT_TILES") if dropout else (
        "FWD_TILES", "DKDV_TILES", "DQ_TILES")
    classes = ((64, 64), (128, 128), (152, 160)) if dropout else ((64, 64), (128, 128), (152, 160), (256, 256))
    cases = []
    for prefix in ("", "SM80_"):
        tables = [getattr(kern, prefix + name) for name in names]
        for head_dim, cls in classes:
            lists = [table[cls] for table in tables]
            for i in range(max(map(len, lists))):
                case = (head_dim, *(t[i % len(t)] for t in lists))
                if case not in cases:
                    cases.append(case)
    return cases


@pytest.mark.parametrize("head_dim,fwd,dkdv,dq", _tile_cases(),
                         ids=lambda x: "x".join(map(str, x)) if isinstance(x, tuple) else f"d{x}")
def test_every_kept_tile_shape(head_dim, fwd, dkdv, dq):
    """Each tile shape the GPU autotuner may pick, forced: lengths that divide the tiles (EVEN paths,
    causal diagonal split) and lengths that do not (tail masks, q_len != k_len, key padding)."""
    with force_tiles(fwd=fwd, dkdv=dkdv, dq=dq):
        q, k, v = _qkv(1, 1, 128, 128, head_dim, DTYPE)
        _check(q, k, v, causal=True)
        q, k, v = _qkv(1, 1, 45, 70, head_dim, DTYPE, seed=1)
        kp = torch.rand(1, 70, generator=torch.Generator().manual_seed(2)).to(DEVICE) > 0.2
        _check(q, k, v, causal=True, kp=kp)


@pytest.mark.parametrize("head_dim,fwd,dkdv,dq", _tile_cases(dropout=True),
                         ids=lambda x: "x".join(map(str, x)) if isinstance(x, tuple) else f"d{x}")
def test_every_kept_dropout_tile_shape(head_dim, fwd, dkdv, dq):
    """The dropout mask belongs to (row, key), not to a tile: with the same seed, the tiles the GPU
    may pick give the output and gradients of the default launch (itself checked against a reference
    with the same mask in test_attention.py)."""
    q, k, v = _qkv(1, 2, 70, 70, head_dim, DTYPE, seed=3)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE, DTYPE)

    def run():
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        torch.manual_seed(21)
        out = flash_attention(*ins, causal=True, dropout_p=0.2)
        out.backward(dout)
        return [out] + [t.grad for t in ins]

    want = run()
    with force_tiles(fwd=fwd, dkdv=dkdv, dq=dq):
        got = run()
    assert not torch.allclose(want[0], flash_attention(q, k, v, causal=True), atol=1e-2)  # dropout did drop
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=4 * ATOL[DTYPE], rtol=1e-3)


def _tma_cases():
    """(head_dim, forward tile) for every Hopper forward tile, with and without dropout, of the
    graded head dims, plus head dim 96 (a 128-wide chunk whose last 32 columns the copy engine fills)."""
    cases = []
    for table in (kern.FWD_TILES, kern.FWD_DROPOUT_TILES):
        for head_dim, cls in ((64, 64), (96, 128), (128, 128), (152, 160)):
            for tile in table[cls]:
                if (head_dim, tile) not in cases:
                    cases.append((head_dim, tile))
    return cases


@pytest.mark.parametrize("head_dim,fwd", _tma_cases(), ids=lambda x: "x".join(map(str, x)) if isinstance(x, tuple)
                         else f"d{x}")
def test_tma_forward_matches_pointer_loads(head_dim, fwd):
    """The forward's TMA path (key / value tiles through device-built descriptors; out-of-range rows
    and columns zero-filled by the copy engine instead of masked) gives the pointer path's output
    bit for bit: lengths that divide the tile, lengths that do not with key padding, and varlen."""
    q, k, v = _qkv(1, 2, 64, 64, head_dim, DTYPE)
    q2, k2, v2 = _qkv(1, 1, 45, 70, head_dim, DTYPE, seed=1)
    kp = torch.rand(1, 70, generator=torch.Generator().manual_seed(2)).to(DEVICE) > 0.2
    cu = torch.tensor([0, 9, 40, 41], dtype=torch.int32, device=DEVICE)
    g = torch.Generator().manual_seed(3)
    qv, kv, vv = (torch.randn(41, 2, head_dim, generator=g).to(DEVICE, DTYPE) for _ in range(3))

    def run(tma):
        with force_tiles(fwd=fwd, tma=tma):
            return [flash_attention(q, k, v, causal=True),
                    flash_attention(q2, k2, v2, causal=False, key_padding_mask=kp),
                    flash_attn_varlen_func(qv, kv, vv, cu, cu, 31, 31, causal=True)]

    for a, b in zip(run(True), run(False)):
        assert torch.equal(a, b)
    with force_tiles(fwd=fwd, tma=True), pytest.raises(ValueError, match="needs aligned inputs"):
        flash_attention(q[..., 1:], k[..., 1:], v[..., 1:], causal=True)  # pointers off 16-byte alignment


def test_tma_configurations_are_kept_only_where_tma_exists():
    """The autotuner measures each Hopper forward tile with and without TMA on sm_90 for aligned
    inputs; sm_80 and unaligned inputs never get a TMA configuration."""
    tuned = kern.attn_fwd_tuned
    base = dict(BLOCK_D=128, BLOCK_D2=0, HAS_DROPOUT=False, Q=None)

    def kept(arch, aligned):
        with kern.target_arch(arch):
            configs = tuned.early_config_prune(tuned.configs, dict(base, ALIGNED=aligned))
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages, c.kwargs["USE_TMA"])
                for c in configs]

    hopper = kept(90, True)
    tiles = kern.FWD_TILES[128]
    assert sorted(hopper) == sorted([(*t, False) for t in tiles] + [(*t, True) for t in tiles])
    assert not any(c[-1] for c in kept(90, False))
    assert not any(c[-1] for c in kept(80, True)) and kept(80, True)


def test_head_dim_split_pads_nothing_in_memory():
    """Head dim 152 runs as 128 + 32 columns; the output's 152 columns are all written, and nothing
    beyond them (a wider buffer whose extra columns must stay untouched)."""
    assert head_dim_tiles(152) == (128, 32)
    buf = torch.full((1, 2, 40, 160), 7.0, device=DEVICE, dtype=DTYPE)
    q = buf[..., :152]
    out = flash_attention(q, q, q, causal=True)
    assert out.shape[-1] == 152
    _check(q.contiguous(), q.contiguous(), q.contiguous(), causal=True)
    assert torch.equal(buf[..., 152:], torch.full_like(buf[..., 152:], 7.0))


def _varlen_dropout_ref(q, k, v, cu, keep, p, causal):
    outs = []
    for b in range(len(cu) - 1):
        s, e = int(cu[b]), int(cu[b + 1])
        qs, ks, vs = (t[s:e].transpose(0, 1) for t in (q, k, v))  # [H, L, D]
        scores = (qs @ ks.transpose(-1, -2)) / q.shape[-1] ** 0.5
        if causal:
            allowed = torch.ones(e - s, e - s, dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        outs.append(((probs * keep[b] / (1 - p)) @ vs).transpose(0, 1))
    return torch.cat(outs, 0)


@pytest.mark.parametrize("causal", [False, True])
def test_varlen_dropout_forward_and_backward(causal):
    """Varlen with dropout: the kernel's mask, exposed by v = one-hot key positions, matches the
    dropout rate; with the same seed the output and all gradients equal a reference that applies
    that very mask."""
    dtype, p, heads, d = DTYPE, 0.25, 2, 32
    lens = [9, 23, 1]
    cu = torch.tensor([0, 9, 32, 33], dtype=torch.int32, device=DEVICE)
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(33, heads, d, generator=g).to(DEVICE, dtype) for _ in range(3))
    probe_v = torch.zeros(33, heads, d, device=DEVICE, dtype=dtype)
    for b in range(3):
        s = int(cu[b])
        for j in range(lens[b]):
            probe_v[s + j, :, j] = 1.0
    torch.manual_seed(11)
    probe = flash_attn_varlen_func(q, k, probe_v, cu, cu, 23, 23, dropout_p=p, causal=causal)
    keep = []
    kept = total = 0
    for b in range(3):
        s, e = int(cu[b]), int(cu[b + 1])
        kb = (probe[s:e, :, : e - s] != 0).transpose(0, 1)  # [H, L, L]
        allowed = torch.ones(e - s, e - s, dtype=torch.bool, device=DEVICE)
        if causal:
            allowed = allowed.tril()
        assert not (kb & ~allowed).any()
        kept += (kb & allowed).sum().item()
        total += allowed.sum().item() * heads
        keep.append(kb.to(dtype))
    assert abs(1 - kept / total - p) < 0.08, kept / total

    dout = torch.randn(33, heads, d, generator=g).to(DEVICE, dtype)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    torch.manual_seed(11)
    out = flash_attn_varlen_func(*ins, cu, cu, 23, 23, dropout_p=p, causal=causal)
    out.backward(dout)
    up = torch.float64 if dtype == torch.float32 else torch.float32
    ref_in = [t.to(up).requires_grad_() for t in (q, k, v)]
    ref = _varlen_dropout_ref(*ref_in, cu, [kb.to(up) for kb in keep], p, causal)
    ref.backward(dout.to(up))
    pt_in = [t.clone().requires_grad_() for t in (q, k, v)]
    pt = _varlen_dropout_ref(*pt_in, cu, keep, p, causal)
    pt.backward(dout)
    assert_within_rule("out", out, ref, pt, ATOL[dtype])
    for name, a, r, pp in zip(("dq", "dk", "dv"), ins, ref_in, pt_in):
        assert_within_rule(name, a.grad, r.grad, pp.grad, 2 * ATOL[dtype])


def test_dropout_streams_differ_between_calls_and_heads():
    """Each call draws a new Philox seed and offset from torch's generator, and each (batch, head)
    has its own counter block: no two layers, steps or heads share a mask."""
    q, k, v = _qkv(2, 2, 16, 16, 32, DTYPE)
    eye = torch.eye(16, 32, device=DEVICE, dtype=DTYPE).expand(2, 2, 16, 32).contiguous()
    torch.manual_seed(0)
    a = flash_attention(q, k, eye, dropout_p=0.5)[..., :16] != 0
    b = flash_attention(q, k, eye, dropout_p=0.5)[..., :16] != 0
    assert not torch.equal(a, b)
    assert not torch.equal(a[0, 0], a[0, 1]) and not torch.equal(a[0, 0], a[1, 0])
    state = torch.get_rng_state()
    torch.manual_seed(0)
    assert torch.equal(a, flash_attention(q, k, eye, dropout_p=0.5)[..., :16] != 0)
    assert not torch.equal(state, torch.get_rng_state())


def test_varlen_checks_max_seqlen_and_noncontiguous_cu_seqlens():
    q = torch.randn(30, 2, 32, device=DEVICE, dtype=DTYPE)
    cu = torch.tensor([0, 9, 30], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="max_seqlen_q=20 is smaller than the longest sequence"):
        flash_attn_varlen_func(q, q, q, cu, cu, 20, 21)
    strided = torch.tensor([0, -1, 9, -1, 30, -1], dtype=torch.int32, device=DEVICE)[::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(flash_attn_varlen_func(q, q, q, strided, strided, 21, 21),
                               flash_attn_varlen_func(q, q, q, cu, cu, 21, 21))


def test_full_query_masks_are_only_inspected_where_that_costs_no_sync():
    """A [B, 1, Tq, Tk] mask needs its values read to be recognised as key padding; without
    permission to inspect (CUDA outside debug mode) it goes to SDPA instead of syncing."""
    kp = torch.ones(2, 6, dtype=torch.bool)
    kp[1, :2] = False
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    full = (kp[:, None, :] & causal)[:, None]
    found = _as_key_padding(full, 2, 6, 6, False, inspect=True)
    assert found is not None and found[1] is True and torch.equal(found[0], kp)
    assert _as_key_padding(full, 2, 6, 6, False, inspect=False) is None
    kp_only = _as_key_padding(kp[:, None, None, :], 2, 6, 6, True, inspect=False)
    assert kp_only is not None and kp_only[1] is True


@pytest.mark.gpu
def test_int64_offsets_past_2_31_elements():
    """Packed sequences whose last one starts past 2^31 elements (about 1M tokens at width 2048), plus
    LayerNorm and bias-GeLU over as many elements: int32 offsets would wrap. Needs ~40 GB of GPU memory;
    on the CPU it would need about as much RAM, so it runs on a GPU only."""
    from turing_kernels import bias_gelu, layer_norm

    heads, d, seq = 16, 128, 4096
    width = heads * d
    n_seq = (1 << 31) // (seq * width) + 1  # the last sequence starts at element 2^31
    total = n_seq * seq
    cu = torch.arange(0, total + 1, seq, dtype=torch.int32, device="cuda")
    q = torch.randn(total, heads, d, device="cuda", dtype=torch.bfloat16)
    start = total - seq
    assert start * width >= 1 << 31
    out = flash_attn_varlen_func(q, q, q, cu, cu, seq, seq, causal=True)
    last = q[start:].transpose(0, 1)[None]
    ref = torch.nn.functional.scaled_dot_product_attention(last, last, last, is_causal=True)[0].transpose(0, 1)
    torch.testing.assert_close(out[start:], ref, atol=2e-2, rtol=2e-2)
    tail = seq
    del out
    x = q.view(total, width)
    y = layer_norm(x[-tail - 1:], None, None)
    torch.testing.assert_close(layer_norm(x, None, None)[-tail - 1:], y)
    b = torch.randn(width, device="cuda", dtype=torch.bfloat16)
    want = torch.nn.functional.gelu(x[-tail:].float() + b.float()).to(x.dtype)
    torch.testing.assert_close(bias_gelu(x, b)[-tail:], want, atol=2e-2, rtol=2e-2)


@pytest.mark.skipif(not ON_GPU, reason="the host-sync check needs CUDA")
def test_no_host_sync_in_a_training_step_kernels():
    """dense_attention (key-padding mask), varlen attention and the fused cross-entropy run with
    CUDA's sync debug mode set to error: any device-to-host copy would raise."""
    from turing_kernels import dense_attention, fused_linear_cross_entropy

    os.environ.pop("TURING_KERNELS_DEBUG", None)
    q, k, v = (torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    mask = torch.ones(2, 1, 1, 256, dtype=torch.bool, device="cuda")
    cu = torch.tensor([0, 100, 256], dtype=torch.int32, device="cuda")
    h = torch.randn(512, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(1000, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randint(0, 1000, (512,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = dense_attention(q, k, v, attn_mask=mask, is_causal=True, dropout_p=0.1)
        out.sum().backward()
        flat = q.detach()[0].transpose(0, 1).contiguous()
        flash_attn_varlen_func(flat, flat, flat, cu, cu, 156, 156, causal=True)
        fused_linear_cross_entropy(h, w, y).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
