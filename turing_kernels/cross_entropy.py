"""Fused linear cross-entropy: the LM-head loss without the ``tokens x vocab`` logits.

``fused_linear_cross_entropy(hidden, weight, labels)`` equals
``F.cross_entropy(hidden @ weight.T (+ bias), labels)`` but walks over the tokens in chunks: each
chunk's logits are computed (cuBLAS), a Triton kernel turns them in place into that chunk's loss
and gradient with respect to the logits, and the gradients of ``hidden``, ``weight`` and ``bias``
are accumulated at once. Only one chunk of logits is alive at a time; the backward pass merely
scales the stored gradients. Options: ``ignore_index``, ``reduction`` ("mean" over non-ignored
tokens, or "sum"), ``label_smoothing`` (as in ``F.cross_entropy``), ``z_loss`` (adds
``z_loss * logsumexp^2`` per token, PaLM), and ``num_valid_classes`` to exclude padded vocabulary
rows of ``weight`` from the softmax.

The gradient of ``weight`` is accumulated in fp32 over the chunks (one rounding to the weight's dtype
at the end), and the backward pass scales the stored gradients in place: no host synchronisation and
no new ``tokens x hidden`` buffer. Label values are checked on the host only on the CPU or in debug
mode (``TURING_KERNELS_DEBUG=1``); on a GPU an out-of-range label trips an asynchronous device-side
assertion instead. Under autocast the matmuls run in autocast's dtype, as ``F.linear`` would.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ._runtime import check_can_run, debug_checks, interpreting, next_power_of_2

__all__ = ["FusedLinearCrossEntropy", "fused_linear_cross_entropy"]

# Logits elements per chunk: 2^27 (256 MiB in bf16), i.e. ~2.6k tokens at vocab 50304.
_CHUNK_ELEMENTS = 1 << 27


def _kernels():
    from . import _cross_entropy_triton

    return _cross_entropy_triton


def kernel_block(vocab: int):
    """(BLOCK_V, num_warps) of the row kernel: 8192 columns over 16 warps (16 per thread: no spills on
    sm_90, checked by turing_kernels/compile_check.py), 4096 under the interpreter or for small vocabularies."""
    block_v = min(next_power_of_2(vocab), 4096 if interpreting() else 8192 if vocab >= 8192 else 4096)
    return block_v, 16 if block_v >= 8192 else 8


def _chunk_rows(n_rows: int, vocab: int, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        return max(1, int(chunk_size))
    return max(1, min(n_rows, _CHUNK_ELEMENTS // max(vocab, 1)))


def _chunked_loss_and_grads(hidden, weight, bias, labels, ignore_index, n_valid_classes, label_smoothing, z_loss,
                            chunk, need_grad_h, need_grad_w, need_grad_b):
    n, _ = hidden.shape
    vocab = weight.shape[0]
    compute_grad = need_grad_h or need_grad_w or need_grad_b
    losses = torch.empty(n, device=hidden.device, dtype=torch.float32)
    lse = torch.empty_like(losses)
    grad_h = torch.empty_like(hidden) if need_grad_h else None
    # dW accumulates in fp32; a half-precision chunk product goes through one reused buffer.
    grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if need_grad_w else None
    chunk_w = torch.empty_like(weight) if need_grad_w and weight.dtype != torch.float32 else None
    grad_b = torch.zeros(vocab, device=bias.device, dtype=torch.float32) if need_grad_b else None
    block_v, warps = kernel_block(vocab)
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        h = hidden[start:end]
        logits = h @ weight.t()
        if bias is not None:
            logits += bias
        logits = logits.contiguous()
        _kernels().cross_entropy_fwd_bwd[(end - start,)](
            logits, labels[start:end], losses[start:end], lse[start:end],
            logits.stride(0), vocab, n_valid_classes, ignore_index, float(label_smoothing), float(z_loss),
            COMPUTE_GRAD=compute_grad, BLOCK_V=block_v, num_warps=warps,
        )
        if need_grad_h:
            torch.mm(logits, weight, out=grad_h[start:end])
        if need_grad_w:
            if chunk_w is None:
                grad_w.addmm_(logits.t(), h)
            else:
                torch.mm(logits.t(), h, out=chunk_w)
                grad_w += chunk_w
        if need_grad_b:
            grad_b += logits.sum(0, dtype=torch.float32)
    return losses, grad_h, grad_w, grad_b


class _FusedLinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, ignore_index, reduction, n_valid_classes, label_smoothing,
                z_loss, chunk, need_grads):
        need_h, need_w, need_b = need_grads
        losses, grad_h, grad_w, grad_b = _chunked_loss_and_grads(
            hidden, weight, bias, labels, ignore_index, n_valid_classes, label_smoothing, z_loss, chunk,
            need_h, need_w, need_b,
        )
        total = losses.sum()
        if reduction == "mean":
            n_tokens = (labels != ignore_index).sum()
            loss = total / n_tokens  # nan when every label is ignored, as F.cross_entropy
            scale = 1.0 / n_tokens.clamp(min=1).float()
        else:
            loss = total
            scale = torch.ones((), device=hidden.device)
        ctx.save_for_backward(
            grad_h if grad_h is not None else None, grad_w if grad_w is not None else None,
            grad_b if grad_b is not None else None, scale,
        )
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.weight_dtype = weight.dtype
        ctx.used = False
        return loss.to(hidden.dtype) if hidden.dtype == torch.float64 else loss

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.used:
            raise RuntimeError("fused_linear_cross_entropy: backward ran twice through the same loss; its stored "
                               "gradients are scaled in place, so recompute the loss for a second backward.")
        ctx.used = True
        grad_h, grad_w, grad_b, scale = ctx.saved_tensors
        g = grad_output.float() * scale
        dh = grad_h.mul_(g.to(grad_h.dtype)) if grad_h is not None else None
        dw = grad_w.mul_(g).to(ctx.weight_dtype) if grad_w is not None else None
        db = grad_b.mul_(g).to(ctx.bias_dtype) if grad_b is not None else None
        return dh, dw, db, None, None, None, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_valid_classes: Optional[int] = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden [N, H] @ weight[V, H].T (+ bias)`` against ``labels [N]``, chunked.

    Returns a scalar fp32 loss. ``chunk_size`` (tokens per chunk) defaults to ~2^27 logits.
    """
    check_can_run("cross_entropy.fused_linear_cross_entropy", hidden, weight, labels, bias)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"fused_linear_cross_entropy: reduction must be 'mean' or 'sum', got {reduction!r}.")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    labels = labels.reshape(-1)
    if hidden.shape[0] != labels.shape[0]:
        raise ValueError(f"fused_linear_cross_entropy: {hidden.shape[0]} hidden rows but {labels.shape[0]} labels.")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"fused_linear_cross_entropy: weight must be [vocab, {hidden.shape[1]}], got "
                         f"{tuple(weight.shape)}.")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"fused_linear_cross_entropy: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}.")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"fused_linear_cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}.")
    vocab = weight.shape[0]
    n_valid = vocab if num_valid_classes is None else int(num_valid_classes)
    if not 1 <= n_valid <= vocab:
        raise ValueError(f"fused_linear_cross_entropy: num_valid_classes must be in [1, {vocab}], got {n_valid}.")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= n_valid))
    if debug_checks(labels):
        if bool(bad.any()):
            raise ValueError(f"fused_linear_cross_entropy: label {int(labels[bad][0])} is outside [0, {n_valid}) and "
                             f"is not ignore_index ({ignore_index}).")
    else:
        torch._assert_async(~bad.any(), f"fused_linear_cross_entropy: a label is outside [0, {n_valid}) and is not "
                            f"ignore_index ({ignore_index})")
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    # The matmuls run in autocast's dtype when autocast is on (as F.linear would), else in the
    # promoted dtype; the casts are autograd ops, so fp32 master weights get fp32 gradients.
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(hidden.dtype, weight.dtype)
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    bias = bias.to(dtype) if bias is not None else None
    grad = torch.is_grad_enabled()
    need = (grad and hidden.requires_grad, grad and weight.requires_grad,
            grad and bias is not None and bias.requires_grad)
    chunk = _chunk_rows(hidden.shape[0], vocab, chunk_size)
    with torch.autocast(device_type, enabled=False):
        return _FusedLinearCrossEntropyFunction.apply(
            hidden, weight, bias, labels.contiguous(), int(ignore_index), reduction, n_valid,
            float(label_smoothing), float(z_loss), chunk, need,
        )


class FusedLinearCrossEntropy(nn.Module):
    """Module form: ``FusedLinearCrossEntropy(ignore_index=-100)(hidden, lm_head.weight, labels)``."""

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0,
                 z_loss: float = 0.0, num_valid_classes: Optional[int] = None, chunk_size: Optional[int] = None):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.z_loss = label_smoothing, z_loss
        self.num_valid_classes, self.chunk_size = num_valid_classes, chunk_size

    def forward(self, hidden, weight, labels, bias=None) -> torch.Tensor:
        return fused_linear_cross_entropy(
            hidden, weight, labels, bias, ignore_index=self.ignore_index, reduction=self.reduction,
            num_valid_classes=self.num_valid_classes, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
            chunk_size=self.chunk_size,
        )
