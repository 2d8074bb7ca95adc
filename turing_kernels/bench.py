"""Benchmark the Triton kernels against their PyTorch peers, in one process, alternating runs.

    python turing_kernels/bench.py --quick              # the short sweep (< 4 min on an H100, compilation included)
    python turing_kernels/bench.py                      # the full sweep
    python turing_kernels/bench.py --only attention --json attention.json

Attention: TFLOP/s (FlashAttention's count, 4·B·H·Tq·Tk·D for the forward, halved when causal,
x2.5 for the backward) and peak memory for forward, backward and forward+backward, against
``F.scaled_dot_product_attention`` (flash backend where eligible) and eager attention, head dims
64 / 128 / 152, sequence 512 ... 8192 at 16k tokens per batch, causal and not, bf16.
LayerNorm (+ residual), linear cross-entropy (vocab 50304, 16k tokens, hidden 4096) and bias-GeLU
against their torch counterparts: time and peak memory. Prints a table with ratios (ours / peer;
> 1 is faster for throughput, < 1 uses less memory) and writes JSON.

Needs a CUDA GPU. ``--smoke`` runs every code path on tiny shapes (CPU under TRITON_INTERPRET=1
too); its numbers mean nothing, it exists so the tests keep this script working.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from turing_kernels import bias_gelu, flash_attention, fused_linear_cross_entropy, layer_norm
from turing_kernels.reference import attention_ref

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    bench: str
    shape: str
    mode: str
    impl: str
    ms: Optional[float]
    tflops: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ""
    extra: Dict[str, float] = field(default_factory=dict)


class Timer:
    """Times several implementations of one workload, alternating them each round."""

    def __init__(self, device: str, warmup: int, reps: int):
        self.device, self.warmup, self.reps = device, warmup, reps

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _once(self, fn: Callable[[], None]) -> float:
        if self.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def peak_mib(self, fn: Callable[[], None]) -> Optional[float]:
        if self.device != "cuda":
            return None
        self._sync()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        self._sync()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    def compare(self, fns: Dict[str, Callable[[], None]]) -> Dict[str, Optional[float]]:
        """Median milliseconds per implementation (None where it failed, e.g. out of memory)."""
        alive = {}
        for name, fn in fns.items():
            try:
                for _ in range(self.warmup):
                    fn()
                self._sync()
                alive[name] = fn
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
        times: Dict[str, List[float]] = {name: [] for name in alive}
        for r in range(self.reps):
            order = list(alive) if r % 2 == 0 else list(reversed(alive))
            for name in order:
                times[name].append(self._once(alive[name]))
        return {name: (statistics.median(times[name]) if name in times else None) for name in fns}


# ------------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------------

def _attention_flops(b, h, t, d, causal, mode):
    fwd = 4 * b * h * t * t * d / (2 if causal else 1)
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def _attention_impls(causal):
    def turing(q, k, v):
        return flash_attention(q, k, v, causal=causal)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def eager(q, k, v):
        return attention_ref(q, k, v, causal=causal, upcast=False)

    return {"turing": turing, "sdpa": sdpa, "eager": eager}


def bench_attention(timer, device, dtype, head_dims, seqlens, causals, modes, tokens, model_dim, eager_max_gib):
    rows = []
    for d in head_dims:
        heads = max(1, model_dim // d)
        for t in seqlens:
            b = max(1, tokens // t)
            for causal in causals:
                shape = f"b{b} h{heads} t{t} d{d}{' causal' if causal else ''}"
                q, k, v = (torch.randn(b, heads, t, d, device=device, dtype=dtype, requires_grad=True)
                           for _ in range(3))
                do = torch.randn_like(q)
                impls = _attention_impls(causal)
                eager_gib = b * heads * t * t * (2 + 4 + 2) * 2 / 2**30  # scores, fp32 softmax, probs (+grads)
                if eager_gib > eager_max_gib:
                    impls.pop("eager")
                for mode in modes:
                    fns, notes = {}, {}
                    for name, fn in impls.items():
                        if mode == "fwd":
                            fns[name] = (lambda fn=fn: fn(q, k, v))
                        elif mode == "fwd+bwd":
                            fns[name] = (lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), do))
                        else:  # bwd only: one forward kept, backward retained over the repetitions
                            out = fn(q, k, v)
                            fns[name] = (lambda out=out: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
                    ms = timer.compare(fns)
                    flops = _attention_flops(b, heads, t, d, causal, mode)
                    for name in impls:
                        peak = timer.peak_mib(fns[name]) if ms[name] is not None else None
                        tf = flops / (ms[name] * 1e-3) / 1e12 if ms[name] else None
                        rows.append(Row("attention", shape, mode, name, ms[name], tf, peak, notes.get(name, "")))
                    if "eager" not in impls:
                        rows.append(Row("attention", shape, mode, "eager", None, note=f"skipped (> {eager_max_gib} GiB)"))
                del q, k, v, do
    return rows


# ------------------------------------------------------------------------------------------------
# LayerNorm, linear cross-entropy, bias-GeLU
# ------------------------------------------------------------------------------------------------

def _fwd_bwd(fn, inputs):
    def run():
        out = fn(*inputs)
        out = out[0] if isinstance(out, tuple) else out
        grads = [t for t in inputs if t is not None and t.requires_grad]
        torch.autograd.grad(out.float().sum() if out.dim() else out, grads)
    return run


def _pair(timer, bench, shape, fns):
    ms = timer.compare(fns)
    return [Row(bench, shape, "fwd+bwd", name, ms[name], None, timer.peak_mib(fn) if ms[name] is not None else None)
            for name, fn in fns.items()]


def bench_layernorm(timer, device, dtype, rows_, hidden):
    x, r = (torch.randn(rows_, hidden, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    w = torch.ones(hidden, device=device, dtype=dtype, requires_grad=True)
    b = torch.zeros(hidden, device=device, dtype=dtype, requires_grad=True)

    def torch_ln(x, w, b, r):
        s = x + r
        return F.layer_norm(s, (hidden,), w, b, 1e-5), s

    fns = {"turing": _fwd_bwd(lambda x, w, b, r: layer_norm(x, w, b, 1e-5, residual=r), (x, w, b, r)),
           "torch": _fwd_bwd(torch_ln, (x, w, b, r))}
    return _pair(timer, "layernorm+residual", f"{rows_}x{hidden}", fns)


def bench_cross_entropy(timer, device, dtype, tokens, hidden, vocab):
    h = torch.randn(tokens, hidden, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=device, dtype=dtype) / math.sqrt(hidden)).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device)

    def unfused(h, w):
        return F.cross_entropy(F.linear(h, w).float(), y)

    fns = {"turing": _fwd_bwd(lambda h, w: fused_linear_cross_entropy(h, w, y), (h, w)),
           "torch": _fwd_bwd(unfused, (h, w))}
    return _pair(timer, "linear-cross-entropy", f"{tokens}x{hidden} V{vocab}", fns)


def bench_bias_gelu(timer, device, dtype, rows_, features):
    x = torch.randn(rows_, features, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(features, device=device, dtype=dtype, requires_grad=True)
    rows = []
    for approximate in (False, True):
        fns = {"turing": _fwd_bwd(lambda x, b: bias_gelu(x, b, approximate), (x, b)),
               "torch": _fwd_bwd(lambda x, b: F.gelu(x + b, approximate="tanh" if approximate else "none"), (x, b))}
        rows += _pair(timer, "bias-gelu" + ("-tanh" if approximate else ""), f"{rows_}x{features}", fns)
    return rows


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def print_table(rows: List[Row]) -> None:
    groups: Dict[tuple, Dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.bench, r.shape, r.mode), {})[r.impl] = r
    header = f"{'bench':<22} {'shape':<28} {'mode':<8} {'impl':<7} {'ms':>9} {'TFLOP/s':>8} {'peak MiB':>9} " \
             f"{'speed x':>8} {'mem x':>6}"
    print(header)
    print("-" * len(header))
    for (bench, shape, mode), impls in groups.items():
        ours = impls.get("turing")
        for name, r in impls.items():
            speed = mem = None
            if ours is not None and name != "turing" and r.ms and ours.ms:
                speed = r.ms / ours.ms
                mem = ours.peak_mib / r.peak_mib if (ours.peak_mib and r.peak_mib) else None
            print(f"{bench:<22} {shape:<28} {mode:<8} {name:<7} {_fmt(r.ms, '9.3f')} {_fmt(r.tflops, '8.1f')} "
                  f"{_fmt(r.peak_mib, '9.0f')} {_fmt(speed, '8.2f')} {_fmt(mem, '6.2f')} {r.note}")
    print("speed x = peer ms / turing ms (> 1: ours faster); mem x = turing peak / peer peak (< 1: ours smaller)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short sweep (< 4 min on an H100)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, every code path; numbers meaningless")
    parser.add_argument("--only", default="attention,layernorm,cross_entropy,bias_gelu",
                        help="comma-separated subset of attention,layernorm,cross_entropy,bias_gelu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--json", default="kernel_bench.json", help="where to write the results")
    args = parser.parse_args(argv)

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"attention", "layernorm", "cross_entropy", "bias_gelu"}
    if unknown:
        print(f"error: --only: unknown benchmark(s) {', '.join(sorted(unknown))}; choose from attention, layernorm, "
              "cross_entropy, bias_gelu", file=sys.stderr)
        return 2
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if torch.cuda.is_available() and not interpret:
        device = "cuda"
    elif args.smoke and interpret:
        device = "cpu"
    else:
        print("error: turing_kernels/bench.py needs a CUDA GPU (none found); numbers from the CPU interpreter would mean "
              "nothing (only --smoke runs there, with TRITON_INTERPRET=1).", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    if device == "cpu" and dtype == torch.bfloat16:
        dtype = torch.float32  # the interpreter's bf16 dot is wrong (triton issue 11584)

    if args.smoke:
        timer = Timer(device, warmup=1, reps=1)
        att = dict(head_dims=(152,), seqlens=(40,), causals=(True,), modes=("fwd", "bwd", "fwd+bwd"),
                   tokens=40, model_dim=152, eager_max_gib=1.0)
        ln, ce, gelu = (8, 96), (16, 32, 500), (8, 96)
    elif args.quick:
        timer = Timer(device, warmup=3, reps=10)
        att = dict(head_dims=(64, 128, 152), seqlens=(2048, 8192), causals=(False, True), modes=("fwd+bwd",),
                   tokens=16384, model_dim=2048, eager_max_gib=16.0)
        ln, ce, gelu = (16384, 4096), (16384, 4096, 50304), (16384, 16384)
    else:
        timer = Timer(device, warmup=5, reps=20)
        att = dict(head_dims=(64, 128, 152), seqlens=(512, 1024, 2048, 4096, 8192), causals=(False, True),
                   modes=("fwd", "bwd", "fwd+bwd"), tokens=16384, model_dim=2048, eager_max_gib=24.0)
        ln, ce, gelu = (16384, 4096), (16384, 4096, 50304), (16384, 16384)

    t0 = time.time()
    rows: List[Row] = []
    if "attention" in only:
        rows += bench_attention(timer, device, dtype, **att)
    if "layernorm" in only:
        rows += bench_layernorm(timer, device, dtype, *ln)
    if "cross_entropy" in only:
        rows += bench_cross_entropy(timer, device, dtype, *ce)
    if "bias_gelu" in only:
        rows += bench_bias_gelu(timer, device, dtype, *gelu)

    print_table(rows)
    command = "python turing_kernels/bench.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (TRITON_INTERPRET=1)",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "dtype": str(dtype).replace("torch.", ""),
        "seconds": round(time.time() - t0, 1), "command": command.strip(),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1)
    os.replace(tmp, args.json)
    print(f"{meta['device']}, {meta['seconds']} s; results in {args.json}")
    print(f"reproduce: {meta['command']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
