"""kernels/bench.py keeps working: one clear line without a GPU, every code path in --smoke."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "turing_kernels" / "bench.py"


def _run(args, env_extra, tmp_path):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_without_gpu_one_clear_line(tmp_path):
    res = _run(["--quick"], {"TRITON_INTERPRET": "0"}, tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith("error: ") and "CUDA GPU" in res.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_bad_option_one_clear_line(tmp_path):
    res = _run(["--only", "attention,softmax"], {}, tmp_path)
    assert res.returncode == 2 and "unknown benchmark(s) softmax" in res.stderr


def test_smoke_runs_every_benchmark(tmp_path):
    env = {} if torch.cuda.is_available() else {"TRITON_INTERPRET": "1"}
    res = _run(["--smoke", "--json", "out.json"], env, tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads((tmp_path / "out.json").read_text())
    rows = data["rows"]
    assert {r["bench"] for r in rows} == {"attention", "layernorm+residual", "linear-cross-entropy", "bias-gelu",
                                          "bias-gelu-tanh"}
    att = [r for r in rows if r["bench"] == "attention"]
    assert {(r["mode"], r["impl"]) for r in att} == {(m, i) for m in ("fwd", "bwd", "fwd+bwd")
                                                     for i in ("turing", "sdpa", "eager")}
    assert all(r["ms"] and r["ms"] > 0 for r in rows)
    assert all(r["tflops"] > 0 for r in att)
    assert "reproduce: python turing_kernels/bench.py --smoke --json out.json" in res.stdout
    assert "speed x" in res.stdout and data["meta"]["command"].startswith("python turing_kernels/bench.py")
