"""benchmarks/generate.py runs end to end (tiny shape) and prints both speeds, the ratio and the command."""

from __future__ import annotations

from factories import load_script


def test_benchmark_generate_smoke(capsys):
    bench = load_script("benchmarks/generate.py", "benchmark_generate")
    argv = ["--layers", "1", "--hidden", "32", "--heads", "2", "--vocab", "100", "--prompt-len", "4",
            "--new-tokens", "4", "--runs", "1", "--warmup", "0"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "identical greedy tokens: True" in out
    assert "TuringNLG" in out and "GPT2LMHeadModel" in out and "ratio TuringNLG / GPT2LMHeadModel" in out
    assert "reproduce: python benchmarks/generate.py --layers 1" in out
