"""Fused LayerNorm (+ residual) against F.layer_norm, forward and backward."""

import pytest
import torch

from kernel_testing import ATOL, DEVICE, FLOAT_DTYPES, assert_within_rule
from turing_kernels.layernorm import FusedLayerNorm, layer_norm
from turing_kernels.reference import layer_norm_ref


def _run(fn, tensors, douts):
    tensors = [t.detach().clone().requires_grad_() if t is not None else None for t in tensors]
    outs = fn(*tensors)
    outs = outs if isinstance(outs, tuple) else (outs,)
    torch.autograd.backward(outs, douts[:len(outs)])
    return [o.detach() for o in outs], [t.grad if t is not None else None for t in tensors]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape,residual,affine", [
    ((3, 5, 96), True, True),
    ((7, 4256), False, True),   # Turing-NLG 17B's hidden size (not a power of two)
    ((1, 1, 33), True, False),
])
def test_layer_norm_matches_reference(shape, residual, affine, dtype):
    g = torch.Generator().manual_seed(0)
    n = shape[-1]
    x = torch.randn(shape, generator=g).to(DEVICE, dtype)
    r = torch.randn(shape, generator=g).to(DEVICE, dtype) if residual else None
    w = (1 + 0.1 * torch.randn(n, generator=g)).to(DEVICE, dtype) if affine else None
    b = (0.1 * torch.randn(n, generator=g)).to(DEVICE, dtype) if affine else None
    douts = [torch.randn(shape, generator=g).to(DEVICE, dtype) for _ in range(2)]

    def kern(x, w, b, r):
        return layer_norm(x, w, b, 1e-5, residual=r)

    def ref(x, w, b, r, up):
        cast = (lambda t: t.to(up) if t is not None else None)
        return layer_norm_ref(cast(x), cast(w), cast(b), 1e-5, residual=cast(r))

    up = torch.float64 if dtype == torch.float32 else torch.float32
    outs, grads = _run(kern, (x, w, b, r), douts)
    ref_outs, ref_grads = _run(lambda x, w, b, r: ref(x, w, b, r, up), (x, w, b, r), [d.to(up) for d in douts])
    pt_outs, pt_grads = _run(lambda x, w, b, r: ref(x, w, b, r, dtype), (x, w, b, r), douts)
    for i, (o, ro, po) in enumerate(zip(outs, ref_outs, pt_outs)):
        assert o.dtype == dtype and o.shape == x.shape
        assert_within_rule(f"out{i}", o, ro, po, ATOL[dtype])
    for name, gk, gr, gp in zip(("dx", "dw", "db", "dres"), grads, ref_grads, pt_grads):
        if gr is None:
            assert gk is None
            continue
        # dw/db sum over rows: scale the absolute tolerance with the row count.
        assert_within_rule(name, gk, gr, gp, ATOL[dtype] * (1 if name in ("dx", "dres") else x.numel() // n))


def test_module_is_a_layernorm_and_fp32_residual_stream():
    norm = FusedLayerNorm(64, eps=1e-6).to(DEVICE)
    assert isinstance(norm, torch.nn.LayerNorm) and set(norm.state_dict()) == {"weight", "bias"}
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.float16)
    r = torch.randn(4, 64, device=DEVICE, dtype=torch.float32)
    norm = norm.half()
    y, s = norm(x, residual=r)
    assert y.dtype == torch.float16 and s.dtype == torch.float32  # the sum keeps the promoted dtype
    torch.testing.assert_close(s, x.float() + r)
    torch.testing.assert_close(y.float(), layer_norm_ref(s, norm.weight.float(), norm.bias.float(), 1e-6),
                               atol=2e-3, rtol=0)


def test_bad_shapes_raise():
    x = torch.randn(2, 8, device=DEVICE)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm(x, torch.ones(4, device=DEVICE), None)
    with pytest.raises(ValueError, match="residual shape"):
        layer_norm(x, None, None, residual=torch.randn(2, 4, device=DEVICE))
