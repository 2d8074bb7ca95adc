"""The non-attention kernels compile for an H100 (sm_90) without a GPU: catches what the CPU
interpreter cannot (e.g. a plain module global used inside a kernel). The attention kernels take
minutes to compile on 2 cores: `python kernels/compile_check.py --only attention` checks them."""

import os
import subprocess
import sys
from pathlib import Path

CHECK = Path(__file__).resolve().parents[2] / "kernels" / "compile_check.py"


def test_kernels_compile_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DEFAULT_FP_FUSION="1")
    res = subprocess.run([sys.executable, str(CHECK), "--arch", "90", "--only", "layernorm,cross_entropy,bias_gelu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "sm_90 bf16: all compiled" in res.stdout
    assert res.stdout.count("ok   ") == 9


def test_compile_check_refuses_interpreter_mode():
    res = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TRITON_INTERPRET="1"))
    assert res.returncode == 2 and "unset TRITON_INTERPRET" in res.stderr
