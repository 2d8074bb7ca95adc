"""Compile what the launcher launches for a GPU target, without a GPU, and grade the machine code.

    python turing_kernels/compile_check.py --arch 90        # H100/H200, bf16: exit 0 only if every check passes
    python turing_kernels/compile_check.py --arch 80 --only attention
    python turing_kernels/compile_check.py --arch 90 --head-dims 152 --quick

Attention. For each head dim (64, 128, 152 by default) the launcher's own functions
(``turing_kernels.attention.forward_launch`` / ``backward_launches``) build the launches of a
training step on meta tensors (no memory): the model's ``[B, T, H, 3, D]`` projection viewed as
q, k, v, bf16, causal and not, with and without attention dropout. Each launch's arguments then go
through Triton's own binder, so the kernel is specialised exactly as at run time (divisibility of
pointers, strides and lengths by 16, the ``EVEN_*`` / ``ALIGNED`` flags, every constexpr), and it is
compiled to a cubin for every tile configuration the autotuner's pruning keeps. One line per
configuration reports:

* ``regs`` and ``spill`` (bytes of spill stores + loads), from ptxas;
* ``smem``: shared memory of the launch, static plus the software-pipeline buffers, against the
  device limit;
* ``mma``: ``wgmma`` (Hopper warpgroup MMA), ``mma`` (Ampere mma.sync) or ``none``;
* ``loads``: ``tma`` (the tensor memory accelerator: ``cp.async.bulk.tensor`` from descriptors, the
  forward's ``USE_TMA`` configurations on sm_90), ``async16`` (16-byte cp.async, pipelined),
  ``async8`` / ``async4`` (pipelined
  but narrower, where a thread's share of a small tile row is only that wide), ``vec16`` (16-byte
  vector loads, not asynchronous) or ``scalar`` (2-byte loads of a 16-bit tile: a missed alignment).

Exit status 1 when any configuration fails to compile, exceeds shared memory, spills, lacks wgmma on
sm_90, or has scalar loads (all inputs here are aligned, so scalar loads are a missed hint). The
LayerNorm, cross-entropy and bias-GeLU kernels are compiled too (shared memory, registers, spills).
It says nothing about speed: run ``make gpu-check`` on a GPU for that.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

# Kernels must be defined for compilation, not for the interpreter.
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    print("error: unset TRITON_INTERPRET to compile the kernels for a GPU target", file=sys.stderr)
    sys.exit(2)
# A fresh cache: a cached kernel would skip ptxas, whose report gives the register and spill counts.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="turing-compile-check-")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

try:
    import torch
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature
except ImportError:
    print("error: Triton is not installed (pip install 'turing-models[triton]')", file=sys.stderr)
    sys.exit(2)

from turing_kernels import _attention_triton as attention_kernels
from turing_kernels import _bias_gelu_triton as gelu
from turing_kernels import _cross_entropy_triton as ce
from turing_kernels import _layernorm_triton as ln
from turing_kernels.attention import backward_launches, forward_launch, head_dim_tiles
from turing_kernels.cross_entropy import kernel_block as ce_kernel_block

SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}  # bytes per block (opt-in max)
GRADED_HEAD_DIMS = (64, 128, 152)
KINDS = ("attention", "layernorm", "cross_entropy", "bias_gelu")

_ASYNC_16BIT = re.compile(r"async_copy_global_to_local[^\n]*\{contiguity = (\d+) : i32\}[^\n]*!tt\.ptr<(?:bf16|f16)>")
_PTR16 = re.compile(r"!tt\.ptr<(?:bf16|f16)>")
_NARROW_LD = re.compile(r"\bld\.global(?:\.[A-Za-z0-9:_]+)*?\.(?:b16|u16|s16|f16|bf16)\b")
_VEC_LD = re.compile(r"\bld\.global(?:\.[A-Za-z0-9:_]+)*?\.v[248]\.")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


@dataclass
class Report:
    label: str
    head_dim: int = 0
    regs: int = 0
    spill: int = 0
    smem: int = 0
    mma: str = "none"
    loads: str = "-"
    seconds: float = 0.0
    error: str = ""
    problems: list = field(default_factory=list)


def _grade(ptx: str, ttgir: str, tile_loads: bool) -> tuple:
    """(mma kind, load kind) of a compiled kernel.

    Asynchronous tile loads are the TTGIR's ``async_copy_global_to_local`` of 16-bit pointer tensors,
    whose ``contiguity`` attribute is the vector width the lowering uses (8 x 2 bytes = 16 bytes);
    non-pipelined loads are graded on the PTX (``ld.global.v4`` against 2-byte ``ld.global.b16``)."""
    if "wgmma.mma_async" in ptx:
        mma = "wgmma"
    elif "mma.sync" in ptx:
        mma = "mma"
    else:
        mma = "none"
    widths = [int(c) * 2 for c in _ASYNC_16BIT.findall(ttgir)]
    narrow_async = sum(1 for line in ttgir.splitlines() if "async_copy_global_to_local" in line
                       and _PTR16.search(line) and "contiguity" not in line)
    scalar = tile_loads and (narrow_async > 0 or bool(_NARROW_LD.search(ptx)))
    if scalar:
        loads = "scalar"
    elif "cp.async.bulk.tensor" in ptx:
        loads = "tma"
    elif widths:
        # 16 bytes per copy, or narrower (4 or 8 bytes) where a thread's share of a small tile is
        # only that wide (e.g. a 32 x 32 tile over 256 threads): vectorised, still asynchronous.
        loads = f"async{min(widths)}" if widths and min(widths) < 16 else "async16"
    elif _VEC_LD.search(ptx):
        loads = "vec16"
    else:
        loads = "none"
    return mma, loads


class Compiler:
    """Compiles a Triton kernel for ``arch`` the way ``JITFunction.run`` would on such a GPU."""

    def __init__(self, arch: int):
        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)
        self.backend = make_backend(self.target)
        self._binders = {}
        self._usage = {}
        knobs.nvidia.dump_ptxas_log = True

    def compile(self, jit_fn, args, kwargs):
        binder = self._binders.get(jit_fn)
        if binder is None:
            binder = self._binders[jit_fn] = create_function_from_signature(jit_fn.signature, jit_fn.params,
                                                                           self.backend)
        bound, spec, opts = binder(*args, **kwargs)
        options, signature, constexprs, attrs = jit_fn._pack_args(self.backend, kwargs, bound, spec, opts)
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(ASTSource(jit_fn, signature, constexprs, attrs), target=self.target,
                                    options=options.__dict__)
        # A launch that specialises exactly like an earlier one is a cache hit: no ptxas report, same cubin.
        key = kernel.hash if hasattr(kernel, "hash") else repr((jit_fn, signature, constexprs, attrs, options))
        text = log.getvalue()
        spills, regs = _SPILL.search(text), _REGS.search(text)
        if regs and spills:
            self._usage[key] = (int(regs.group(1)), sum(map(int, spills.groups())))
        return (kernel, *self._usage.get(key, (-1, -1)))


# ------------------------------------------------------------------------------------------------
# Attention: the launches of a training step, built by the launcher itself on meta tensors
# ------------------------------------------------------------------------------------------------

def training_launches(head_dim: int, causal: bool, dropout_p: float, dtype, seq: int = 2048, batch: int = 2):
    heads = max(1, 2048 // head_dim)
    qkv = torch.empty(batch, seq, heads, 3, head_dim, device="meta", dtype=dtype)
    q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # as TuringNLG's attention block does
    rng = torch.empty(2, dtype=torch.int64, device="meta") if dropout_p > 0 else None
    scale = head_dim ** -0.5
    o, lse, fwd = forward_launch(q, k, v, None, None, None, rng, batch, seq, seq, causal, scale, False, dropout_p)
    do = torch.empty_like(o)
    *_, bwd = backward_launches(do, q, k, v, o, lse, None, None, None, rng, batch, seq, seq, causal, scale, False,
                                dropout_p)
    return [fwd, *bwd]


def _kept_configs(launch, arch):
    """The configurations the autotuner's own pruning keeps for this launch on a GPU of compute capability ``arch``."""
    named = dict(zip(launch.tuned.arg_names, launch.args))
    with attention_kernels.target_arch(arch):
        return launch.tuned.early_config_prune(launch.tuned.configs, named, **launch.meta)


