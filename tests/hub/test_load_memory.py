"""Loading a checkpoint never holds two copies of the weights (benchmarks/load.py, small size)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "load.py"


@pytest.mark.slow  # two fresh interpreters importing transformers (~20 s on 2 cores)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_native_load_peak_is_one_copy(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    turing_dir, _, weights = bench.build(tmp_path, size_mb=96, hidden=256)
    assert 80 * 2**20 < weights < 120 * 2**20
    result = bench.measure("turing", turing_dir)
    assert result["param_bytes"] >= weights * 0.99
    peak = (result["peak_kb"] - result["baseline_kb"]) * 1024
    assert peak <= bench.GOAL * weights, f"peak {peak / 2**20:.0f} MB for {weights / 2**20:.0f} MB of weights"
    assert peak >= 0.8 * weights  # the measurement sees the weights at all (they were read)


@pytest.mark.slow  # one fresh interpreter importing transformers
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_gpt2_converted_load_peak_is_one_copy(tmp_path):
    """Converting a GPT-2 checkpoint on load streams tensor by tensor: no second copy of the weights."""
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, gpt2_dir, weights = bench.build(tmp_path, size_mb=96, hidden=256)
    result = bench.measure("turing<-gpt2", gpt2_dir)
    assert result["param_bytes"] >= weights * 0.99
    peak = (result["peak_kb"] - result["baseline_kb"]) * 1024
    assert peak <= bench.GOAL * weights, f"peak {peak / 2**20:.0f} MB for {weights / 2**20:.0f} MB of weights"
    assert peak >= 0.8 * weights
