"""Compile every kernel and autotune candidate for a GPU target, without a GPU.

    python kernels/compile_check.py                 # sm_90 (H100/H200), bf16
    python kernels/compile_check.py --arch 80 --quick

Triton can compile down to a cubin on any machine; this runs that for each attention kernel with
every autotune configuration the pruning keeps (head-dim tiles 64 / 128 / 256, with causal masking,
key padding and dropout all on) and for the LayerNorm, cross-entropy and bias-GeLU kernels, then
prints the shared memory each needs against the device limit. It catches front-end errors and
configurations that could never launch before a GPU is at hand; it says nothing about speed.
Exit status 1 if anything fails to compile or exceeds the shared-memory limit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Kernels must be defined for compilation, not for the interpreter.
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    print("error: unset TRITON_INTERPRET to compile the kernels for a GPU target", file=sys.stderr)
    sys.exit(2)

try:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError:
    print("error: Triton is not installed (pip install 'turing-models[triton]')", file=sys.stderr)
    sys.exit(2)

from turing_kernels import _attention_triton as attn
from turing_kernels import _bias_gelu_triton as gelu
from turing_kernels import _cross_entropy_triton as ce
from turing_kernels import _layernorm_triton as ln

SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448}  # bytes per block (opt-in max)


def _signature(fn, pointer_types, float_args, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in pointer_types:
            sig[name] = pointer_types[name]
        elif name in float_args:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_one(fn, pointer_types, float_args, constexprs, num_warps, num_stages, arch):
    src = ASTSource(fn=fn, signature=_signature(fn, pointer_types, float_args, constexprs),
                    constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": num_warps, "num_stages": num_stages})
    return kernel.metadata.shared


def attention_jobs(dtype, quick):
    t = {"bf16": "*bf16", "fp16": "*fp16"}[dtype]
    ptr = {n: t for n in ("Q", "K", "V", "O", "DO", "DQ", "DK", "DV")}
    ptr.update(LSE="*fp32", DELTA="*fp32", KMASK="*u8", CU_Q="*i32", CU_K="*i32")
    floats = {"qk_scale_log2", "sm_scale", "dropout_p"}
    jobs = []
    for block_d, head_dim in ((64, 64), (128, 128), (256, 152)):
        base = dict(GROUP=1, HEAD_DIM=head_dim, BLOCK_D=block_d, IS_CAUSAL=True, IS_VARLEN=False, HAS_KMASK=True,
                    DOT_PREC="tf32", HAS_DROPOUT=True)
        for name, fn, configs, prune in (
            ("attn_fwd", attn._attn_fwd, attn._fwd_configs(), attn._prune_fwd),
            ("attn_bwd_dkdv", attn._attn_bwd_dkdv, attn._bwd_configs(), attn._prune_bwd),
            ("attn_bwd_dq", attn._attn_bwd_dq, attn._bwd_configs(), attn._prune_bwd),
        ):
            kept = prune(configs, {}, BLOCK_D=block_d)
            for c in kept[:1] if quick else kept:
                const = dict(base, **c.kwargs)
                jobs.append((f"{name} d{head_dim} {c.kwargs} w{c.num_warps} s{c.num_stages}", fn, ptr, floats, const,
                             c.num_warps, c.num_stages))
        jobs.append((f"attn_bwd_preprocess d{head_dim}", attn._attn_bwd_preprocess, ptr, floats,
                     dict(HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=64, IS_VARLEN=True), 4, 1))
    varlen = dict(GROUP=2, HEAD_DIM=128, BLOCK_D=128, IS_CAUSAL=True, IS_VARLEN=True, HAS_KMASK=False,
                  DOT_PREC="tf32", HAS_DROPOUT=False, BLOCK_M=128, BLOCK_N=64)
    jobs.append(("attn_fwd varlen gqa d128", attn._attn_fwd, ptr, floats, varlen, 8, 3))
    return jobs


def other_jobs(dtype):
    t = {"bf16": "*bf16", "fp16": "*fp16"}[dtype]
    jobs = []
    ln_ptr = {n: t for n in ("X", "RES", "SUM", "Y", "W", "B", "DY", "DSUM", "DX", "DRES")}
    ln_ptr.update(MEAN="*fp32", RSTD="*fp32", DW_PART="*fp32", DB_PART="*fp32")
    for n in (4096, 8192):
        jobs.append((f"layer_norm_fwd {n}", ln.layer_norm_fwd, ln_ptr, {"eps"},
                     dict(HAS_RES=True, HAS_W=True, HAS_B=True, BLOCK_N=n), 8, 1))
        jobs.append((f"layer_norm_bwd {n}", ln.layer_norm_bwd, ln_ptr, set(),
                     dict(HAS_DSUM=True, HAS_DRES=True, HAS_W=True, HAS_B=True, BLOCK_N=n), 8, 1))
    ce_ptr = {"LOGITS": t, "LABELS": "*i64", "LOSS": "*fp32", "LSE": "*fp32"}
    jobs.append(("cross_entropy_fwd_bwd 16384", ce.cross_entropy_fwd_bwd, ce_ptr, {"label_smoothing", "z_loss"},
                 dict(COMPUTE_GRAD=True, BLOCK_V=16384), 16, 1))
    g_ptr = {"X": t, "BIAS": t, "Y": t, "DY": t, "DX": t}
    for approx in (False, True):
        jobs.append((f"bias_gelu_fwd tanh={approx}", gelu.bias_gelu_fwd, g_ptr, set(),
                     dict(APPROX_TANH=approx, BLOCK=1024), 4, 1))
        jobs.append((f"bias_gelu_bwd tanh={approx}", gelu.bias_gelu_bwd, g_ptr, set(),
                     dict(APPROX_TANH=approx, BLOCK=1024), 4, 1))
    return jobs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (80 = A100, 90 = H100/H200)")
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    parser.add_argument("--quick", action="store_true", help="first kept autotune config only")
    parser.add_argument("--only", default="attention,layernorm,cross_entropy,bias_gelu",
                        help="comma-separated subset of attention,layernorm,cross_entropy,bias_gelu")
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"attention", "layernorm", "cross_entropy", "bias_gelu"}
    if unknown:
        print(f"error: --only: unknown kernel(s) {', '.join(sorted(unknown))}; choose from attention, layernorm, "
              "cross_entropy, bias_gelu", file=sys.stderr)
        return 2
    prefixes = {"layernorm": "layer_norm", "cross_entropy": "cross_entropy", "bias_gelu": "bias_gelu"}
    jobs = attention_jobs(args.dtype, args.quick) if "attention" in only else []
    jobs += [j for j in other_jobs(args.dtype) if any(j[0].startswith(prefixes[k]) for k in only if k in prefixes)]
    limit = SMEM_LIMIT.get(args.arch, 101376)
    failures = 0
    for label, fn, ptr, floats, const, warps, stages in jobs:
        t0 = time.time()
        try:
            smem = compile_one(fn, ptr, floats, const, warps, stages, args.arch)
        except Exception as e:  # report every failure, then exit non-zero
            failures += 1
            print(f"FAIL {label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            continue
        ok = smem <= limit
        failures += not ok
        print(f"{'ok  ' if ok else 'SMEM'} {label}: shared {smem / 1024:.0f} KiB (limit {limit / 1024:.0f}), "
              f"{time.time() - t0:.1f} s", flush=True)
    print(f"sm_{args.arch} {args.dtype}: {'all compiled' if not failures else f'{failures} problem(s)'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
