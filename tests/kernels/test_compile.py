"""The kernels compile for an H100 (sm_90) and an A100 (sm_80) without a GPU, exactly as the launcher specialises them,
and the machine code passes the checks of kernels/compile_check.py: no register spills, wgmma
matmuls on sm_90, vectorised asynchronous tile loads. The full attention check takes minutes on 2 cores
(marked slow); the other kernels and one attention head dim run in the default suite."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parents[2] / "turing_kernels" / "compile_check.py"


def _run(tmp_path, *args, timeout=900):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1")
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_other_kernels_compile_for_sm90(tmp_path):
    res = _run(tmp_path, "--arch", "90", "--only", "layernorm,cross_entropy,bias_gelu", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "sm_90 bf16: 9 kernel configurations, all pass" in res.stdout
    assert res.stdout.count("ok   ") == 9


def _attention_lines(stdout):
    return [line for line in stdout.splitlines() if re.match(r"(ok  |FAIL) attn_", line)]


def test_attention_head_dim_152_quick_check_sm90(tmp_path):
    """Head dim 152 (128 + 32 tiles): the first kept tile of each kernel, causal, as launched."""
    res = _run(tmp_path, "--arch", "90", "--only", "attention", "--head-dims", "152", "--quick", timeout=600)
    lines = _attention_lines(res.stdout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert len(lines) == 4, lines  # forward, preprocess, dK/dV, dQ
    for line in lines:
        if "preprocess" not in line:
            assert "mma wgmma" in line and "spill    0 B" in line and "loads async" in line, line
    assert "d152 (head-dim tiles 128+32)" in res.stdout


def test_attention_head_dim_152_quick_check_sm80(tmp_path):
    """Head dim 152 on an A100 (sm_80): the pruning keeps the Ampere tiles, whose first kept tile of
    each kernel compiles with mma.sync and no spill, as launched."""
    res = _run(tmp_path, "--arch", "80", "--only", "attention", "--head-dims", "152", "--quick", timeout=600)
    lines = _attention_lines(res.stdout)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert len(lines) == 4, lines  # forward, preprocess, dK/dV, dQ
    for line in lines:
        if "preprocess" not in line:
            assert "mma mma " in line and "spill    0 B" in line and "loads async" in line, line
    assert "sm_80 bf16: 4 kernel configurations, all pass" in res.stdout


def test_pruning_follows_the_target_arch():
    """compile_check.py lists what the launcher keeps: the pruning reads the target compute
    capability, Ampere tiles below 9.0 and Hopper tiles from 9.0 on."""
    pytest.importorskip("triton")
    from turing_kernels import _attention_triton as kern

    meta = dict(BLOCK_D=128, BLOCK_D2=32, HAS_DROPOUT=False)
    prune = kern.attn_fwd_tuned.early_config_prune
    for arch, table in ((80, kern.SM80_FWD_TILES), (86, kern.SM80_FWD_TILES), (90, kern.FWD_TILES)):
        with kern.target_arch(arch):
            kept = prune(kern.attn_fwd_tuned.configs, {}, **meta)
        assert sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept) \
            == sorted(table[160]), arch


@pytest.mark.slow
def test_attention_compile_check_sm90_passes(tmp_path):
    """`python kernels/compile_check.py --arch 90`: every kept configuration at head dims 64, 128 and
    152, causal and not, with and without dropout, compiles with 0 spill bytes, wgmma and vector loads.
    One process per head dim, in parallel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DEFAULT_FP_FUSION="1")
    procs = {d: subprocess.Popen([sys.executable, str(CHECK), "--arch", "90", "--only", "attention", "--head-dims",
                                  str(d)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for d in (64, 128, 152)}
    for d, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=1800)
        assert proc.returncode == 0, stdout[-6000:] + stderr[-2000:]
        assert len(_attention_lines(stdout)) >= 3 * 5, stdout
        summary = next(line for line in stdout.splitlines() if line.startswith(f"  d{d} "))
        assert "spill bytes 0" in summary and "scalar loads 0" in summary, summary
        wg = re.search(r"wgmma (\d+)/(\d+)", summary)
        assert wg and wg.group(1) == wg.group(2), summary
        # the forward's TMA configurations: one per kept forward tile (3 variants), each with bulk tensor copies
        tma_lines = [line for line in _attention_lines(stdout) if " tma:" in line]
        assert tma_lines and all("loads tma" in line for line in tma_lines), tma_lines
        assert re.search(r"TMA in [1-9]", summary), summary


GRADE = """
import compile_check as cc
ttgir = ("ttg.async_copy_global_to_local %p, %m {contiguity = 8 : i32} : tensor<64x128x!tt.ptr<bf16>, #b> -> "
         "<64x128xbf16>")
assert cc._grade("ld.global.b16 %rs1, [%rd1];\\nmma.sync.aligned.m16n8k16", "", True) == ("mma", "scalar")
assert cc._grade("wgmma.mma_async.sync", ttgir, True) == ("wgmma", "async16")
assert cc._grade("wgmma.mma_async.sync", ttgir.replace("= 8", "= 4"), True) == ("wgmma", "async8")
assert cc._grade("ld.global.v4.b32", "", True) == ("none", "vec16")
assert cc._grade("wgmma.mma_async.sync\\ncp.async.bulk.tensor.2d.shared::cluster.global", "", True) == ("wgmma", "tma")
rep = cc.Report("x", regs=255, spill=8, mma="mma", loads="scalar")
print("graded")
"""


def test_grading_flags_scalar_loads_and_missing_wgmma():
    """The check can fail: scalar 2-byte loads and mma.sync instead of wgmma are recognised."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(CHECK.parent), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", GRADE], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0 and "graded" in res.stdout, res.stderr[-2000:]


def test_compile_check_refuses_interpreter_mode():
    res = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert res.returncode == 2 and "unset TRITON_INTERPRET" in res.stderr
