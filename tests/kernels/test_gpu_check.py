"""`make gpu-check` (benchmarks/gpu_check.py): one clear line where there is no GPU, and the PASS / MISS
verdicts it writes against the goals."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_stops_with_one_line_without_a_gpu(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert res.stdout == "" and res.stderr.count("\n") == 1 and "no NVIDIA GPU" in res.stderr
    assert not (tmp_path / "out").exists()


def _row(d, seq, causal, speedup):
    return dict(head_dim=d, seq=seq, causal=causal, speedup=speedup)


def test_goal_verdicts():
    gc = _module()
    driver = gc.Driver(100, Path("."))
    rows = [_row(d, s, c, 1.3) for d in (128, 152) for s in (2048, 4096, 8192) for c in (True, False)]
    rows[-1]["speedup"] = 1.1  # d152 8k non-causal below 1.2x
    driver.results.update(
        attention={"rows": rows},
        cross_entropy={"mem_ratio": 0.2, "time_ratio": 1.05},
        train={"scale": "1.3b", "mfu": 0.42, "tokens_per_s": 1.0, "step_ms": 1.0},
        steps={"tests": {"rc": 0}},
    )
    lines = gc.goals_summary(driver)
    assert lines[0].startswith("PASS  attention d128")
    assert lines[1].startswith("MISS  attention d152") and "worst 1.10x" in lines[1]
    assert any(line.startswith("PASS  fused linear-CE") for line in lines)
    assert any(line.startswith("MISS  TuringNLG 1.3b training step MFU 42.0 %") for line in lines)
    assert lines[-1].startswith("PASS  pytest")
    driver.results["attention"]["rows"] = rows[:3]  # cut short: half the d128 shapes
    assert gc.goals_summary(driver)[0].startswith("MISS  attention d128")
    del driver.results["cross_entropy"]
    assert any(line == "MISS  fused linear-CE memory/time: not measured" for line in gc.goals_summary(driver))