def attention_reports(compiler, head_dims, dtype, quick, variants):
    limit = SMEM_LIMIT.get(compiler.arch, 101376)
    for head_dim in head_dims:
        for causal, dropout_p in variants:
            tag = f"d{head_dim} {'causal' if causal else 'full'}{' dropout' if dropout_p else ''}"
            for launch in training_launches(head_dim, causal, dropout_p, dtype):
                named = dict(zip(launch.fixed.arg_names, launch.args))
                if launch.tuned is None:  # the preprocess kernel: fixed 64-row tile, 4 warps
                    configs = [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1)]
                    jit_fn, heur = launch.fixed, {}
                else:
                    configs = _kept_configs(launch, compiler.arch)
                    jit_fn, heur = launch.fixed.fn, launch.fixed.values
                    if quick:
                        configs = configs[:1]
                for cfg in configs:
                    meta = dict(launch.meta, **cfg.kwargs)
                    meta.update({name: fn({**named, **meta}) for name, fn in heur.items()})
                    shape = "x".join(str(cfg.kwargs[k]) for k in ("BLOCK_M", "BLOCK_N") if k in cfg.kwargs)
                    tma = " tma" if cfg.kwargs.get("USE_TMA") else ""
                    rep = Report(f"{launch.name:<19} {tag:<20} {shape:>7} w{cfg.num_warps} s{cfg.num_stages}{tma}",
                                 head_dim=head_dim)
                    yield _compile_report(compiler, rep, jit_fn, launch.args,
                                          dict(meta, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                                          limit, tile_loads=True, matmul=launch.tuned is not None)


def _compile_report(compiler, rep, jit_fn, args, kwargs, limit, tile_loads, matmul):
    t0 = time.time()
    try:
        kernel, rep.regs, rep.spill = compiler.compile(jit_fn, args, kwargs)
    except Exception as e:  # report every failure, then exit non-zero
        rep.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        rep.problems.append("compile")
        return rep
    rep.seconds = time.time() - t0
    rep.smem = kernel.metadata.shared
    rep.mma, rep.loads = _grade(kernel.asm["ptx"], kernel.asm["ttgir"], tile_loads)
    if rep.smem > limit:
        rep.problems.append("smem")
    if rep.spill != 0:
        rep.problems.append("spill")
    if matmul and compiler.arch >= 90 and compiler.arch < 100 and rep.mma != "wgmma":
        rep.problems.append("no-wgmma")
    if rep.loads == "scalar":
        rep.problems.append("scalar-loads")
    return rep


# ------------------------------------------------------------------------------------------------
# The other kernels (launched with fixed meta-parameters)
# ------------------------------------------------------------------------------------------------

def _t(shape, dtype):
    return torch.empty(shape, device="meta", dtype=dtype)


def other_jobs(dtype):
    """(kind, label, jit, args, kwargs) as the launchers in layernorm.py / cross_entropy.py / bias_gelu.py pass them."""
    rows, f32 = 16384, torch.float32
    for n in (4096, 8192):
        x, w, st = _t((rows, n), dtype), _t((n,), dtype), _t((rows,), f32)
        yield ("layernorm", f"layer_norm_fwd {n}", ln.layer_norm_fwd,
               [x, x, x, x, w, w, st, st, n, n, n, n, n, 1e-5],
               dict(HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_N=n, num_warps=8))
        part = _t((528, n), f32)
        yield ("layernorm", f"layer_norm_bwd {n}", ln.layer_norm_bwd,
               [x, x, w, st, st, x, x, x, part, part, n, n, n, n, n, rows, n, 32],
               dict(HAS_DSUM=True, HAS_DRES=True, HAS_W=True, HAS_B=True, BLOCK_N=n, num_warps=8))
    vocab = 50304
    logits, labels, f = _t((2668, vocab), dtype), _t((2668,), torch.int64), _t((2668,), f32)
    block_v, warps = ce_kernel_block(vocab)
    yield ("cross_entropy", f"cross_entropy_fwd_bwd {block_v}", ce.cross_entropy_fwd_bwd,
           [logits, labels, f, f, vocab, vocab, vocab, -100, 0.0, 0.0],
           dict(COMPUTE_GRAD=True, BLOCK_V=block_v, num_warps=warps))
    x, b = _t((rows, 16384), dtype), _t((16384,), dtype)
    for approx in (False, True):
        yield ("bias_gelu", f"bias_gelu_fwd tanh={approx}", gelu.bias_gelu_fwd, [x, b, x, rows * 16384, 16384],
               dict(APPROX_TANH=approx, BLOCK=1024, num_warps=4))
        yield ("bias_gelu", f"bias_gelu_bwd tanh={approx}", gelu.bias_gelu_bwd, [x, x, b, x, rows * 16384, 16384],
               dict(APPROX_TANH=approx, BLOCK=1024, num_warps=4))


def other_reports(compiler, dtype, only):
    limit = SMEM_LIMIT.get(compiler.arch, 101376)
    for kind, label, fn, args, kwargs in other_jobs(dtype):
        if kind in only:
            yield _compile_report(compiler, Report(label), fn, args, kwargs, limit, tile_loads=False, matmul=False)


# ------------------------------------------------------------------------------------------------

def _line(rep: Report, limit: int) -> str:
    status = "ok  " if not rep.problems else "FAIL"
    if rep.error:
        return f"{status} {rep.label}: {rep.error}"
    return (f"{status} {rep.label}: regs {rep.regs:3d}  spill {rep.spill:4d} B  smem {rep.smem / 1024:5.1f}/"
            f"{limit / 1024:.0f} KiB  mma {rep.mma:<5}  loads {rep.loads:<7} {rep.seconds:5.1f} s"
            + (f"  [{', '.join(rep.problems)}]" if rep.problems else ""))


def summary(reports, arch, dtype) -> list:
    lines = []
    attn = [r for r in reports if r.head_dim]
    for head_dim in sorted({r.head_dim for r in attn}):
        rs = [r for r in attn if r.head_dim == head_dim and not r.error]
        mm = [r for r in rs if not r.label.startswith("attn_bwd_preprocess")]
        tiles = "+".join(str(t) for t in head_dim_tiles(head_dim) if t)
        regs = max((r.regs for r in rs), default=0)
        smem = max((r.smem for r in rs), default=0) / 1024
        asynchronous = sum(r.loads.startswith("async") or r.loads == "tma" for r in mm)
        lines.append(
            f"  d{head_dim} (head-dim tiles {tiles}): {len(rs)} configs, max regs {regs}, "
            f"spill bytes {sum(max(r.spill, 0) for r in rs)}, max smem {smem:.0f} KiB, "
            f"wgmma {sum(r.mma == 'wgmma' for r in mm)}/{len(mm)}, async tile loads {asynchronous}/{len(mm)} "
            f"(16-byte in {sum(r.loads == 'async16' for r in mm)}, TMA in {sum(r.loads == 'tma' for r in mm)}), "
            f"scalar loads {sum(r.loads == 'scalar' for r in rs)}")
    failed = [r for r in reports if r.problems]
    problems = ", ".join(sorted({p for r in failed for p in r.problems}))
    lines.append(f"sm_{arch} {dtype}: {len(reports)} kernel configurations, "
                 + ("all pass" if not failed else f"{len(failed)} FAIL ({problems})"))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 = A100, 90 = H100/H200)")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--head-dims", default=",".join(map(str, GRADED_HEAD_DIMS)),
                        help="comma-separated attention head dims (default 64,128,152)")
    parser.add_argument("--quick", action="store_true", help="first kept autotune config only, causal only")
    parser.add_argument("--only", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(KINDS)
    if unknown:
        print(f"error: --only: unknown kernel(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}",
              file=sys.stderr)
        return 2
    try:
        head_dims = [int(d) for d in args.head_dims.split(",") if d.strip()]
    except ValueError:
        print(f"error: --head-dims must be comma-separated integers, got {args.head_dims!r}", file=sys.stderr)
        return 2
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    compiler = Compiler(args.arch)
    limit = SMEM_LIMIT.get(args.arch, 101376)
    variants = [(True, 0.0)] if args.quick else [(True, 0.0), (False, 0.0), (True, 0.1)]
    reports = []
    sources = []
    if "attention" in only:
        sources.append(attention_reports(compiler, head_dims, dtype, args.quick, variants))
    sources.append(other_reports(compiler, dtype, only))
    t0 = time.time()
    for source in sources:
        for rep in source:
            reports.append(rep)
            print(_line(rep, limit), flush=True)
    print(f"summary (compile time {time.time() - t0:.0f} s, Triton {triton.__version__}):")
    for line in summary(reports, args.arch, args.dtype):
        print(line)
    return 1 if any(r.problems for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
