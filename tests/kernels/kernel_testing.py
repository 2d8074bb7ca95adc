"""Shared settings and the error rule of the kernel tests (imported by the test modules)."""

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# The interpreter's bf16 tl.dot is wrong (triton issue 11584): bf16 is checked on a GPU only.
FLOAT_DTYPES = [torch.float16, torch.bfloat16] if ON_GPU else [torch.float32, torch.float16]
ATOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}


def assert_within_rule(name, out, ref, pt, atol):
    """FlashAttention's rule: max|out - ref| <= 2 * max|pt - ref| + atol, where ref is the fp32/fp64
    reference and pt the plain PyTorch implementation in the kernel's dtype."""
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = (out.double() - ref.double()).abs().max().item() if out.numel() else 0.0
    pt_err = (pt.double() - ref.double()).abs().max().item() if pt.numel() else 0.0
    assert err <= 2 * pt_err + atol, f"{name}: max error {err:.3g} > 2 * {pt_err:.3g} + {atol:g}"


