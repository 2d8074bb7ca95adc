"""MFU is never above 100 %: the peak is a data-sheet or theoretical figure, raised to any rate
the run achieves, whatever a (fake, slow) measurement says."""

import json

import pytest
import torch

from turing_models.training import Trainer, TrainerConfig
from turing_models.training import flops
from turing_models.training.flops import PeakFlops, cpu_theoretical_peak, device_peak_flops, mfu

from _tiny import SEQ, tiny_model, token_folder

SAPPHIRE_RAPIDS = "processor\t: 0\ncpu MHz\t\t: 2600.000\nflags\t\t: fpu sse2 avx fma avx2 avx512f amx_tile\n"


def test_peak_rises_to_the_achieved_rate():
    peak = PeakFlops(1e9, "fake")
    assert mfu(1000.0, 1e6, peak) == pytest.approx(1.0)  # 1e9 achieved: exactly the peak
    assert mfu(4000.0, 1e6, peak) == pytest.approx(1.0)  # 4e9 achieved: the peak was too low
    assert peak.value == pytest.approx(4e9) and peak.raised and "raised" in peak.source
    assert mfu(1000.0, 1e6, peak) == pytest.approx(0.25)  # later windows: against the raised peak
    assert mfu(1000.0, 1e6, peak, n_devices=2) == pytest.approx(0.125)


def test_plain_number_peak_is_capped_at_one():
    assert mfu(1000.0, 6e9, 1e13) == pytest.approx(0.6)
    assert mfu(1000.0, 6e9, 1e9) == 1.0
    assert mfu(0.0, 6e9, 1e9) == 0.0


def test_peak_behaves_as_a_number():
    peak = PeakFlops(2e9)
    assert float(peak) == 2e9 and peak * 2 == 4e9 and 2 * peak == 4e9 and 4e9 / peak == 2.0
    with pytest.raises(ValueError):
        PeakFlops(0.0)


def test_cpu_theoretical_peak_from_cpuinfo():
    # 2 threads x 2.6 GHz x 64 fp32 FLOPs per cycle (AVX-512, two FMA ports)
    assert cpu_theoretical_peak(threads=2, cpuinfo=SAPPHIRE_RAPIDS) == pytest.approx(332.8e9)
    avx2 = "cpu MHz : 3000.0\nflags : sse2 avx fma avx2\n"
    assert cpu_theoretical_peak(threads=4, cpuinfo=avx2) == pytest.approx(4 * 3e9 * 32)
    assert cpu_theoretical_peak(threads=2, cpuinfo="no flags here") is None


def test_cpu_peak_is_never_below_the_measurement(monkeypatch):
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda: 5e15)
    peak = device_peak_flops(torch.device("cpu"))
    assert peak.value == 5e15 and "measured" in peak.source
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda: 1e3)  # a very busy machine
    monkeypatch.setattr(flops, "cpu_theoretical_peak", lambda: 3e11)
    assert device_peak_flops(torch.device("cpu")).value == 3e11


@pytest.mark.parametrize("how", ["measured", "config"])
def test_trainer_mfu_never_above_one_with_a_fake_slow_peak(tmp_path, monkeypatch, how):
    """A peak far below what the CPU does (a loaded host's measurement, or a wrong config value)
    must not print MFU above 100 %: before the fix the trainer logged MFU in the millions here."""
    from turing_models.data import PackedDataset

    slow = 1e3  # FLOP/s: any real training step beats it
    monkeypatch.setattr(flops, "measure_matmul_peak", lambda: slow)
    monkeypatch.setattr(flops, "cpu_theoretical_peak", lambda: None)
    data = token_folder(tmp_path / "tok")
    extra = {"peak_flops": slow} if how == "config" else {}
    cfg = TrainerConfig(run_name="run", output_dir=str(tmp_path), max_steps=4, global_batch_size=2,
                        micro_batch_size=2, lr=1e-3, log_every=1, eval_steps=1, progress=False,
                        tensorboard=False, **extra)
    trainer = Trainer(tiny_model(), PackedDataset(data, "train", seq_len=SEQ), config=cfg)
    trainer.fit()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r["mfu"] for r in logged if "mfu" in r]
    assert len(values) == 4
    assert all(0 < v <= 1.0 for v in values)
    assert values[0] == pytest.approx(1.0)  # the first window exceeded the fake peak
