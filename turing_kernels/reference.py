"""Plain PyTorch references of every kernel: what the tests compare against and the benchmark's
"eager" baselines. Same conventions as the kernels (bottom-right causal mask, rows that see no key
return zeros)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_ref(q, k, v, *, causal=False, key_padding_mask=None, scale=None, upcast=True):
    """q ``[B, H, Tq, D]``, k/v ``[B, Hkv, Tk, D]``. ``upcast`` computes in fp32 (fp64 for fp32 input)."""
    dtype = q.dtype
    if upcast:
        work = torch.float64 if dtype == torch.float32 else torch.float32
        q, k, v = q.to(work), k.to(work), v.to(work)
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    t_q, t_k = q.shape[2], k.shape[2]
    mask = torch.ones(t_q, t_k, dtype=torch.bool, device=q.device)
    if causal:
        mask = torch.arange(t_k, device=q.device)[None, :] <= torch.arange(t_k - t_q, t_k, device=q.device)[:, None]
    mask = mask[None, None]
    if key_padding_mask is not None:
        mask = mask & key_padding_mask.bool()[:, None, None, :]
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(v.dtype)
    out = torch.matmul(probs, v)
    return out.to(dtype) if upcast else out


def varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, *, causal=False, scale=None, upcast=True):
    """Packed ``[total, H, D]`` reference: one dense call per sequence."""
    out = torch.zeros_like(q)
    bq, bk = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for i in range(len(bq) - 1):
        qs = q[bq[i]:bq[i + 1]].transpose(0, 1)[None]
        ks = k[bk[i]:bk[i + 1]].transpose(0, 1)[None]
        vs = v[bk[i]:bk[i + 1]].transpose(0, 1)[None]
        piece = attention_ref(qs, ks, vs, causal=causal, scale=scale, upcast=upcast)[0].transpose(0, 1)
        out = torch.cat([out[:bq[i]], piece, out[bq[i + 1]:]], dim=0)
    return out


def layer_norm_ref(x, weight, bias, eps=1e-5, residual=None):
    if residual is None:
        return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    summed = x + residual
    return F.layer_norm(summed, (x.shape[-1],), weight, bias, eps), summed


def bias_gelu_ref(x, bias, approximate=False):
    return F.gelu(x + bias, approximate="tanh" if approximate else "none")


def linear_cross_entropy_ref(hidden, weight, labels, bias=None, *, ignore_index=-100, reduction="mean",
                             num_valid_classes=None, label_smoothing=0.0, z_loss=0.0, upcast=True):
    """``cross_entropy(hidden @ weight.T + bias, labels)`` materialising all logits (fp32 when ``upcast``)."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
    if upcast:
        logits = logits.float()
    if num_valid_classes is not None:
        logits = logits[:, :num_valid_classes]
    labels = labels.reshape(-1)
    loss = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    if z_loss:
        keep = labels != ignore_index
        z = torch.logsumexp(logits.float(), dim=-1)[keep].square()
        loss = loss + z_loss * (z.mean() if reduction == "mean" else z.sum())
    return loss
