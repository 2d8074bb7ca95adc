"""turing_kernels imports everywhere; a kernel asked for where it cannot run raises one clear error."""

import subprocess
import sys

import pytest
import torch

import turing_kernels
from turing_kernels import KernelUnavailableError


def test_import_without_triton_then_clear_error():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, turing_kernels\n"
        "assert not turing_kernels.is_available()\n"
        "try:\n"
        "    turing_kernels.layer_norm(torch.randn(2, 4), None, None)\n"
        "except turing_kernels.KernelUnavailableError as e:\n"
        "    print('ERR', e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "ERR" in res.stdout and "needs Triton" in res.stdout and "pip install" in res.stdout


def test_cpu_tensors_without_interpreter_raise(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(2, 8)
    for call in (
        lambda: turing_kernels.layer_norm(x, None, None),
        lambda: turing_kernels.bias_gelu(x, torch.zeros(8)),
        lambda: turing_kernels.fused_linear_cross_entropy(x, torch.randn(5, 8), torch.zeros(2, dtype=torch.long)),
        lambda: turing_kernels.flash_attention(x[None, None], x[None, None], x[None, None]),
    ):
        with pytest.raises(KernelUnavailableError, match="needs CUDA tensors") as info:
            call()
        assert "\n" not in str(info.value)  # one line, saying what to do
        assert "TRITON_INTERPRET=1" in str(info.value) and "sdpa" in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter's device rule")
def test_interpreter_runs_cpu_tensors_only(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert turing_kernels.can_run(torch.zeros(1))
    assert not turing_kernels.can_run(torch.zeros(1, device="meta"))
