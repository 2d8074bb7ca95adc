"""Bias + GeLU against F.gelu(x + bias), both forms, forward and backward."""

import pytest
import torch
import torch.nn.functional as F

from kernel_testing import ATOL, DEVICE, FLOAT_DTYPES, assert_within_rule
from turing_kernels.bias_gelu import BiasGeLU, bias_gelu
from turing_kernels.reference import bias_gelu_ref


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("shape", [(3, 7, 152), (1, 1025)])
def test_bias_gelu_matches_reference(shape, approximate, dtype):
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=g)).to(DEVICE, dtype)
    b = torch.randn(shape[-1], generator=g).to(DEVICE, dtype)
    dy = torch.randn(shape, generator=g).to(DEVICE, dtype)
    up = torch.float64 if dtype == torch.float32 else torch.float32

    def run(fn, x, b, dy):
        x, b = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        y = fn(x, b)
        y.backward(dy)
        return y.detach(), x.grad, b.grad

    out = run(lambda x, b: bias_gelu(x, b, approximate), x, b, dy)
    ref = run(lambda x, b: bias_gelu_ref(x, b, approximate), x.to(up), b.to(up), dy.to(up))
    pt = run(lambda x, b: bias_gelu_ref(x, b, approximate), x, b, dy)
    rows = x.numel() // shape[-1]
    for name, o, r, p, scale in zip(("y", "dx", "dbias"), out, ref, pt, (1, 1, rows)):
        assert o.dtype == dtype
        assert_within_rule(name, o, r, p, ATOL[dtype] * scale)


def test_module_and_string_form():
    m = BiasGeLU(16, approximate=True).to(DEVICE)
    torch.nn.init.normal_(m.bias)
    x = torch.randn(5, 16, device=DEVICE)
    torch.testing.assert_close(m(x), F.gelu(x + m.bias, approximate="tanh"))
    torch.testing.assert_close(bias_gelu(x, m.bias, "tanh"), F.gelu(x + m.bias, approximate="tanh"))
    with pytest.raises(ValueError, match="bias must have shape"):
        bias_gelu(x, torch.zeros(8, device=DEVICE))
