"""Fused linear cross-entropy against cross_entropy(hidden @ W.T + b), loss and gradients."""

import pytest
import torch

from kernel_testing import ATOL, DEVICE, FLOAT_DTYPES, assert_within_rule
from turing_kernels.cross_entropy import FusedLinearCrossEntropy, fused_linear_cross_entropy
from turing_kernels.reference import linear_cross_entropy_ref


def _run(fn, hidden, weight, bias, labels):
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    b = bias.detach().clone().requires_grad_() if bias is not None else None
    loss = fn(h, w, b, labels)
    loss.backward()
    return loss.detach(), h.grad, w.grad, (b.grad if b is not None else None)


CASES = [
    # tokens, hidden, vocab, bias, reduction, num_valid_classes, label_smoothing, z_loss, chunk_size
    (97, 64, 1000, False, "mean", None, 0.0, 0.0, 32),
    (50, 40, 517, True, "sum", 500, 0.1, 1e-3, None),   # padded vocab, smoothing, z-loss
    (33, 32, 5000, False, "mean", None, 0.0, 1e-4, 8),  # vocab wider than one kernel block
]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"n{c[0]}v{c[2]}-{c[4]}")
def test_matches_reference(case, dtype):
    n, hdim, vocab, has_bias, reduction, n_valid, smoothing, z_loss, chunk = case
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, hdim, generator=g).to(DEVICE, dtype)
    weight = (torch.randn(vocab, hdim, generator=g) / hdim ** 0.5).to(DEVICE, dtype)
    bias = torch.randn(vocab, generator=g).to(DEVICE, dtype) if has_bias else None
    labels = torch.randint(0, n_valid or vocab, (n,), generator=g)
    labels[::5] = -100
    labels = labels.to(DEVICE)
    kw = dict(reduction=reduction, num_valid_classes=n_valid, label_smoothing=smoothing, z_loss=z_loss)
    out = _run(lambda h, w, b, y: fused_linear_cross_entropy(h, w, y, b, chunk_size=chunk, **kw),
               hidden, weight, bias, labels)
    up = torch.float64
    ref = _run(lambda h, w, b, y: linear_cross_entropy_ref(h, w, y, b, **kw), hidden.to(up), weight.to(up),
               bias.to(up) if bias is not None else None, labels)
    pt = _run(lambda h, w, b, y: linear_cross_entropy_ref(h, w, y, b, **kw), hidden, weight, bias, labels)
    scale = n if reduction == "sum" else 1
    assert out[0].dtype == torch.float32 and out[0].dim() == 0
    assert_within_rule("loss", out[0], ref[0], pt[0], ATOL[dtype] * scale)
    for name, o, r, p in zip(("dhidden", "dweight", "dbias"), out[1:], ref[1:], pt[1:]):
        if r is None:
            assert o is None
            continue
        assert o.dtype == dtype
        assert_within_rule(name, o, r, p, ATOL[dtype] * scale)


def test_all_ignored_and_no_grad():
    w = torch.randn(100, 16, device=DEVICE)
    h = torch.randn(6, 16, device=DEVICE)
    labels = torch.full((6,), -100, device=DEVICE)
    assert torch.isnan(fused_linear_cross_entropy(h, w, labels))  # as F.cross_entropy
    assert fused_linear_cross_entropy(h, w, labels, reduction="sum").item() == 0.0
    labels[0] = 3
    with torch.no_grad():
        loss = FusedLinearCrossEntropy()(h, w, labels)
    torch.testing.assert_close(loss, linear_cross_entropy_ref(h, w, labels), atol=1e-5, rtol=0)


def test_bad_labels_and_options_raise():
    w = torch.randn(10, 8, device=DEVICE)
    h = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="label 12 is outside"):
        fused_linear_cross_entropy(h, w, torch.tensor([1, 2, 12, 0], device=DEVICE))
    with pytest.raises(ValueError, match="label 9 is outside"):
        fused_linear_cross_entropy(h, w, torch.tensor([1, 2, 9, 0], device=DEVICE), num_valid_classes=9)
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(h, w, torch.tensor([1, 2, 3, 0], device=DEVICE), reduction="none")


def test_autocast_and_fp32_master_weights():
    """Mixed precision training: fp32 weight, autocast on; gradients come back in fp32."""
    device_type = "cuda" if DEVICE == "cuda" else "cpu"
    low = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # fp16 on CPU: the interpreter is not trusted with bf16
    h = torch.randn(24, 32, device=DEVICE, requires_grad=True)
    w = torch.randn(300, 32, device=DEVICE, requires_grad=True)
    y = torch.randint(0, 300, (24,), device=DEVICE)
    with torch.autocast(device_type, dtype=low):
        loss = fused_linear_cross_entropy(h, w, y)
        want = linear_cross_entropy_ref(h, w, y)
    loss.backward()
    assert w.grad.dtype == torch.float32 and h.grad.dtype == torch.float32
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    want.backward()
    torch.testing.assert_close(loss, want, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(gh, h.grad, atol=2e-2, rtol=5e-2)
    torch.testing.assert_close(gw, w.grad, atol=2e-2, rtol=5e-2)
    # Without autocast, mixed dtypes promote instead of failing.
    assert fused_linear_cross_entropy(h.half(), w, y).dtype == torch.float32


def test_weight_grad_accumulates_in_fp32_and_backward_reuses_buffers():
    """64 chunks of half-precision products summed into dW: the result stays within a few roundings of
    the exact gradient (fp32 accumulation); the backward scales the stored buffers in place, so a
    second backward through the same loss is refused instead of returning wrong gradients."""
    dtype = torch.float16
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(64, 32, generator=g)).to(DEVICE, dtype).requires_grad_()
    w = (torch.randn(300, 32, generator=g) * 0.1).to(DEVICE, dtype).requires_grad_()
    y = torch.randint(0, 300, (64,), generator=g).to(DEVICE)
    loss = fused_linear_cross_entropy(h, w, y, chunk_size=1, reduction="sum")
    loss.backward(retain_graph=True)
    hd, wd = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    torch.nn.functional.cross_entropy(hd @ wd.t(), y, reduction="sum").backward()
    one_rounding = (wd.grad.to(dtype).double() - wd.grad).abs().max().item()
    err = (w.grad.double() - wd.grad).abs().max().item()
    assert err <= 2 * one_rounding, (err, one_rounding)  # fp16 accumulation: about 15 roundings here
    assert w.grad.dtype == dtype and h.grad.dtype == dtype
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()
