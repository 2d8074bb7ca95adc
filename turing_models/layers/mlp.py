"""The transformer feed-forward block shared by both families: fc_in -> activation -> fc_out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import kernels_usable

ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


def activation_fn(name: str):
    if name == "gelu":
        return lambda x: F.gelu(x)
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"activation={name!r} is not supported; choose one of {', '.join(ACTIVATIONS)}.")


class MLP(nn.Module):
    """``fc_out(dropout?(act(fc_in(x))))``. With ``fused_bias_gelu`` on CUDA, fc_in's bias add and the
    GeLU run as one Triton kernel (turing_kernels.bias_gelu)."""

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        activation: str = "gelu",
        fused_bias_gelu: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        self.fc_in = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.fc_out = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.activation = activation
        self.act = activation_fn(activation)
        self.fused_bias_gelu = fused_bias_gelu and activation in ("gelu", "gelu_tanh") and bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bias_gelu and kernels_usable(x, self.fc_in.weight):
            from turing_kernels.bias_gelu import bias_gelu

            h = bias_gelu(F.linear(x, self.fc_in.weight), self.fc_in.bias, approximate=self.activation == "gelu_tanh")
        else:
            h = self.act(self.fc_in(x))
        return self.fc_out(h)
