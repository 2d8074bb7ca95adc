"""Where the Triton kernels can run, and the one error raised where they cannot.

The kernels run on CUDA tensors with Triton installed, or on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1`` set before Triton is imported; this is how the test suite
checks them without a GPU). Everything else gets :class:`KernelUnavailableError`.
"""

from __future__ import annotations

import functools
import os

import torch


class KernelUnavailableError(RuntimeError):
    """A Triton kernel was asked for where it cannot run."""


@functools.lru_cache(maxsize=None)
def triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """True under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def can_run(*tensors: torch.Tensor) -> bool:
    """True when the kernels can run on these tensors here."""
    if not triton_installed():
        return False
    devices = {t.device.type for t in tensors if t is not None}
    if interpreting():
        return devices <= {"cpu"}
    return devices == {"cuda"}


def check_can_run(name: str, *tensors: torch.Tensor) -> None:
    """Raise one clear :class:`KernelUnavailableError` when ``name`` cannot run on ``tensors``."""
    if not triton_installed():
        raise KernelUnavailableError(
            f"turing_kernels.{name} needs Triton, which is not installed: pip install 'turing-models[triton]' "
            "or use attn_implementation='sdpa' and the unfused layers."
        )
    if can_run(*tensors):
        return
    devices = sorted({str(t.device) for t in tensors if t is not None})
    if interpreting():
        raise KernelUnavailableError(
            f"turing_kernels.{name} runs on CPU tensors under TRITON_INTERPRET=1, got tensors on {devices}."
        )
    raise KernelUnavailableError(
        f"turing_kernels.{name} needs CUDA tensors (got tensors on {', '.join(devices)}); use a GPU, or set "
        "TRITON_INTERPRET=1 before importing Triton to run it (slowly) on the CPU, or use the unfused PyTorch path "
        "(attn_implementation='sdpa', fused_* flags off)."
    )


def debug_checks(*tensors) -> bool:
    """True where checks that read tensor values on the host may run: always for CPU tensors (no
    device to wait for), and on a GPU only in debug mode (``TURING_KERNELS_DEBUG=1``), since there
    such a check synchronises with the device and stalls the training step."""
    if os.environ.get("TURING_KERNELS_DEBUG", "0") not in ("", "0"):
        return True
    return all(t.device.type == "cpu" for t in tensors if t is not None)


def next_power_of_2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()
