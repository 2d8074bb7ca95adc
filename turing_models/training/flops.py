"""FLOPs per token and model FLOPs utilisation (MFU), from one formula.

Training a decoder costs, per token (PaLM appendix B; Megatron-LM)::

    6 N + 12 L H Q T

``N`` parameters that take part in matrix multiplies (every parameter except the position
embeddings; a tied token embedding counts once, as the output projection), ``L`` layers, ``H``
attention heads, ``Q`` head dimension, ``T`` sequence length. ``6N`` is forward (2) + backward (4)
through the weights, ``12LHQT`` the attention scores and weighted sum. Causal masking is not
discounted, as in PaLM and Megatron, so figures compare with theirs. Inference is a third of it.

MFU = achieved model FLOP/s / peak FLOP/s of the hardware, never above 100 %. The peak
(:func:`device_peak_flops`, a :class:`PeakFlops`) is

* on a GPU, the dense bf16 tensor-core figure of its data sheet (:data:`PEAK_FLOPS`);
* on a CPU, the larger of the fp32 vector peak worked out from the instruction set, clock and
  threads (:func:`cpu_theoretical_peak`: cores x GHz x FLOPs per cycle) and an fp32 matmul
  measured at start (:func:`measure_matmul_peak`). A measurement alone reads far too low when
  other processes share the cores (30 GFLOP/s loaded against 218 idle on one 2-core host), and
  the MFU computed from it then reads above 100 % as soon as the load drops;
* in every case raised to any throughput the run has actually achieved (:meth:`PeakFlops.observe`),
  since a device has demonstrably at least that peak. :func:`mfu` does this, so the figure it
  returns is at most 1 whatever peak it is given.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Optional

import torch

#: Dense (no sparsity) bf16 tensor-core peak per device, FLOP/s, from the vendors' data sheets.
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card is 756e12
    "H100 PCIE": 756e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L4": 121e12,
    "V100": 125e12,  # fp16
}


def count_matmul_params(model: torch.nn.Module) -> int:
    """``N`` of the formula: parameters except position embeddings (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        lowered = name.lower()
        if "position_embeddings" in lowered or lowered.endswith("wpe.weight") or "embed_positions" in lowered:
            continue
        total += param.numel()
    return total


def flops_per_token(n_params: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int,
                    training: bool = True) -> float:
    """``6N + 12LHQT`` for training (``2N + 4LHQT`` for a forward pass only)."""
    if training:
        return 6.0 * n_params + 12.0 * n_layers * n_heads * head_dim * seq_len
    return 2.0 * n_params + 4.0 * n_layers * n_heads * head_dim * seq_len


def model_flops_per_token(model: torch.nn.Module, seq_len: int, training: bool = True) -> float:
    """The formula for an HF model, its shape read from ``model.config``."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer")
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    return flops_per_token(count_matmul_params(model), layers, heads, hidden // heads, seq_len, training)


@functools.lru_cache(maxsize=None)
def measure_matmul_peak(dtype: torch.dtype = torch.float32, size: int = 2048, seconds: float = 0.5) -> float:
    """Best FLOP/s of a square fp32 matmul on this CPU with the current thread count (measured once).

    A lower bound of the true peak, and a loose one on a busy machine: use :func:`device_peak_flops`
    for MFU."""
    generator = torch.Generator().manual_seed(0)  # leave the global RNG alone (bitwise resume)
    a = torch.randn(size, size, dtype=dtype, generator=generator)
    b = torch.randn(size, size, dtype=dtype, generator=generator)
    out = torch.empty(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=out)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size**3 / elapsed)
    return best


#: fp32 FLOPs per cycle per core by the widest vector FMA the CPU has, assuming two FMA ports
#: (an upper bound: some parts have one).
_FP32_FLOPS_PER_CYCLE = (("avx512f", 64), ("avx2", 32), ("fma", 32), ("avx", 16), ("asimd", 16), ("sse2", 8))


def _cpu_ghz(cpuinfo: str) -> Optional[float]:
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            with open(path) as f:
                return int(f.read().strip()) / 1e6  # kHz
        except (OSError, ValueError):
            pass
    clocks = [float(m) / 1e3 for m in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.M)]
    named = re.search(r"@\s*([0-9.]+)\s*GHz", cpuinfo)
    candidates = clocks + ([float(named.group(1))] if named else [])
    return max(candidates) if candidates else None


def cpu_theoretical_peak(threads: Optional[int] = None, cpuinfo: Optional[str] = None) -> Optional[float]:
    """fp32 vector peak of the cores torch uses: ``threads x GHz x FLOPs/cycle`` from
    ``/proc/cpuinfo`` (the highest clock it reports, the widest FMA among its flags), or ``None``
    where that cannot be read. Turbo clocks above the reported one are not counted; the
    run-time ratchet of :class:`PeakFlops` covers them."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags_line = re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.M)
    ghz = _cpu_ghz(cpuinfo)
    if flags_line is None or not ghz:
        return None
    flags = set(flags_line.group(1).split())
    per_cycle = next((n for flag, n in _FP32_FLOPS_PER_CYCLE if flag in flags), None)
    if per_cycle is None:
        return None
    if threads is None:
        threads = torch.get_num_threads()
        try:
            threads = min(threads, len(os.sched_getaffinity(0)))
        except AttributeError:  # not Linux
            threads = min(threads, os.cpu_count() or threads)
    return threads * ghz * 1e9 * per_cycle


class PeakFlops:
    """Peak FLOP/s of one device for MFU, which only ever rises.

    ``value`` starts at the data-sheet or theoretical figure and :meth:`observe` lifts it to any
    achieved FLOP/s above it: a device that did X FLOP/s has a peak of at least X, so an MFU
    computed against this peak is never above 100 %. Behaves as a float (``float(peak)``,
    ``peak * n``, ``x / peak``) with its current value.
    """

    def __init__(self, flops: float, source: str = "given"):
        if not flops > 0:
            raise ValueError(f"PeakFlops: flops={flops!r} must be positive")
        self.value = float(flops)
        self.initial = float(flops)
        self.source = source

    def observe(self, achieved_flops: float) -> float:
        """Raise the peak to ``achieved_flops`` when that is higher; the peak now."""
        if achieved_flops > self.value and achieved_flops != float("inf"):
            self.value = float(achieved_flops)
            self.source = f"{self.source}, raised to the achieved rate"
        return self.value

    @property
    def raised(self) -> bool:
        """Whether the run achieved more than the initial figure (so that figure was too low)."""
        return self.value > self.initial

    def __float__(self) -> float:
        return self.value

    def __mul__(self, other: float) -> float:
        return self.value * other

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> float:
        return self.value / other

    def __rtruediv__(self, other: float) -> float:
        return other / self.value

    def __repr__(self) -> str:
        return f"PeakFlops({self.value / 1e9:.1f} GFLOP/s, {self.source})"


def device_peak_flops(device: Optional[torch.device] = None) -> PeakFlops:
    """Peak FLOP/s of one device: the data-sheet bf16 figure for known GPUs; on CPU the larger of
    the theoretical fp32 vector peak and a measured fp32 matmul (see the module docstring)."""
    device = device or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device).upper()
        for key in sorted(PEAK_FLOPS, key=len, reverse=True):
            if key in name:
                return PeakFlops(PEAK_FLOPS[key], f"{key} data sheet, dense bf16")
        return PeakFlops(312e12, "unknown GPU, A100 bf16 assumed")
    measured = measure_matmul_peak()
    theoretical = cpu_theoretical_peak()
    if theoretical is not None and theoretical >= measured:
        return PeakFlops(theoretical, f"fp32 vector peak of {torch.get_num_threads()} CPU thread(s)")
    return PeakFlops(measured, "measured fp32 matmul")


def mfu(tokens_per_second: float, flops_per_tok: float, peak_flops: float | PeakFlops, n_devices: int = 1) -> float:
    """Model FLOPs utilisation in [0, 1].

    ``peak_flops`` is per device. A :class:`PeakFlops` is raised to the achieved rate when that is
    higher (and keeps it for later calls); a plain number that the achieved rate exceeds yields 1.0.
    """
    achieved = tokens_per_second * flops_per_tok / max(n_devices, 1)
    if isinstance(peak_flops, PeakFlops):
        peak = peak_flops.observe(achieved)
    else:
        peak = max(float(peak_flops), achieved)
    return achieved / peak if peak > 0 else 0.0
